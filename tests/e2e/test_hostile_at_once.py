"""Issue 9: every hostile case at once from one sandbox while another keeps
working. The hostile sandbox runs, concurrently: 20 requests whose `model` is
a 5 MB string (over a connection opened first), 10,000 idle connections to
the inference terminator (the client raises its RLIMIT_NOFILE, inside this
namespace), a DNS-over-TCP client that pipelines and never reads, and a flood of 3,000 denied connects. The victim
sandbox meanwhile calls inference (plain and streamed) and resolves names
over UDP and TCP in a loop. Stated bounds: every victim inference call
answers (a streamed one: its first event) within VICTIM_INFERENCE_MAX_S,
every victim lookup within VICTIM_DNS_MAX_S, none fails; redird writes no
sanitizer report (when REDIR_BUILD points at the ASan + UBSan build: the soak
runs it so, and there the bounds and the clients' timeouts are multiplied by
REDIR_SANITIZED_SLOWDOWN; what is asserted is the same).

Everything runs in this test's own network namespace: fake provider at
203.0.113.100 (TLS, test CA), fake resolver at 192.0.2.53.
"""
import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
import test_hostile  # noqa: E402  (the never-reading and connect-flood clients)
import test_hostile_terminator  # noqa: E402  (the huge-model and idle-connection client)
from fake_dns import A, FakeDns  # noqa: E402
from fake_provider import serve_inference  # noqa: E402
from harness import Agent, Cgroup, client_script, write_policy  # noqa: E402

PROVIDER_IP = "203.0.113.100"
CAP = 64
IDLE = 10000
HUGE = 5 * 1024 * 1024
SLOWDOWN = float(os.environ.get("REDIR_SANITIZED_SLOWDOWN", "1"))
VICTIM_INFERENCE_MAX_S = 5.0 * SLOWDOWN
VICTIM_DNS_MAX_S = 1.0 * SLOWDOWN
ZONE = {"victim.example": [(A, "203.0.113.70", 600)]}
POLICY = {"inference": {"enabled": True}, "allow": [{"host": "victim.example", "ports": [80]}]}

# The victim: inference (plain, streamed) and DNS (UDP, TCP) until the stop file exists.
VICTIM = client_script(r"""
import os, time
ctx = inference_context(sys.argv[1])
ops = Ops("inference", "inference_stream", "dns_udp", "dns_tcp")
while not os.path.exists(sys.argv[2]):
    ops.run("inference", timed_call, ctx, False)
    ops.run("inference_stream", timed_call, ctx, True)
    ops.run("dns_udp", dns_query, "victim.example")
    ops.run("dns_tcp", dns_query, "victim.example", True)
    time.sleep(0.05)
print(ops.json(), flush=True)
""")


class HostileAtOnce(unittest.TestCase):
    def test_all_hostile_cases_at_once_leave_the_other_sandbox_served(self):
        tmp, reports = harness.isolated(self, "atonce")
        fake = FakeDns(harness.FAKE_RESOLVER, ZONE)
        agent = Agent("atonce", ["--max-connections-per-sandbox", str(CAP), "--dns-tcp-idle-timeout-ms", "1000",
                                 "--dns-tcp-queue-bytes", "4096"]).start(timeout=60)
        hostile, victim = Cgroup("atonce-hostile"), Cgroup("atonce-victim")
        stop = os.path.join(tmp, "stop-victim")
        procs = {}
        provider = None
        try:
            provider, local_ca = serve_inference(agent, tmp, PROVIDER_IP, "fake-a")
            provider.rec.stream_gap = 0.05
            pol = write_policy(tmp, "atonce", POLICY)
            for cg in (hostile, victim):
                agent.ctl("attach", "--cgroup", cg.path, "--policy", pol)
            huge_client = os.path.join(tmp, "client.py")
            with open(huge_client, "w") as f:
                f.write(test_hostile_terminator.CLIENT)

            pipe = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs["victim"] = victim.popen([sys.executable, "-c", VICTIM, local_ca, stop], **pipe)
            t0 = time.time()
            # The huge-model client connects first: the idle flood then fills the sandbox's cap.
            connected = os.path.join(tmp, "huge-connected")
            procs["huge"] = hostile.popen([sys.executable, huge_client, local_ca, "huge", str(HUGE), "20", connected],
                                          **pipe)
            self.assertTrue(harness.wait_until(lambda: os.path.exists(connected), timeout=30),
                            "the huge-model client did not connect")
            procs["idle"] = hostile.popen([sys.executable, huge_client, local_ca, "idle", str(IDLE)],
                                          stdin=subprocess.PIPE, **pipe)
            procs["never_read"] = hostile.popen([sys.executable, "-c", test_hostile.NEVER_READ, "20"], **pipe)
            procs["connect_flood"] = hostile.popen([sys.executable, "-c", test_hostile.CONNECT_FLOOD, "3000", "0"],
                                                   **pipe)
            out = {}
            for name in ("never_read", "connect_flood", "huge"):
                o, e = procs[name].communicate(timeout=300)
                self.assertEqual(procs[name].returncode, 0, "%s: %s" % (name, e))
                out[name] = o.strip()
            idle_line = procs["idle"].stdout.readline()
            self.assertTrue(idle_line, procs["idle"].stderr.read() if procs["idle"].poll() is not None else "")
            out["idle"] = json.loads(idle_line)
            hostile_s = time.time() - t0
            open(stop, "w").close()
            vo, ve = procs["victim"].communicate(timeout=120)
            self.assertEqual(procs["victim"].returncode, 0, ve)
            res = json.loads(vo)
            procs["idle"].stdin.close()
            procs["idle"].wait(60)

            worst = {k: (len(v), max([c[1] for c in v] or [0])) for k, v in res["ops"].items()}
            print("\nhostile sandbox (%.1f s): %s; victim (calls, slowest s): %s" % (hostile_s, out, worst),
                  file=sys.stderr)
            # The attacks ran and were contained.
            self.assertTrue(out["never_read"].startswith("CUT"), out["never_read"])
            self.assertEqual(out["connect_flood"], "3000")
            self.assertEqual(json.loads(out["huge"]), [200] * 20)
            self.assertEqual(out["idle"]["opened"], IDLE, out["idle"])
            self.assertGreaterEqual(out["idle"]["closed"], IDLE - CAP, out["idle"])
            # The victim was served throughout, within the stated bounds.
            self.assertEqual(res["errors"], [], res)
            bounds = {"inference": VICTIM_INFERENCE_MAX_S, "inference_stream": VICTIM_INFERENCE_MAX_S,
                      "dns_udp": VICTIM_DNS_MAX_S, "dns_tcp": VICTIM_DNS_MAX_S}
            for name, bound in bounds.items():
                calls = res["ops"][name]
                self.assertGreaterEqual(len(calls), 3, (name, res))
                bad = [c for c in calls if not c[0] or c[1] > bound]
                self.assertEqual(bad, [], "%s failed or over %.1f s: %s" % (name, bound, calls))
            self.assertIsNone(agent.proc.poll(), "redird died; see " + agent.log)
            agent.stop()  # SIGTERM: the leak check runs at exit
        finally:
            harness.close_all(*procs.values(), provider, fake)
            agent.cleanup([hostile, victim])
        found = harness.sanitizer_reports(reports)
        self.assertFalse(found, "sanitizer reports:\n" + found)  # the reports themselves, not a truncated diff


if __name__ == "__main__":
    unittest.main(verbosity=2)
