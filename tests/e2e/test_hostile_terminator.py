"""Issue 9 (terminator part): one hostile sandbox against the inference
terminator while another sandbox keeps working.

The hostile sandbox sends 20 requests whose `model` is a 5 MB string (once
measured to grow redird by ~150 MB and audit.log by 100 MB) and then opens
1,000 idle connections. Meanwhile the victim sandbox calls inference in a
loop. Stated bounds: every victim call succeeds within 3 s; redird's RSS
grows by less than 64 MB over the 20 huge requests; the audit log by less
than 512 KiB over the whole test, each record under 4 KiB; the hostile
sandbox holds at most --max-connections-per-sandbox connections, the rest are
closed and counted in --metrics, and refusals are recorded for it only.

Everything runs in this test's own network namespace: the fake provider is a
local TLS server at 203.0.113.100, clients dial the inference VIP directly.
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
from fake_provider import serve_inference  # noqa: E402
from harness import Agent, Cgroup, client_script, write_policy  # noqa: E402

VIP = "198.18.0.1"
PROVIDER_IP = "203.0.113.100"
METRICS = "127.0.0.1:19171"
CAP = 64
HUGE = 5 * 1024 * 1024
VICTIM_MAX_S = 3.0
RSS_GROWTH_MAX = 64 * 1024 * 1024
AUDIT_GROWTH_MAX = 512 * 1024

# One HTTPS request over a fresh connection; prints status and seconds.
CLIENT = client_script(r"""
import json, socket, ssl, sys, time, resource
# Up to 10,000 idle connections: root raises both descriptor limits (up to fs.nr_open).
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(hard, 12000), max(hard, 12000)))
ca, mode = sys.argv[1], sys.argv[2]
ctx = inference_context(ca)
def call(body, conn=None):
    t0 = time.time()
    s = conn or tls_connect(ctx)
    send_chat(s, body)
    status, _ = read_response(s)
    return status, time.time() - t0, s
if mode == "huge":
    body = b'{"model":"' + b"M" * int(sys.argv[3]) + b'","messages":[{"role":"user","content":"hi"}]}'
    conn, out = None, []
    if len(sys.argv) > 5:  # connect first, then say so: later connections of this sandbox may meet its cap
        conn = tls_connect(ctx)
        open(sys.argv[5], "w").close()
    for i in range(int(sys.argv[4])):
        st, dt, conn = call(body, conn)
        out.append(st)
    print(json.dumps(out))
elif mode == "victim":
    stop, out = sys.argv[3], []
    body = b'{"model":"client","messages":[{"role":"user","content":"hi"}]}'
    while not __import__("os").path.exists(stop):
        try:
            st, dt, s = call(body)
            s.close()
        except OSError as e:
            st, dt = str(e), 0.0
        out.append([st, dt])
        time.sleep(0.05)
    print(json.dumps(out))
elif mode == "idle":
    n, held = int(sys.argv[3]), []
    for i in range(n):
        try:
            held.append(socket.create_connection(("198.18.0.1", 443), 10))
        except OSError:
            pass
    # Count the ones the agent closed, until none closed for 3 s (60 s at most:
    # a sanitized agent works through thousands of refusals slowly).
    closed, pending, t0, last = 0, list(held), time.time(), time.time()
    while pending and time.time() - last < 3 and time.time() - t0 < 60:
        time.sleep(0.2)
        still = []
        for s in pending:
            s.setblocking(False)
            try:
                if s.recv(1) != b"":
                    still.append(s)
                    continue
            except BlockingIOError:
                still.append(s)
                continue
            except OSError:
                pass
            closed += 1
        if len(still) < len(pending):
            last = time.time()
        pending = still
    print(json.dumps({"opened": len(held), "closed": closed}), flush=True)
    sys.stdin.read()  # hold the rest until the test is done
""")


def rss(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def metric(text, name, labels=""):
    m = re.search(r"^%s%s (\d+)$" % (re.escape(name), re.escape(labels)), text, re.M)
    return int(m.group(1)) if m else None


class HostileTerminatorE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.require_root(cls)
        harness.enter_netns()
        cls.tmp = harness.scratch_dir("hostile")
        cls.agent = Agent("hostile", ["--metrics", METRICS, "--max-connections-per-sandbox", str(CAP)]).start()
        a = cls.agent
        cls.fake, cls.ca_local = serve_inference(a, cls.tmp, PROVIDER_IP, "fake-h")
        policy = write_policy(cls.tmp, "inference-only", {"inference": {"enabled": True}})
        cls.hostile, cls.victim = Cgroup("hostile"), Cgroup("victim")
        for cg in (cls.hostile, cls.victim):
            a.ctl("attach", "--cgroup", cg.path, "--policy", policy)
        cls.script = os.path.join(cls.tmp, "client.py")
        with open(cls.script, "w") as f:
            f.write(CLIENT)

    @classmethod
    def tearDownClass(cls):
        cls.fake.close()
        cls.agent.cleanup([cls.hostile, cls.victim])

    def cgroup_id(self, cg):
        return os.stat(cg.path).st_ino

    def test_hostile_sandbox_does_not_starve_or_bloat_the_agent(self):
        a = self.agent
        audit0 = os.path.getsize(a.audit_log) if os.path.exists(a.audit_log) else 0
        stop = os.path.join(self.tmp, "stop-victim")
        victim = self.victim.popen([sys.executable, self.script, self.ca_local, "victim", stop],
                                   stdout=subprocess.PIPE, text=True)
        idle = None
        try:
            # Huge models: one request to warm the allocator, then 20 measured.
            r = self.hostile.run([sys.executable, self.script, self.ca_local, "huge", str(HUGE), "1"], timeout=120)
            self.assertEqual(json.loads(r.stdout), [200], r.stderr)
            rss0 = rss(a.proc.pid)
            r = self.hostile.run([sys.executable, self.script, self.ca_local, "huge", str(HUGE), "20"], timeout=300)
            self.assertEqual(json.loads(r.stdout), [200] * 20, r.stderr)
            grown = rss(a.proc.pid) - rss0
            self.assertLess(grown, RSS_GROWTH_MAX, "redird grew by %d KiB over 20 huge requests" % (grown // 1024))

            # 1,000 idle connections: only CAP are kept.
            idle = self.hostile.popen([sys.executable, self.script, self.ca_local, "idle", "1000"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            got = json.loads(idle.stdout.readline())
            self.assertEqual(got["opened"], 1000, got)
            self.assertGreaterEqual(got["closed"], 1000 - CAP, got)
            time.sleep(1)  # the victim keeps calling while the idle ones are held
        finally:
            open(stop, "w").close()
            out, _ = victim.communicate(timeout=60)
            if idle:
                idle.stdin.close()
                idle.wait(30)

        calls = json.loads(out)
        print("measured: RSS +%d KiB over 20 x %d-byte models; idle %s; victim %d calls, slowest %.3f s" %
              (grown // 1024, HUGE, got, len(calls), max([c[1] for c in calls] or [0])), file=sys.stderr)
        self.assertGreater(len(calls), 5, calls)
        bad = [c for c in calls if c[0] != 200 or c[1] > VICTIM_MAX_S]
        self.assertEqual(bad, [], "victim calls failed or took longer than %.1f s" % VICTIM_MAX_S)

        text = urllib.request.urlopen("http://%s/metrics" % METRICS, timeout=5).read().decode()
        refused = metric(text, "redir_terminator_connections_refused_total", '{limit="per_sandbox"}')
        self.assertGreaterEqual(refused, 1000 - CAP, text)
        self.assertGreaterEqual(metric(text, "redir_terminator_log_strings_truncated_total"), 21)

        audit_grown = os.path.getsize(a.audit_log) - audit0
        print("measured: audit.log +%d bytes" % audit_grown, file=sys.stderr)
        self.assertLess(audit_grown, AUDIT_GROWTH_MAX)
        recs = a.audit_records()
        with open(a.audit_log) as f:
            longest = max(len(l) for l in f)
        self.assertLess(longest, 4096)
        hid, vid = self.cgroup_id(self.hostile), self.cgroup_id(self.victim)
        huge = [r for r in recs if r.get("event") == "inference" and r.get("cgroup_id") == hid and "status" in r]
        self.assertGreaterEqual(len(huge), 21)
        for r in huge:
            self.assertIn("(truncated, %d bytes)" % HUGE, r["model_requested"])
        refusals = [r for r in recs if r.get("verdict") == "refused" and r.get("limit") == "connections_per_sandbox"]
        self.assertTrue(refusals)
        self.assertEqual({r["cgroup_id"] for r in refusals}, {hid})
        self.assertLess(len(refusals), 20, "refusal records are throttled per sandbox")
        self.assertNotIn(vid, {r.get("cgroup_id") for r in recs if r.get("verdict") == "refused"})


if __name__ == "__main__":
    unittest.main()
