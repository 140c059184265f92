"""Issue: kernel datapath, node agent and `redirctl attach` end to end.

Real redird, real BPF programs, real clients, inside a private network
namespace created by this process (see harness.enter_netns).
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Agent, Cgroup, TcpServer, connect_errno, write_policy  # noqa: E402

POLICY = {
    "allow": [
        {"cidr": "203.0.113.0/24", "ports": [80, "8000-8100"]},
        {"cidr": "2001:db8::/64", "ports": [443]},
    ],
    "deny": [{"cidr": "203.0.113.66/32"}],
    "inspect": [{"cidr": "198.51.100.0/24", "ports": ["10000-10999"]}],
}

# 200 concurrent connections through the relay; each server answers with the
# local address it was reached on, which must be what the client dialled.
CONCURRENT_CLIENT = r"""
import asyncio, sys
targets = [(l.split()[0], int(l.split()[1])) for l in sys.stdin.read().split("\n") if l.strip()]
async def one(a, p):
    r, w = await asyncio.open_connection(a, p)
    peer = w.get_extra_info("peername")
    line = (await r.readline()).decode().split()
    w.close()
    ok = line[0] == a and int(line[1]) == p and peer[0] == a and peer[1] == p
    return ok, a, p, line, peer
async def main():
    res = await asyncio.gather(*(one(a, p) for a, p in targets))
    bad = [r for r in res if not r[0]]
    print("OK %d BAD %d %s" % (len(res) - len(bad), len(bad), bad[:3]))
asyncio.run(main())
"""


class DatapathAgentTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.enter_netns()
        cls.tmp = tempfile.mkdtemp(prefix="redir-e2e-pol-")
        cls.policy_file = write_policy(cls.tmp, "e2e-basic", POLICY)
        cls.agent = Agent("dp", ["--metrics", "127.0.0.1:19100"]).start()
        cls.cg = Cgroup("dp")
        cls.agent.ctl("attach", "--cgroup", cls.cg.path, "--policy", cls.policy_file)
        cls.servers = [TcpServer("203.0.113.5", 80), TcpServer("203.0.113.5", 8100), TcpServer("203.0.113.5", 8101),
                       TcpServer("203.0.113.66", 80), TcpServer("2001:db8::1", 443), TcpServer("2001:db8::1", 444)]

    @classmethod
    def tearDownClass(cls):
        for s in cls.servers:
            s.close()
        cls.agent.cleanup([cls.cg])

    def test_allow_and_range_edges(self):
        self.assertEqual(connect_errno(self.cg, "203.0.113.5", 80), "OK")
        self.assertEqual(connect_errno(self.cg, "203.0.113.5", 8100), "OK")
        self.assertEqual(connect_errno(self.cg, "203.0.113.5", 8101), "EPERM")

    def test_deny_gives_eperm_and_one_audit_event(self):
        before = len(self.agent.audit_records())
        self.assertEqual(connect_errno(self.cg, "203.0.113.66", 80), "EPERM")
        # A second denied connect is the fence: once its record is in, a
        # duplicate of the first would be too (records keep their order).
        self.assertEqual(connect_errno(self.cg, "203.0.113.66", 81), "EPERM")
        self.agent.wait_audit(lambda r: r.get("event") == "connect" and r.get("port") == 81, since=before)
        recs = [r for r in self.agent.audit_records()[before:] if r.get("event") == "connect" and r.get("port") == 80]
        self.assertEqual(len(recs), 1, recs)
        r = recs[0]
        self.assertEqual(r["verdict"], "deny")
        self.assertEqual(r["dst"], "203.0.113.66")
        self.assertEqual(r["port"], 80)
        self.assertEqual(r["protocol"], "tcp")
        self.assertEqual(r["policy"], "e2e-basic")
        self.assertTrue(r["comm"].startswith("python"))
        self.assertGreater(r["pid"], 0)
        # The same record through the control API.
        ev = self.agent.ctl("events", "--json", "-n", "50").stdout.splitlines()
        self.assertTrue(any(json.loads(l).get("dst") == "203.0.113.66" for l in ev))

    def test_ipv6_and_v4_mapped(self):
        self.assertEqual(connect_errno(self.cg, "2001:db8::1", 443), "OK")
        self.assertEqual(connect_errno(self.cg, "2001:db8::1", 444), "EPERM")
        self.assertEqual(connect_errno(self.cg, "::ffff:203.0.113.5", 80), "OK")
        self.assertEqual(connect_errno(self.cg, "::ffff:203.0.113.66", 80), "EPERM")

    def test_nested_child_cgroup_is_governed(self):
        child = Cgroup("child", parent=self.cg)
        try:
            self.assertEqual(connect_errno(child, "203.0.113.66", 80), "EPERM")
            self.assertEqual(connect_errno(child, "203.0.113.5", 80), "OK")
        finally:
            child.remove()

    def test_outside_process_untouched(self):
        r = subprocess.run([sys.executable, "-c",
                            "import socket; s=socket.create_connection(('203.0.113.66',80),5); print('OK')"],
                           capture_output=True, text=True)
        self.assertEqual(r.stdout.strip(), "OK", r.stderr)

    def test_redirect_200_concurrent_original_destinations(self):
        servers = []
        targets = []
        try:
            for i in range(200):
                addr = "198.51.100.%d" % (i % 50 + 10)
                port = 10000 + i
                servers.append(TcpServer(addr, port))
                targets.append("%s %d" % (addr, port))
            p = self.cg.popen([sys.executable, "-c", CONCURRENT_CLIENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = p.communicate("\n".join(targets), timeout=60)
            self.assertTrue(out.startswith("OK 200 BAD 0"), out + err)
            want = set(t.replace(" ", ":") for t in targets)
            relayed = harness.wait_until(lambda: want <= {r["orig_dst"] for r in self.agent.audit_records()
                                                          if r.get("event") == "relay" and r.get("phase") == "open"})
            self.assertTrue(relayed, "not every relayed connection has its audit record")
        finally:
            for s in servers:
                s.close()

    def test_metrics_exposition(self):
        import urllib.request
        connect_errno(self.cg, "203.0.113.66", 80)
        text = urllib.request.urlopen("http://127.0.0.1:19100/metrics", timeout=5).read().decode()
        deny = [l for l in text.splitlines() if l.startswith('redir_verdicts_total{verdict="deny"}')]
        self.assertEqual(len(deny), 1, text)
        self.assertGreater(int(deny[0].split()[-1]), 0)
        self.assertIn("redir_attachments 1", text)

    def test_status_lists_attachment(self):
        st = self.agent.status()
        paths = [a["cgroup"] for a in st["attachments"]]
        self.assertIn(os.path.realpath(self.cg.path), paths)
        a = [a for a in st["attachments"] if a["cgroup"] == os.path.realpath(self.cg.path)][0]
        self.assertGreaterEqual(a["programs"], 10)
        self.assertEqual(a["policy"], "e2e-basic")


class DetachTest(unittest.TestCase):
    def test_after_detach_cgroup_is_untouched(self):
        harness.enter_netns()
        tmp = tempfile.mkdtemp()
        pol = write_policy(tmp, "deny-all", {})
        agent = Agent("detach").start()
        cg = Cgroup("detach")
        srv = TcpServer("203.0.113.7", 80)
        try:
            agent.ctl("attach", "--cgroup", cg.path, "--policy", pol)
            self.assertEqual(connect_errno(cg, "203.0.113.7", 80), "EPERM")
            agent.ctl("detach", "--cgroup", cg.path)
            self.assertEqual(connect_errno(cg, "203.0.113.7", 80), "OK")
            self.assertEqual(agent.status()["attachments"], [])
            self.assertEqual(os.listdir(os.path.join(agent.bpffs, "links")), [])
        finally:
            srv.close()
            agent.cleanup([cg])


class RestartTest(unittest.TestCase):
    def test_kill9_keeps_enforcing_and_restart_adopts(self):
        harness.enter_netns()
        tmp = tempfile.mkdtemp()
        pol = write_policy(tmp, "restart", {"allow": [{"cidr": "203.0.113.8/32", "ports": [80]}]})
        agent = Agent("restart").start()
        cg = Cgroup("restart")
        s1, s2 = TcpServer("203.0.113.8", 80), TcpServer("203.0.113.9", 80)
        try:
            agent.ctl("attach", "--cgroup", cg.path, "--policy", pol)
            before = agent.status()["attachments"]
            agent.kill9()
            # No agent: the pinned links and maps still decide.
            self.assertEqual(connect_errno(cg, "203.0.113.9", 80), "EPERM")
            self.assertEqual(connect_errno(cg, "203.0.113.8", 80), "OK")

            # A sandboxed client keeps connecting while the new agent adopts:
            # not one allowed connect may fail, not one denied may pass.
            loop = cg.popen([sys.executable, "-c", r"""
import socket, time, errno
ok = bad = 0
end = time.time() + 4
while time.time() < end:
    try:
        socket.create_connection(("203.0.113.8", 80), 2).close(); ok += 1
    except OSError: bad += 1
    try:
        socket.create_connection(("203.0.113.9", 80), 2).close(); bad += 1
    except PermissionError: ok += 1
print(ok, bad)
"""], stdout=subprocess.PIPE, text=True)
            time.sleep(0.5)
            agent.start()
            out, _ = loop.communicate(timeout=30)
            ok, bad = map(int, out.split())
            self.assertGreater(ok, 0)
            self.assertEqual(bad, 0)
            after = agent.status()["attachments"]
            self.assertEqual([(a["cgroup"], a["policy"]) for a in before], [(a["cgroup"], a["policy"]) for a in after])
            self.assertEqual(connect_errno(cg, "203.0.113.9", 80), "EPERM")
            self.assertEqual(connect_errno(cg, "203.0.113.8", 80), "OK")
        finally:
            s1.close()
            s2.close()
            agent.cleanup([cg])


class CliErrorTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.enter_netns()
        cls.agent = Agent("cli").start()
        cls.tmp = tempfile.mkdtemp()

    @classmethod
    def tearDownClass(cls):
        cls.agent.cleanup()

    def assertOneSentence(self, r):
        self.assertNotEqual(r.returncode, 0)
        self.assertEqual(r.stdout, "")
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, r.stderr)
        return lines[0]

    def test_missing_cgroup(self):
        pol = write_policy(self.tmp, "p1", {})
        msg = self.assertOneSentence(self.agent.ctl("attach", "--cgroup", "/sys/fs/cgroup/nope-xyz", "--policy", pol,
                                                    check=False))
        self.assertIn("does not exist", msg)
        self.assertEqual(self.agent.status()["attachments"], [])

    def test_cgroup_v1_path(self):
        v1 = harness.cgroup_v1_dir()
        if not v1:
            self.skipTest("no cgroup v1 hierarchy on this host")
        pol = write_policy(self.tmp, "p2", {})
        msg = self.assertOneSentence(self.agent.ctl("attach", "--cgroup", v1, "--policy", pol, check=False))
        self.assertIn("not a cgroup v2", msg)
        self.assertEqual(self.agent.status()["attachments"], [])

    def test_missing_agent(self):
        r = subprocess.run([harness.REDIRCTL, "--socket", "/nonexistent/redird.sock", "status"], capture_output=True,
                           text=True)
        msg = self.assertOneSentence(r)
        self.assertIn("cannot reach redird", msg)

    def test_unreadable_policy(self):
        cg = Cgroup("cli")
        try:
            msg = self.assertOneSentence(self.agent.ctl("attach", "--cgroup", cg.path, "--policy",
                                                        "/nonexistent/policy.json", check=False))
            self.assertIn("policy.json", msg)
            self.assertEqual(self.agent.status()["attachments"], [])
            self.assertEqual(os.listdir(os.path.join(self.agent.bpffs, "links")), [])
        finally:
            cg.remove()

    def test_malformed_policy_attaches_nothing(self):
        cg = Cgroup("cli2")
        bad = os.path.join(self.tmp, "bad.json")
        with open(bad, "w") as f:
            f.write('{"version": 1, "name": "bad", "allow": [{"cidr": "203.0.113.0/33"}]}')
        try:
            r = self.agent.ctl("attach", "--cgroup", cg.path, "--policy", bad, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("bad.json:1:", r.stderr)
            self.assertEqual(self.agent.status()["attachments"], [])
        finally:
            cg.remove()

    def test_agent_own_cgroup_refused(self):
        pol = write_policy(self.tmp, "p3", {})
        msg = self.assertOneSentence(self.agent.ctl("attach", "--cgroup", harness.cgroup2_mount(), "--policy", pol,
                                                    check=False))
        self.assertIn("redird itself runs in it", msg)
        self.assertEqual(self.agent.status()["attachments"], [])

    def test_help(self):
        r = subprocess.run([harness.REDIRCTL, "--help"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        for word in ("attach", "detach", "status", "doctor", "policy"):
            self.assertIn(word, r.stdout)
        r = subprocess.run([harness.REDIRD, "--help"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0)
        self.assertIn("--bpffs", r.stdout)

    def test_doctor(self):
        r = subprocess.run([harness.REDIRCTL, "doctor"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        r = subprocess.run([harness.REDIRCTL, "doctor", "--json"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        checks = {c["name"]: c for c in map(json.loads, r.stdout.splitlines())}
        # What doctor says matches this machine, and every required check holds.
        self.assertIn(os.uname().release, checks["kernel"]["detail"])
        self.assertIn(harness.cgroup2_mount(), checks["cgroup2"]["detail"])
        for name, c in checks.items():
            if c["required"]:
                self.assertTrue(c["ok"], "%s: %s" % (name, c["detail"]))
        # ...and a broken requirement is reported: not root, doctor fails naming the check.
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", harness.REDIRCTL,
                            "doctor", "--json"], capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        checks = {c["name"]: c for c in map(json.loads, r.stdout.splitlines())}
        self.assertFalse(checks["root"]["ok"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
