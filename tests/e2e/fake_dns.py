"""A fake upstream DNS server serving a fixed test zone over UDP and TCP.

It runs inside the test's own network namespace at a fake address; the agent's
--dns-upstream points at it. Only the stdlib: the wire format needed here
(one question, A/AAAA/CNAME answers) is small.
"""
import socket
import struct
import threading

from harness import serve_each

A, CNAME, AAAA = 1, 5, 28


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def decode_question(msg):
    """(qid, name, qtype, end offset of the question)"""
    qid, flags, qd = struct.unpack("!HHH", msg[:6])
    off = 12
    labels = []
    while True:
        n = msg[off]
        off += 1
        if n == 0:
            break
        labels.append(msg[off:off + n].decode())
        off += n
    qtype, qclass = struct.unpack("!HH", msg[off:off + 4])
    return qid, ".".join(labels).lower(), qtype, off + 4


class FakeDns:
    """ZONE: name -> list of (type, value, ttl); value is an IP or a CNAME target."""

    def __init__(self, addr, zone, port=53, delays=None):
        self.zone = zone
        self.delays = delays or {}  # name -> seconds to wait before answering over UDP
        self.queries = []
        self.lock = threading.Lock()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((addr, port))
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((addr, port))
        self.tcp.listen(16)
        serve_each(lambda: self.udp.recvfrom(4096), self._on_udp)
        serve_each(self.tcp.accept, self._on_tcp)

    def answer(self, msg):
        qid, name, qtype, qend = decode_question(msg)
        with self.lock:
            self.queries.append((name, qtype))
        answers = []
        cur = name
        for _ in range(8):  # follow CNAMEs inside the zone
            recs = self.zone.get(cur, [])
            cn = [r for r in recs if r[0] == CNAME]
            if cn and qtype != CNAME:
                answers.append((cur, CNAME, cn[0][1], cn[0][2]))
                cur = cn[0][1]
                continue
            answers += [(cur, t, v, ttl) for t, v, ttl in recs if t == qtype]
            break
        rcode = 0 if (name in self.zone) else 3
        out = struct.pack("!HHHHHH", qid, 0x8180 | rcode, 1, len(answers), 0, 0) + msg[12:qend]
        for owner, t, v, ttl in answers:
            if t == A:
                rdata = socket.inet_pton(socket.AF_INET, v)
            elif t == AAAA:
                rdata = socket.inet_pton(socket.AF_INET6, v)
            else:
                rdata = encode_name(v)
            out += encode_name(owner) + struct.pack("!HHIH", t, 1, ttl, len(rdata)) + rdata
        return out

    def _on_udp(self, msg, peer):
        try:
            delay = self.delays.get(decode_question(msg)[1])
            if delay:
                threading.Timer(delay, self._send_late, (msg, peer)).start()
                return
            self.udp.sendto(self.answer(msg), peer)
        except Exception:
            pass

    def _send_late(self, msg, peer):
        try:
            self.udp.sendto(self.answer(msg), peer)
        except Exception:
            pass

    def _on_tcp(self, c, _peer):
        try:
            n = struct.unpack("!H", c.recv(2))[0]
            msg = b""
            while len(msg) < n:
                msg += c.recv(n - len(msg))
            out = self.answer(msg)
            c.sendall(struct.pack("!H", len(out)) + out)
        except Exception:
            pass
        finally:
            c.close()

    def close(self):
        self.udp.close()
        self.tcp.close()
