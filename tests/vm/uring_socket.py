"""socket() through io_uring (IORING_OP_SOCKET, 5.19+), for the escape attempt in test_guest_lsm.py.

Usage: python3 uring_socket.py JSON  where JSON is [[label, family, type, protocol, sqe_flags], ...];
prints {label: 0 | errno name | "setup:ERRNO" | "enter:ERRNO"}. sqe_flags 16 (IOSQE_ASYNC)
makes the kernel create the socket from an io-wq worker thread instead of the submitting task.
"""
import ctypes
import errno
import json
import mmap
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
U32 = ctypes.c_uint32


class SqOff(ctypes.Structure):
    _fields_ = [(n, U32) for n in ("head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array", "resv1")] + [("resv2", ctypes.c_uint64)]


class CqOff(ctypes.Structure):
    _fields_ = [(n, U32) for n in ("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags", "resv1")] + [("resv2", ctypes.c_uint64)]


class Params(ctypes.Structure):
    _fields_ = [(n, U32) for n in ("sq_entries", "cq_entries", "flags", "sq_thread_cpu", "sq_thread_idle", "features", "wq_fd")] + [("resv", U32 * 3), ("sq_off", SqOff), ("cq_off", CqOff)]
SYS_IO_URING_SETUP, SYS_IO_URING_ENTER = 425, 426
IORING_OP_SOCKET = 45
IORING_OFF_CQ_RING, IORING_OFF_SQES = 0x8000000, 0x10000000


def uring_socket(family, typ, proto, sqe_flags):
    """One IORING_OP_SOCKET on a fresh ring: 0 (a socket was made) or why not."""
    p = Params()
    fd = libc.syscall(SYS_IO_URING_SETUP, 4, ctypes.byref(p))
    if fd < 0:
        return "setup:" + errno.errorcode.get(ctypes.get_errno(), "?")
    sq = mmap.mmap(fd, p.sq_off.array + p.sq_entries * 4, offset=0)
    cq = mmap.mmap(fd, p.cq_off.cqes + p.cq_entries * 16, offset=IORING_OFF_CQ_RING)
    sqes = mmap.mmap(fd, p.sq_entries * 64, offset=IORING_OFF_SQES)
    # struct io_uring_sqe; for SOCKET: fd=domain, off=type, len=protocol
    sqes[0:64] = struct.pack("<BBHiQQIIQHHiQQ", IORING_OP_SOCKET, sqe_flags, 0, family, typ, 0, proto, 0, 7, 0, 0, 0, 0, 0)
    tail = struct.unpack_from("<I", sq, p.sq_off.tail)[0]
    mask = struct.unpack_from("<I", sq, p.sq_off.ring_mask)[0]
    struct.pack_into("<I", sq, p.sq_off.array + (tail & mask) * 4, 0)
    struct.pack_into("<I", sq, p.sq_off.tail, tail + 1)
    if libc.syscall(SYS_IO_URING_ENTER, fd, 1, 1, 1, None, 0) < 0:  # IORING_ENTER_GETEVENTS
        return "enter:" + errno.errorcode.get(ctypes.get_errno(), "?")
    head = struct.unpack_from("<I", cq, p.cq_off.head)[0]
    cmask = struct.unpack_from("<I", cq, p.cq_off.ring_mask)[0]
    _, res, _ = struct.unpack_from("<QiI", cq, p.cq_off.cqes + (head & cmask) * 16)
    if res >= 0:
        return 0
    return errno.errorcode.get(-res, str(-res))


out = {}
for label, fam, typ, proto, flags in json.loads(sys.argv[1]):
    out[label] = uring_socket(fam, typ, proto, flags)
print(json.dumps(out))
