"""Client pieces the e2e and soak tests run inside a sandbox (`python3 -c`
scripts built with harness.client_script): inference over the VIP, the
inspect relay, DNS to the agent. Only the stdlib; each call raises OSError
when the network says no.
"""
import json
import os
import random
import socket
import ssl
import struct
import time

VIP = ("198.18.0.1", 443)
DNS = ("192.0.2.99", 53)  # any address: the kernel sends port 53 to the agent
# Against the soak's ASan + UBSan agent, several times slower, the tests set
# REDIR_SANITIZED_SLOWDOWN (tests/soak/CMakeLists.txt): waits scale by it.
SLOWDOWN = float(os.environ.get("REDIR_SANITIZED_SLOWDOWN", "1"))


def inference_context(ca):
    return ssl.create_default_context(cafile=ca)


def tls_connect(ctx, timeout=10):
    s = ctx.wrap_socket(socket.create_connection(VIP, timeout * SLOWDOWN), server_hostname="inference.local")
    s.settimeout(30 * SLOWDOWN)
    return s


def send_chat(s, body, close=False):
    """One POST /v1/chat/completions of BODY (bytes) on S."""
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Type: application/json\r\n"
              + (b"Connection: close\r\n" if close else b"")
              + b"Content-Length: %d\r\n\r\n" % len(body) + body)


def chat_body(stream, model="m"):
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()


def read_until(s, marker, data=b""):
    """DATA and what S gives until MARKER is in it or S reaches EOF."""
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_response(s):
    """(status, body) of one Content-Length response on S (keeps S usable)."""
    data = read_until(s, b"\r\n\r\n")
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1]) if head else 0
    m = [l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
    n = int(m[0].split(b":")[1]) if m else 0
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, rest


def open_stream(ctx):
    """A streamed chat call read up to its first event: (socket, bytes so far)."""
    s = tls_connect(ctx)
    send_chat(s, chat_body(True))
    data = read_until(s, b"data:")
    if b"data:" not in data:
        raise OSError("stream ended before its first event: %r" % data[:200])
    return s, data


def finish_stream(s, data):
    """"done" once [DONE] arrived, "eof" if the connection was closed first."""
    done = b"[DONE]" in read_until(s, b"[DONE]", data)
    s.close()
    return "done" if done else "eof"


def timed_call(ctx, stream):
    """(ok, seconds to the answer's head or, streamed, to its first event)."""
    t = time.time()
    if stream:
        s, data = open_stream(ctx)
        first = time.time() - t
        return finish_stream(s, data) == "done", first
    s = tls_connect(ctx)
    send_chat(s, chat_body(False))
    status, body = read_response(s)
    s.close()
    return status == 200 and b"choices" in body, time.time() - t


def relay_echo(addr, port, msg=b"ping\n"):
    """A connection through the inspect relay to an echo server, checked once."""
    r = socket.create_connection((addr, port), 10 * SLOWDOWN)
    r.settimeout(10 * SLOWDOWN)
    r.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = r.recv(64)
        if not chunk:
            break
        got += chunk
    if got != msg:
        raise OSError("relay echoed %r" % got)
    return r


def dns_query(name, tcp=False, wait=True):
    """Asks the agent for NAME's A record: True when answered with an address
    (or, WAIT false, the socket with the query in flight)."""
    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00" + struct.pack("!HH", 1, 1)
    if tcp:
        s = socket.create_connection(DNS, 5 * SLOWDOWN)
        s.sendall(struct.pack("!H", len(q)) + q)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5 * SLOWDOWN)
        s.sendto(q, DNS)
    if not wait:
        return s
    while True:
        d = s.recv(4096)[2 if tcp else 0:]
        if tcp or struct.unpack("!H", d[:2])[0] == qid:
            break
    s.close()
    return (d[3] & 15) == 0 and struct.unpack("!H", d[6:8])[0] > 0


class Ops:
    """Per-operation [ok, seconds] lists and the first errors, as JSON."""

    def __init__(self, *names):
        self.ops = {n: [] for n in names}
        self.errors = []

    def run(self, name, fn, *args):
        t = time.time()
        try:
            ok = fn(*args)
            ok, dt = ok if isinstance(ok, tuple) else (ok, time.time() - t)
        except OSError as e:
            ok, dt = False, time.time() - t
            if len(self.errors) < 10:
                self.errors.append("%s: %s" % (name, e))
        self.ops[name].append([bool(ok), round(dt, 3)])

    def json(self):
        return json.dumps({"ops": self.ops, "errors": self.errors})
