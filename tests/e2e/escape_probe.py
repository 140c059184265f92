"""The attacker inside the sandbox: each subcommand makes one escape attempt and
prints one JSON object with what the kernel and the filesystem answered
("OK" or an errno name). Run by the escape corpus (test_escape_*.py) inside
sandboxes; only the standard library, so it runs as any user."""
import ctypes
import errno
import json
import os
import socket
import struct
import sys
import threading
import time

PAYLOAD = b"escape attempt"
libc = ctypes.CDLL(None, use_errno=True)


def ename(e):
    return errno.errorcode.get(e.errno, str(e)) if isinstance(e, OSError) and e.errno else repr(e)


def attempt(fn):
    try:
        r = fn()
        return "OK" if r is None else r
    except socket.timeout:
        return "TIMEOUT"
    except OSError as e:
        return ename(e)


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def sa(addr, port):
    """Socket address tuple; "fe80::1%lo" carries its scope as an interface index."""
    if "%" in addr:
        a, scope = addr.split("%", 1)
        return (a, int(port), 0, socket.if_nametoindex(scope))
    return (addr, int(port))


def tcp_connect(addr, port, proto=0, fam=None):
    def go():
        s = socket.socket(fam or family(addr), socket.SOCK_STREAM, proto)
        s.settimeout(3)
        try:
            s.connect(sa(addr, port))
            s.sendall(PAYLOAD)
        finally:
            s.close()
    return attempt(go)


def udp_sendto(addr, port, proto=0, fam=None):
    def go():
        s = socket.socket(fam or family(addr), socket.SOCK_DGRAM, proto)
        try:
            s.sendto(PAYLOAD, sa(addr, port))
        finally:
            s.close()
    return attempt(go)


def udp_connect(addr, port, proto=0):
    s = socket.socket(family(addr), socket.SOCK_DGRAM, proto)
    res = {"connect": attempt(lambda: s.connect(sa(addr, port)))}
    res["send"] = attempt(lambda: s.send(PAYLOAD) and None)
    s.close()
    return res


# ---- subcommands ----

def cmd_tcp(addr, port):
    return {"connect": tcp_connect(addr, port)}


def cmd_tcp6(addr, port):
    """An AF_INET6 socket, even for a v4-mapped literal."""
    return {"connect": tcp_connect(addr, port, fam=socket.AF_INET6)}


def cmd_udp_sendto(addr, port):
    return {"sendto": udp_sendto(addr, port)}


def cmd_udp6_sendto(addr, port):
    return {"sendto": udp_sendto(addr, port, fam=socket.AF_INET6)}


def cmd_udp_connect(addr, port):
    return udp_connect(addr, port)


def cmd_udp_switch(allowed_addr, allowed_port, addr, port):
    """Connect to an allowed UDP peer, then name a different destination."""
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    res = {"connect_allowed": attempt(lambda: s.connect((allowed_addr, int(allowed_port))))}
    res["sendto_other"] = attempt(lambda: s.sendto(PAYLOAD, sa(addr, port)) and None)
    # Disconnect (AF_UNSPEC) and try again unconnected.
    unspec = struct.pack("H", socket.AF_UNSPEC) + b"\0" * 14
    res["disconnect"] = "OK" if libc.connect(s.fileno(), unspec, len(unspec)) == 0 else errno.errorcode[ctypes.get_errno()]
    res["sendto_after_disconnect"] = attempt(lambda: s.sendto(PAYLOAD, sa(addr, port)) and None)
    s.close()
    return res


def cmd_quic(addr, port):
    """A QUIC Initial-shaped datagram (long header, version 1) to UDP/443."""
    initial = bytes([0xC3]) + b"\x00\x00\x00\x01" + bytes([8]) + os.urandom(8) + bytes([0]) + b"\x00" + os.urandom(1180)
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    res = {"sendto": attempt(lambda: s.sendto(initial, (addr, int(port))) and None)}
    res["connect"] = attempt(lambda: s.connect(sa(addr, port)))
    res["send"] = attempt(lambda: s.send(initial) and None)
    s.close()
    return res


def cmd_tfo(addr, port):
    """TCP Fast Open: the SYN carries data and names its destination in sendto."""
    MSG_FASTOPEN = 0x20000000
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.settimeout(3)
    res = {"sendto_fastopen": attempt(lambda: s.sendto(PAYLOAD, MSG_FASTOPEN, (addr, int(port))) and None)}
    s.close()
    TCP_FASTOPEN_CONNECT = 30
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.settimeout(3)
    res["fastopen_connect_opt"] = attempt(lambda: s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1))
    res["connect"] = attempt(lambda: s.connect(sa(addr, port)))
    res["send"] = attempt(lambda: s.send(PAYLOAD) and None)
    s.close()
    return res


def cmd_lsrr(hop, addr, port, proto):
    """IPv4 loose source route: the hooks check ADDR (allowed), but the kernel
    routes the packet to the first hop HOP, which is what the IP header names."""
    opt = bytes([0x83, 7, 4]) + socket.inet_aton(hop) + b"\x00"  # LSRR [HOP], then END
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM)
    s.settimeout(1)
    res = {"setsockopt": attempt(lambda: s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, opt))}
    if proto == "udp":
        res["send"] = attempt(lambda: s.sendto(PAYLOAD, (addr, int(port))) and None)
    elif proto == "udp-cmsg":  # the same option per message, as ancillary data
        s.close()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        IP_RETOPTS = 7
        res["send"] = attempt(lambda: s.sendmsg([PAYLOAD], [(socket.IPPROTO_IP, IP_RETOPTS, opt)], 0,
                                               (addr, int(port))) and None)
    else:
        res["send"] = attempt(lambda: s.connect((addr, int(port))))
    s.close()
    return res


def cmd_srh(hop, addr, port, proto):
    """IPv6 segment routing header (IPV6_RTHDR, type 4, no privilege needed):
    the hooks check ADDR, but the kernel sends the packet to the segment left
    to visit, HOP, which is what the IPv6 header names."""
    segs = socket.inet_pton(socket.AF_INET6, addr) + socket.inet_pton(socket.AF_INET6, hop)
    srh = struct.pack("!BBBBBBH", 0, 4, 4, 1, 1, 0, 0) + segs  # hdrlen 4 (2 segments), type 4, left 1
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(1)
    res = {"setsockopt": attempt(lambda: s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RTHDR, srh))}
    if proto == "tcp":
        res["send"] = attempt(lambda: s.connect(sa(addr, port)))
    else:
        res["send"] = attempt(lambda: s.sendto(PAYLOAD, sa(addr, port)) and None)
    s.close()
    return res


def opens(fam, typ, proto):
    """Only creates the socket: what sock_create (or the kernel) says."""
    return {"socket": attempt(lambda: socket.socket(fam, typ, proto).close())}


def opens_then(fam, typ, proto, use):
    """opens(), and when such a socket can be created, USE()'s results too."""
    res = opens(fam, typ, proto)
    if res["socket"] == "OK":
        res.update(use())
    return res


def cmd_mptcp(addr, port):
    IPPROTO_MPTCP = 262
    return opens_then(family(addr), socket.SOCK_STREAM, IPPROTO_MPTCP,
                      lambda: {"connect": tcp_connect(addr, port, proto=IPPROTO_MPTCP)})


def cmd_udplite(addr, port):
    IPPROTO_UDPLITE = 136
    return opens_then(family(addr), socket.SOCK_DGRAM, IPPROTO_UDPLITE,
                      lambda: {"sendto": udp_sendto(addr, port, proto=IPPROTO_UDPLITE),
                               **udp_connect(addr, port, proto=IPPROTO_UDPLITE)})


def cmd_socket(fam, typ, proto):
    return opens(int(fam), int(typ), int(proto))


def cmd_ping(addr):
    """An ICMP echo through a ping socket (SOCK_DGRAM, IPPROTO_ICMP)."""
    def echo():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        res = {"sendto": attempt(lambda: s.sendto(b"\x08\x00\x00\x00\x00\x01\x00\x01" + PAYLOAD, (addr, 0)) and None)}
        s.close()
        return res
    return opens_then(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP, echo)


def cmd_packet():
    """AF_PACKET: frames written below IP, past every socket-address hook."""
    res = {}
    for name, typ in (("raw", socket.SOCK_RAW), ("dgram", socket.SOCK_DGRAM)):
        res[name] = attempt(lambda: socket.socket(socket.AF_PACKET, typ, socket.htons(3)).close())
    res["euid"] = os.geteuid()
    return res


def cmd_raw(addr, port=4444):
    res = {}
    for name, fam, proto in (("raw4_udp", socket.AF_INET, socket.IPPROTO_UDP),
                             ("raw4_tcp", socket.AF_INET, socket.IPPROTO_TCP),
                             ("raw4_icmp", socket.AF_INET, socket.IPPROTO_ICMP),
                             ("raw6_udp", socket.AF_INET6, socket.IPPROTO_UDP),
                             ("raw4_ipip", socket.AF_INET, 4)):
        res[name] = attempt(lambda: socket.socket(fam, socket.SOCK_RAW, proto).close())
    # If one were created, really send through it (an IPPROTO_RAW datagram).
    if res["raw4_udp"] == "OK":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
        res["raw_sendto"] = attempt(lambda: s.sendto(struct.pack("!HHHH", 4444, int(port), 8 + len(PAYLOAD), 0) + PAYLOAD,
                                                     (addr, 0)) and None)
        s.close()
    res["euid"] = os.geteuid()
    return res


def dns_query(name, qtype):
    qid = int.from_bytes(os.urandom(2), "big")
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack("!HH", qtype, 1)


def dns_parse(msg):
    """(rcode, [addresses]) of an answer."""
    rcode = msg[3] & 0xF
    an = struct.unpack("!H", msg[6:8])[0]
    off = 12

    def skip_name(o):
        while True:
            n = msg[o]
            if n == 0:
                return o + 1
            if n & 0xC0 == 0xC0:
                return o + 2
            o += n + 1
    off = skip_name(off) + 4
    out = []
    for _ in range(an):
        off = skip_name(off)
        t, _, _, ln = struct.unpack("!HHIH", msg[off:off + 10])
        rd = msg[off + 10:off + 10 + ln]
        if t == 1 and ln == 4:
            out.append(socket.inet_ntop(socket.AF_INET, rd))
        elif t == 28 and ln == 16:
            out.append(socket.inet_ntop(socket.AF_INET6, rd))
        off += 10 + ln
    return rcode, out


def dns_udp(resolver, port, name, qtype):
    s = socket.socket(family(resolver), socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(dns_query(name, qtype), (resolver, int(port)))
        msg, src = s.recvfrom(4096)
        rcode, addrs = dns_parse(msg)
        return {"send": "OK", "rcode": rcode, "answers": addrs, "from": src[0]}
    except OSError as e:
        return {"send": ename(e)}
    finally:
        s.close()


def dns_tcp(resolver, port, name, qtype):
    s = socket.socket(family(resolver), socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect((resolver, int(port)))
        q = dns_query(name, qtype)
        s.sendall(struct.pack("!H", len(q)) + q)
        n = struct.unpack("!H", s.recv(2))[0]
        msg = b""
        while len(msg) < n:
            chunk = s.recv(n - len(msg))
            if not chunk:
                break
            msg += chunk
        rcode, addrs = dns_parse(msg)
        return {"send": "OK", "rcode": rcode, "answers": addrs}
    except OSError as e:
        return {"send": ename(e)}
    finally:
        s.close()


def cmd_dns_udp(resolver, port, name, qtype):
    return dns_udp(resolver, port, name, int(qtype))


def cmd_dns_tcp(resolver, port, name, qtype):
    return dns_tcp(resolver, port, name, int(qtype))


def cmd_rebind(resolver, name, qtype, port, literal):
    """Resolve NAME through the sandbox's DNS, then connect to every answer and
    to LITERAL (the special address the name points at)."""
    res = dns_udp(resolver, 53, name, int(qtype))
    res["connect_answers"] = {a: tcp_connect(a, port) for a in res.get("answers", [])}
    res["connect_literal"] = tcp_connect(literal, port)
    return res


def in_thread(fn):
    """FN() run on a second thread of this process; what it put in its dict."""
    out = {}
    t = threading.Thread(target=fn, args=(out,))
    t.start()
    t.join()
    return out


def cmd_thread(addr, port):
    def worker(out):
        out["connect"] = tcp_connect(addr, port)
        out["sendto"] = udp_sendto(addr, port)
    return in_thread(worker)


def cmd_thread_move(cgroot, addr, port):
    """A thread tries to leave through cgroup.threads, then connects."""
    def worker(out):
        tid = threading.get_native_id()
        out["move_thread"] = attempt(lambda: open(os.path.join(cgroot, "cgroup.threads"), "w").write("%d\n" % tid)
                                     and None)
        out["connect"] = tcp_connect(addr, port)
    return in_thread(worker)


def cmd_move(procs_file, addr, port):
    """Write our pid into another cgroup's cgroup.procs, then connect."""
    res = {"move": attempt(lambda: open(procs_file, "w").write("%d\n" % os.getpid()) and None)}
    res["cgroup"] = open("/proc/self/cgroup").read().strip().splitlines()[-1]
    res["connect"] = tcp_connect(addr, port)
    return res


def cgroup2_mount():
    for line in open("/proc/mounts"):
        parts = line.split()
        if parts[2] == "cgroup2":
            return parts[1]
    return "/sys/fs/cgroup"


def own_cgroup_dir(mount):
    """Our cgroup's directory. /proc/self/cgroup lies inside a private cgroup
    namespace, so look for the cgroup.procs that lists us (pids are shown in
    our own pid namespace), as an attacker would."""
    me = str(os.getpid())
    for dirpath, dirs, files in os.walk(mount):
        if dirpath.count("/") - mount.count("/") > 4:
            dirs[:] = []
            continue
        try:
            if me in open(os.path.join(dirpath, "cgroup.procs")).read().split():
                return dirpath
        except OSError:
            pass
    rel = [ln for ln in open("/proc/self/cgroup").read().splitlines() if ln.startswith("0::")][0][3:]
    return mount + rel


def cmd_child_cgroup(mount, addr, port):
    """Create a cgroup below our own, enter it, connect."""
    child = os.path.join(own_cgroup_dir(mount), "escape-child")
    res = {"mkdir": attempt(lambda: os.mkdir(child))}
    res["enter"] = attempt(lambda: open(os.path.join(child, "cgroup.procs"), "w").write("%d\n" % os.getpid()) and None)
    res["cgroup"] = own_cgroup_dir(mount)
    res["connect"] = tcp_connect(addr, port)
    res["sendto"] = udp_sendto(addr, port)
    return res


def cmd_read(*paths):
    """Try to read each file; report errno or the bytes read (as text)."""
    out = {}
    for p in paths:
        try:
            with open(p, "rb") as f:
                out[p] = f.read().decode("latin-1")
        except OSError as e:
            out[p] = ename(e)
    return {"read": out}


def cmd_walk(top, secret):
    """Read every file under TOP; report which we could open and whether SECRET was in any."""
    opened, refused, leaked = [], {}, []
    for dirpath, _, files in os.walk(top, onerror=lambda e: refused.__setitem__(e.filename, ename(e))):
        for fn in files:
            p = os.path.join(dirpath, fn)
            try:
                with open(p, "rb") as f:
                    data = f.read()
                opened.append(p)
                if secret.encode() in data:
                    leaked.append(p)
            except OSError as e:
                refused[p] = ename(e)
    top_listing = attempt(lambda: os.listdir(top) and None)
    return {"opened": opened, "refused": refused, "leaked": leaked, "list_top": top_listing}


def cmd_unlink_pins(top):
    """Remove every pinned link and map we can reach under TOP."""
    removed, refused = [], {}
    for dirpath, dirs, files in os.walk(top, onerror=lambda e: refused.__setitem__(e.filename, ename(e))):
        for fn in files:
            p = os.path.join(dirpath, fn)
            try:
                os.unlink(p)
                removed.append(p)
            except OSError as e:
                refused[p] = ename(e)
    rm_top = attempt(lambda: os.rmdir(top))
    return {"removed": removed, "refused": refused, "rmdir_top": rm_top}


def cmd_control(sock_path, request):
    """One raw JSON request to the agent's control socket."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    res = {"connect": attempt(lambda: s.connect(sock_path))}
    if res["connect"] == "OK":
        def talk():
            s.sendall(request.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data.decode(errors="replace").strip() or "EOF"
        res["reply"] = attempt(talk)
    s.close()
    return res


def cmd_detach(redirctl, sock_path, addr, port):
    """`redirctl detach` of the sandbox we are in, then connect."""
    import subprocess
    cg = own_cgroup_dir(cgroup2_mount())
    r = subprocess.run([redirctl, "--socket", sock_path, "detach", "--cgroup", cg], capture_output=True, text=True)
    return {"detach_rc": r.returncode, "detach_err": r.stderr.strip(), "cgroup": cg,
            "connect": tcp_connect(addr, port), "sendto": udp_sendto(addr, port)}


def cmd_policy_load(redirctl, sock_path, policy_file, name, addr, port):
    """Replace the policy our sandbox runs under with one that allows everything."""
    import subprocess
    r = subprocess.run([redirctl, "--socket", sock_path, "policy", "load", policy_file, "--name", name],
                       capture_output=True, text=True)
    return {"load_rc": r.returncode, "load_err": r.stderr.strip(),
            "connect": tcp_connect(addr, port), "sendto": udp_sendto(addr, port)}


def cmd_kill_parent(addr, port):
    """SIGKILL whatever started us (`redirctl run`), then try the network."""
    import signal
    ppid = os.getppid()
    # ppid 0: run is outside our pid namespace, out of sight (kill(0) would hit us).
    res = {"ppid": ppid, "kill": attempt(lambda: os.kill(ppid, signal.SIGKILL)) if ppid > 1 else "invisible"}
    time.sleep(0.2)
    res["connect"] = tcp_connect(addr, port)
    res["sendto"] = udp_sendto(addr, port)
    return res


def cmd_abstract_unix(name):
    """Connect to a host service's abstract unix socket (shared per network namespace)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    res = {"connect": attempt(lambda: s.connect("\0" + name))}
    if res["connect"] == "OK":
        res["send"] = attempt(lambda: s.sendall(PAYLOAD))
    s.close()
    return res


def cmd_identity():
    status = dict(ln.split(":\t", 1) for ln in open("/proc/self/status").read().splitlines() if ":\t" in ln)
    return {k: status.get(k, "").strip() for k in ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "CapAmb", "NoNewPrivs")}


def cmd_pidfd_steal(pid, fd, addr, port):
    """pidfd_getfd(2): take a datagram socket that a process outside the sandbox
    created (so no sandbox hook runs for it) and send through it. FD "any"
    tries every descriptor of PID."""
    SYS_pidfd_getfd = 438
    res = {}
    try:
        pidfd = os.pidfd_open(int(pid))
    except OSError as e:
        return {"pidfd_open": ename(e)}
    res["pidfd_open"] = "OK"
    libc.syscall.restype = ctypes.c_long
    fds = range(3, 256) if fd == "any" else [int(fd)]
    res["getfd"] = "none"
    for n in fds:
        nfd = libc.syscall(SYS_pidfd_getfd, pidfd, n, 0)
        if nfd < 0:
            err = errno.errorcode.get(ctypes.get_errno(), "?")
            if err != "EBADF":
                res["getfd"] = err
            continue
        res["getfd"] = "OK"
        try:
            s = socket.socket(fileno=nfd)
        except OSError:
            os.close(nfd)
            continue
        if s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_DGRAM:
            dst = addr if s.family == socket.AF_INET6 or ":" not in addr else addr
            if s.family == socket.AF_INET6 and ":" not in addr:
                dst = "::ffff:" + addr
            res["stolen_fd"] = n
            res["sendto"] = attempt(lambda: s.sendto(PAYLOAD, (dst, int(port))) and None)
            s.detach()
            break
        s.detach()
        os.close(nfd)
    return res


def become_root_in_new_userns(more_flags):
    """unshare(CLONE_NEWUSER | MORE_FLAGS) and map our ids to root there:
    {"unshare": OK or errno, "map": errno when the id maps could not be written}."""
    CLONE_NEWUSER = 0x10000000
    uid, gid = os.getuid(), os.getgid()
    res = {"unshare": "OK" if libc.unshare(CLONE_NEWUSER | more_flags) == 0 else errno.errorcode[ctypes.get_errno()]}
    if res["unshare"] == "OK":
        try:
            open("/proc/self/setgroups", "w").write("deny")
            open("/proc/self/uid_map", "w").write("0 %d 1" % uid)
            open("/proc/self/gid_map", "w").write("0 %d 1" % gid)
        except OSError as e:
            res["map"] = ename(e)
    return res


def cmd_unshare_net(addr, port):
    """New user + network namespace (root there), then try the network."""
    CLONE_NEWNET = 0x40000000
    res = become_root_in_new_userns(CLONE_NEWNET)
    if res["unshare"] == "OK":
        os.system("ip link set lo up 2>/dev/null")
    res["euid"] = os.geteuid()
    res["connect"] = tcp_connect(addr, port)
    res["sendto"] = udp_sendto(addr, port)
    # Root of the new namespaces: raw and packet sockets are what it would want.
    res["raw"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close())
    res["loopback_connect"] = tcp_connect("127.0.0.1", port)
    return res


def cmd_unshare_user(addr, port):
    """New user namespace only (the network namespace stays the host's)."""
    res = become_root_in_new_userns(0)
    res["euid"] = os.geteuid()
    res["packet"] = attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)).close())
    res["raw"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP).close())
    res["connect"] = tcp_connect(addr, port)
    return res


def cmd_orphan(mode, ctl_path, addr, port):
    """Leave a process behind when the command exits, in one of several ways,
    then (when the test says go) try the network from it.

    The orphan reports over a unix socket the test listens on: "armed PID",
    then, after "go", "result ...". If the sandbox kills it, the test sees EOF."""
    r, w = os.pipe()

    def detach_stdio():
        # So `run`'s caller is not kept waiting on our pipes.
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)

    def orphan_body(stage):
        detach_stdio()
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(ctl_path)
        c.sendall(("armed %d %s\n" % (os.getpid(), stage)).encode())
        os.write(w, b"1")
        buf = b""
        while b"\n" not in buf:
            chunk = c.recv(64)
            if not chunk:
                os._exit(0)
            buf += chunk
        res = {"connect": tcp_connect(addr, port), "sendto": udp_sendto(addr, port),
               "cgroup": open("/proc/self/cgroup").read().strip().splitlines()[-1]}
        c.sendall(("result " + json.dumps(res) + "\n").encode())
        c.close()
        os._exit(0)

    if mode == "fork":
        if os.fork() == 0:
            orphan_body("fork")
    elif mode == "double-fork":
        if os.fork() == 0:
            if os.fork() == 0:
                orphan_body("double-fork")
            os._exit(0)
    elif mode == "setsid":
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                orphan_body("setsid")
            os._exit(0)
    elif mode == "daemon":
        if os.fork() == 0:
            if libc.daemon(0, 0) != 0:
                os._exit(1)
            orphan_body("daemon")
    elif mode == "ignore-signals":
        if os.fork() == 0:
            import signal
            for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):
                signal.signal(sig, signal.SIG_IGN)
            os.setsid()
            orphan_body("ignore-signals")
    elif mode == "fork-storm":
        # Keeps replacing itself with a fresh child so a kill loop chasing pids
        # always has a new one to miss.
        if os.fork() == 0:
            os.setsid()
            detach_stdio()
            if os.fork() == 0:
                orphan_body("fork-storm")
            while True:
                try:
                    pid = os.fork()
                except OSError:
                    time.sleep(0.01)
                    continue
                if pid == 0:
                    time.sleep(0.05)
                    os._exit(0)
                os.waitpid(pid, 0)
    elif mode == "child-cgroup":
        # Root in the sandbox may create a cgroup below its own and hide there.
        child = os.path.join(own_cgroup_dir(cgroup2_mount()), "escape-orphan")
        try:
            os.mkdir(child)
        except OSError:
            pass
        if os.fork() == 0:
            try:
                open(os.path.join(child, "cgroup.procs"), "w").write("%d\n" % os.getpid())
            except OSError:
                pass
            orphan_body("child-cgroup")
    else:
        return {"error": "unknown orphan mode " + mode}
    # The command exits only once its orphan has reported in (or, for the
    # signal tests, stays until `run` is signalled).
    os.read(r, 1)
    if os.environ.get("ESCAPE_PARENT_STAYS"):
        print(json.dumps({"orphan": mode, "parent_stays": True}), flush=True)
        time.sleep(120)
    return {"orphan": mode, "parent_exits": True}


def main():
    name = "cmd_" + sys.argv[1].replace("-", "_")
    fn = globals().get(name)
    if not fn:
        print(json.dumps({"error": "unknown probe " + sys.argv[1]}))
        sys.exit(2)
    print(json.dumps(fn(*sys.argv[2:])), flush=True)


if __name__ == "__main__":
    main()
