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
import subprocess
import sys
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_dns import A, FakeDns  # noqa: E402
from fake_provider import serve_inference  # noqa: E402
from harness import Agent, Cgroup, TcpServer, client_script, write_policy  # noqa: E402

PROVIDER_IP = "203.0.113.100"
ECHO_IP = "198.51.100.20"
STREAMS = 4
RELAYS = 8
KEPT_RELAY_PORT = 10500
DNS_DELAY_S = 1.5
KEPT_MAX_S = 3.0
END_MAX_S = 15.0
ZONE = {"kept.example": [(A, "203.0.113.90", 600)], "slow.example": [(A, "203.0.113.91", 600)]}
POLICY = {"inference": {"enabled": True},
          "inspect": [{"cidr": ECHO_IP + "/32", "ports": ["10000-10999"]}],
          "allow": [{"host": "kept.example", "ports": [80]}, {"host": "slow.example", "ports": [80]}]}

# The sandbox that is detached: sets everything in flight, prints "ready",
# waits for a line on stdin (the detach), then finishes each connection.
DETACHED = client_script(r"""
import json, socket, time
ctx = inference_context(sys.argv[1])
streams = [open_stream(ctx) for _ in range(int(sys.argv[2]))]
relays = [relay_echo("198.51.100.20", 10000 + i) for i in range(int(sys.argv[3]))]
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
""")

# The sandbox that stays: streamed inference, relay echo, UDP and TCP DNS in a
# loop until the stop file exists; prints per-operation results and latencies.
KEPT = client_script(r"""
import os
ctx = inference_context(sys.argv[1])
ops = Ops("stream", "relay", "dns_udp", "dns_tcp")
while not os.path.exists(sys.argv[2]):
    ops.run("stream", timed_call, ctx, True)
    ops.run("relay", lambda: relay_echo("198.51.100.20", int(sys.argv[3])).close() is None)
    ops.run("dns_udp", dns_query, "kept.example")
    ops.run("dns_tcp", dns_query, "kept.example", True)
print(ops.json(), flush=True)
""")

AGAIN = client_script("print(finish_stream(*open_stream(inference_context(sys.argv[1]))))")


def gauge(port, name):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    m = re.search(r"^%s (\d+)$" % re.escape(name), text, re.M)
    return int(m.group(1)) if m else None


class DetachInFlight(unittest.TestCase):
    def test_detach_with_streams_relay_and_dns_in_flight(self):
        tmp, reports = harness.isolated(self, "detach")
        fake = FakeDns(harness.FAKE_RESOLVER, ZONE, delays={"slow.example": DNS_DELAY_S})
        # The relay dials the destination the client asked for: an echo server on each port used.
        echoes = [TcpServer(ECHO_IP, p, echo=True) for p in list(range(10000, 10000 + RELAYS)) + [KEPT_RELAY_PORT]]
        mport = harness.free_port()
        agent = Agent("detach", ["--metrics", "127.0.0.1:%d" % mport]).start(timeout=60)
        gone, kept = Cgroup("detach-gone"), Cgroup("detach-kept")
        stop = os.path.join(tmp, "stop-kept")
        provider = detached = kept_proc = None
        try:
            provider, local_ca = serve_inference(agent, tmp, PROVIDER_IP, "fake-d")
            provider.rec.stream_gap = 0.6  # five events: ~3 s per streamed answer
            pol = write_policy(tmp, "detach", POLICY)
            for cg in (gone, kept):
                agent.ctl("attach", "--cgroup", cg.path, "--policy", pol)

            kept_proc = kept.popen([sys.executable, "-c", KEPT, local_ca, stop, str(KEPT_RELAY_PORT)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            detached = gone.popen([sys.executable, "-c", DETACHED, local_ca, str(STREAMS), str(RELAYS)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = detached.stdout.readline()
            self.assertEqual(line.strip(), "ready", line or detached.stderr.read())
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

            print("\ndetached sandbox: %s; kept sandbox (calls, slowest s): %s" % (
                res, {k: (len(v), max([x[1] for x in v] or [0])) for k, v in kres["ops"].items()}), file=sys.stderr)
            self.assertEqual(len(res["streams"]), STREAMS)
            self.assertTrue(all(s in ("done", "eof") for s in res["streams"]), res)
            self.assertEqual(len(res["relays"]), RELAYS)
            self.assertTrue(all(r in ("echo+eof", "eof") for r in res["relays"]), res)
            self.assertLess(res["seconds"], END_MAX_S, res)
            self.assertEqual(kres["errors"], [], kres)
            for name, calls in kres["ops"].items():
                self.assertGreaterEqual(len(calls), 2, (name, kres))
                slow_or_failed = [c for c in calls if not c[0] or c[1] > KEPT_MAX_S]
                self.assertEqual(slow_or_failed, [], "%s: failed or over %.1f s: %s" % (name, KEPT_MAX_S, kres))

            # Every connection the agent held was released.
            for g in ("redir_terminator_connections", "redir_relay_connections", "redir_dns_tcp_connections"):
                self.assertEqual(harness.wait_until(lambda: gauge(mport, g) == 0, timeout=10), True, g)
            # The detached cgroup is a fresh sandbox when attached again.
            agent.ctl("attach", "--cgroup", gone.path, "--policy", pol)
            again = gone.run([sys.executable, "-c", AGAIN, local_ca], timeout=60)
            self.assertEqual(again.stdout.strip(), "done", again.stderr)
            self.assertIsNone(agent.proc.poll(), "redird died; see " + agent.log)
            agent.stop()  # SIGTERM: the leak check runs at exit
        finally:
            harness.close_all(detached, kept_proc, *echoes, provider, fake)
            agent.cleanup([gone, kept])
        found = harness.sanitizer_reports(reports)
        self.assertFalse(found, "sanitizer reports:\n" + found)  # the reports themselves, not a truncated diff


if __name__ == "__main__":
    unittest.main(verbosity=2)
