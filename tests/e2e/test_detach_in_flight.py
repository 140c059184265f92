"""Issue 9, lifetime safety: `redirctl detach` while the detached sandbox has
streamed inference answers half-way through (SSE, mid-stream), connections
open through the inspect relay, and DNS lookups (UDP and TCP) waiting on a
slow upstream. Meanwhile a second sandbox keeps calling inference, the relay
and DNS. Passes when the agent writes no sanitizer report (run by the soak
label against the ASan + UBSan build, tests/soak; against the normal build
as an e2e test), the kept sandbox's every operation succeeds within
KEPT_MAX_S (a streamed answer: its first event), each of the detached sandbox's connections ends cleanly (the
stream completes or closes, the relay passes the half-close on and gives
EOF; no reset, no hang), the agent's connection gauges return to zero, and
the detached cgroup can be attached again and served.

Everything runs in this test's own network namespace: fake provider at
203.0.113.100 (TLS, test CA), echo server at 198.51.100.20, fake resolver
at 192.0.2.53.
"""
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_dns import A, FakeDns  # noqa: E402
from fake_provider import FakeProvider, make_test_ca  # noqa: E402
from harness import Agent, Cgroup, write_policy  # noqa: E402

PROVIDER_IP = "203.0.113.100"
ECHO_IP = "198.51.100.20"
STREAMS = 4
RELAYS = 8
DNS_DELAY_S = 1.5
KEPT_MAX_S = 3.0
END_MAX_S = 15.0
ZONE = {"kept.example": [(A, "203.0.113.90", 600)], "slow.example": [(A, "203.0.113.91", 600)]}
POLICY = {"inference": {"enabled": True},
          "inspect": [{"cidr": ECHO_IP + "/32", "ports": ["10000-10999"]}],
          "allow": [{"host": "kept.example", "ports": [80]}, {"host": "slow.example", "ports": [80]}]}

# Shared by both sandboxes' clients: one streamed call, a relay echo, a DNS query.
CLIENT_LIB = r"""
import json, random, socket, ssl, struct, sys, time
def open_stream(ctx):
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    s = ctx.wrap_socket(socket.create_connection(("198.18.0.1", 443), 10), server_hostname="inference.local")
    s.settimeout(20)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    data = b""
    while b"data:" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise OSError("stream ended before its first event: %r" % data[:200])
        data += chunk
    return s, data
def finish_stream(s, data):
    # "done" once [DONE] arrived, "eof" if the agent closed it first.
    while b"[DONE]" not in data:
        chunk = s.recv(65536)
        if not chunk:
            return "eof"
        data += chunk
    s.close()
    return "done"
def relay_echo(port, msg=b"ping\n"):
    r = socket.create_connection(("198.51.100.20", port), 10)
    r.settimeout(10)
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
    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00" + struct.pack("!HH", 1, 1)
    if tcp:
        s = socket.create_connection(("192.0.2.99", 53), 5)
        s.sendall(struct.pack("!H", len(q)) + q)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(5)
        s.sendto(q, ("192.0.2.99", 53))
    if not wait:
        return s
    d = s.recv(4096)
    s.close()
    if tcp:
        d = d[2:]
    return (d[3] & 15) == 0 and struct.unpack("!H", d[6:8])[0] > 0
"""

# The sandbox that is detached: sets everything in flight, prints "ready",
# waits for a line on stdin (the detach), then finishes each connection.
DETACHED = CLIENT_LIB + r"""
ctx = ssl.create_default_context(cafile=sys.argv[1])
streams = [open_stream(ctx) for _ in range(int(sys.argv[2]))]
relays = [relay_echo(10000 + i) for i in range(int(sys.argv[3]))]
lookups = [dns_query("slow.example", wait=False) for _ in range(4)] + [dns_query("slow.example", True, False)]
print("ready", flush=True)
sys.stdin.readline()
t0 = time.time()
out = {"streams": [], "relays": []}
for s, data in streams:
    try:
        out["streams"].append(finish_stream(s, data))
    except OSError as e:
        out["streams"].append("error: %s" % e)
for r in relays:
    try:
        r.sendall(b"after\n")
        got = r.recv(64)
        r.shutdown(socket.SHUT_WR)  # the echo server closes once it sees our half-close
        rest = r.recv(64)
        out["relays"].append("echo+eof" if got == b"after\n" and rest == b"" else
                             "eof" if got == b"" else "other %r %r" % (got, rest))
    except OSError as e:
        out["relays"].append("error: %s" % e)
    r.close()
out["seconds"] = time.time() - t0
print(json.dumps(out), flush=True)
"""

# The sandbox that stays: streamed inference, relay echo, UDP and TCP DNS in a
# loop until the stop file exists; prints per-operation results and latencies.
KEPT = CLIENT_LIB + r"""
import os
ctx = ssl.create_default_context(cafile=sys.argv[1])
ops = {"stream": [], "relay": [], "dns_udp": [], "dns_tcp": []}
errors = []
def timed(name, fn):
    # A streamed answer lasts seconds by design: its latency is the first event's.
    t = time.time()
    try:
        ok, latency = fn(), None
        if isinstance(ok, tuple):
            ok, latency = ok
    except OSError as e:
        ok, latency = False, None
        errors.append("%s: %s" % (name, e))
    ops[name].append([bool(ok), round(latency if latency is not None else time.time() - t, 3)])
def stream_once():
    t = time.time()
    s, data = open_stream(ctx)
    first = time.time() - t
    return finish_stream(s, data) == "done", first
while not os.path.exists(sys.argv[2]):
    timed("stream", stream_once)
    timed("relay", lambda: relay_echo(10500).close() is None)
    timed("dns_udp", lambda: dns_query("kept.example"))
    timed("dns_tcp", lambda: dns_query("kept.example", True))
print(json.dumps({"ops": ops, "errors": errors[:10]}), flush=True)
"""


class EchoServer:
    """Echoes every connection's bytes and closes once the client half-closes."""

    def __init__(self, addr, port):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(128)
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c):
        try:
            while True:
                d = c.recv(4096)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def gauge(port, name):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
    return int(m.group(1)) if m else None


class DetachInFlight(unittest.TestCase):
    def test_detach_with_streams_relay_and_dns_in_flight(self):
        harness.require_root(self)
        harness.enter_netns()
        tmp = tempfile.mkdtemp(prefix="redir-e2e-detach-")
        os.chmod(tmp, 0o755)
        reports = harness.sanitizer_reports_to(tmp)
        ca, cert, key = make_test_ca(tmp, PROVIDER_IP)
        provider = FakeProvider(PROVIDER_IP, 8443, cert, key, name="fake-d")
        provider.rec.stream_gap = 0.6  # five events: ~3 s per streamed answer
        fake = FakeDns(harness.FAKE_RESOLVER, ZONE, delays={"slow.example": DNS_DELAY_S})
        # The relay dials the destination the client asked for: an echo server on each port used.
        echoes = [EchoServer(ECHO_IP, p) for p in list(range(10000, 10000 + RELAYS)) + [10500]]
        mport = harness.free_port()
        agent = Agent("detach", ["--metrics", "127.0.0.1:%d" % mport]).start(timeout=60)
        gone, kept = Cgroup("detach-gone"), Cgroup("detach-kept")
        stop = os.path.join(tmp, "stop-kept")
        detached = kept_proc = None
        try:
            agent.ctl("provider", "create", "--name", "fp", "--type", "openai-compatible", "--base-url",
                      "https://%s:8443/v1" % PROVIDER_IP, "--ca-file", ca, "--credential", "OPENAI_API_KEY=k")
            agent.ctl("inference", "set", "--provider", "fp", "--model", "served-model")
            local_ca = os.path.join(tmp, "inference-ca.pem")
            agent.ctl("ca", "export", "--out", local_ca)
            pol = write_policy(tmp, "detach", POLICY)
            for cg in (gone, kept):
                agent.ctl("attach", "--cgroup", cg.path, "--policy", pol)

            kept_proc = kept.popen([sys.executable, "-c", KEPT, local_ca, stop], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
            detached = gone.popen([sys.executable, "-c", DETACHED, local_ca, str(STREAMS), str(RELAYS)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = detached.stdout.readline()
            self.assertEqual(line.strip(), "ready", line + detached.stderr.read() if not line else line)
            t_detach = time.time()
            agent.ctl("detach", "--cgroup", gone.path)
            detached.stdin.write("go\n")
            detached.stdin.flush()
            out, err = detached.communicate(timeout=60)
            self.assertEqual(detached.returncode, 0, err)
            res = json.loads(out)
            # The slow upstream answers for the detached sandbox arrive after the detach.
            harness.wait_until(lambda: time.time() > t_detach + DNS_DELAY_S + 1.0, timeout=DNS_DELAY_S + 2)
            open(stop, "w").close()
            kout, kerr = kept_proc.communicate(timeout=60)
            self.assertEqual(kept_proc.returncode, 0, kerr)
            kres = json.loads(kout)

            print("\ndetached sandbox: %s; kept sandbox: %s" % (
                res, {k: (len(v), max([x[1] for x in v] or [0])) for k, v in kres["ops"].items()}), file=sys.stderr)
            self.assertEqual(len(res["streams"]), STREAMS)
            self.assertTrue(all(s in ("done", "eof") for s in res["streams"]), res)
            self.assertEqual(len(res["relays"]), RELAYS)
            self.assertTrue(all(r in ("echo+eof", "eof") for r in res["relays"]), res)
            self.assertLess(res["seconds"], END_MAX_S, res)
            for name, calls in kres["ops"].items():
                self.assertGreaterEqual(len(calls), 2, (name, kres))
                slow_or_failed = [c for c in calls if not c[0] or c[1] > KEPT_MAX_S]
                self.assertEqual(slow_or_failed, [], "%s: failed or over %.1f s: %s" % (name, KEPT_MAX_S, kres))

            # Every connection the agent held was released.
            for g in ("redir_terminator_connections", "redir_relay_connections", "redir_dns_tcp_connections"):
                self.assertEqual(harness.wait_until(lambda: gauge(mport, g) == 0, timeout=10), True, g)
            # The detached cgroup is a fresh sandbox when attached again.
            agent.ctl("attach", "--cgroup", gone.path, "--policy", pol)
            again = gone.run([sys.executable, "-c", CLIENT_LIB +
                              "print(finish_stream(*open_stream(ssl.create_default_context(cafile=sys.argv[1]))))",
                              local_ca], timeout=60)
            self.assertEqual(again.stdout.strip(), "done", again.stderr)
            self.assertIsNone(agent.proc.poll(), "redird died; see " + agent.log)
            agent.stop()  # SIGTERM: the leak check runs at exit
        finally:
            for p in (detached, kept_proc):
                if p and p.poll() is None:
                    p.kill()
                    p.wait()
            for e in echoes:
                e.close()
            provider.close()
            fake.close()
            agent.cleanup([gone, kept])
        self.assertEqual(harness.sanitizer_reports(reports), "", "sanitizer reports")


if __name__ == "__main__":
    unittest.main(verbosity=2)
