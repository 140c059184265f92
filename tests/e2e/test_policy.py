"""Issue: policy language, compiler and atomic `redirctl policy load`, end to end."""
import contextlib
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

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "policy", "examples")

# Connects to X without pause and to Y in between; prints counts.
TRAFFIC = r"""
import socket, sys, time
x, y, stop = ("203.0.113.20", 80), ("203.0.113.21", 80), sys.argv[1]
x_ok = x_fail = y_ok = y_fail = 0
import os
while not os.path.exists(stop):
    try:
        socket.create_connection(x, 2).close(); x_ok += 1
    except OSError as e:
        x_fail += 1
    try:
        socket.create_connection(y, 2).close(); y_ok += 1
    except (PermissionError, ConnectionAbortedError, ConnectionResetError):
        y_fail += 1  # refused, or revoked by a reload that came while it was open
print(x_ok, x_fail, y_ok, y_fail)
"""


class PolicyE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.enter_netns(extra_addrs=["10.0.0.1/32"])
        cls.tmp = tempfile.mkdtemp(prefix="redir-e2e-policy-")
        cls.agent = Agent("policy").start()
        cls.cgs = []

    @classmethod
    def tearDownClass(cls):
        cls.agent.cleanup(cls.cgs)

    def cgroup(self, tag):
        cg = Cgroup(tag)
        self.cgs.append(cg)
        return cg

    @contextlib.contextmanager
    def attached(self, cg, policy, *servers):
        """CG attached with POLICY for the block; then SERVERS closed and CG detached."""
        try:
            self.agent.ctl("attach", "--cgroup", cg.path, "--policy", policy)
            yield
        finally:
            harness.close_all(*servers)
            self.agent.ctl("detach", "--cgroup", cg.path)

    def test_reload_under_traffic_1000_swaps(self):
        a = write_policy(self.tmp, "swap", {"allow": [{"cidr": "203.0.113.20/32", "ports": [80]}]})
        b_dir = os.path.join(self.tmp, "b")
        os.mkdir(b_dir)
        b = write_policy(b_dir, "swap", {"allow": [{"cidr": "203.0.113.20/32", "ports": [80]},
                                                   {"cidr": "203.0.113.21/32", "ports": [80]}]})
        cg = self.cgroup("swap")
        servers = [TcpServer("203.0.113.20", 80), TcpServer("203.0.113.21", 80)]
        stop = os.path.join(self.tmp, "stop")
        with self.attached(cg, a, *servers):
            client = cg.popen([sys.executable, "-c", TRAFFIC, stop], stdout=subprocess.PIPE, text=True)
            for i in range(1000):
                self.agent.ctl("policy", "load", b if i % 2 == 0 else a)
            # Last load was A: Y must be refused from now on.
            time.sleep(0.2)
            open(stop, "w").close()
            out, _ = client.communicate(timeout=60)
            x_ok, x_fail, y_ok, y_fail = map(int, out.split())
            self.assertEqual(x_fail, 0, out)
            self.assertGreater(x_ok, 100, out)
            self.assertGreater(y_ok, 0, "Y never admitted while B was loaded: " + out)
            self.assertGreater(y_fail, 0, out)
            self.assertEqual(connect_errno(cg, "203.0.113.21", 80), "EPERM")
            self.assertEqual(connect_errno(cg, "203.0.113.20", 80), "OK")
            # Old policy ids are freed: only one id remains for "swap".
            lst = json.loads(self.agent.ctl("policy", "list", "--json").stdout)
            self.assertEqual([p["name"] for p in lst].count("swap"), 1)

    def test_semantics_in_the_kernel(self):
        pol = write_policy(self.tmp, "sem", {
            "allow": [
                {"cidr": "203.0.113.0/24", "ports": ["8000-8100"]},
                {"cidr": "0.0.0.0/0", "ports": [9999]},
                {"cidr": "2001:db8::/32", "ports": [443]},
            ],
            "deny": [{"cidr": "203.0.113.66/32"}],
        })
        cg = self.cgroup("sem")
        ports = [7999, 8000, 8100, 8101]
        servers = [TcpServer("203.0.113.5", p) for p in ports] + [TcpServer("203.0.113.66", 8050),
                                                                  TcpServer("2001:db8::1", 443),
                                                                  TcpServer("10.0.0.1", 9999)]
        with self.attached(cg, pol, *servers):
            # Range edges: lo-1, lo, hi, hi+1.
            self.assertEqual([connect_errno(cg, "203.0.113.5", p) for p in ports], ["EPERM", "OK", "OK", "EPERM"])
            # Deny wins over the overlapping allow.
            self.assertEqual(connect_errno(cg, "203.0.113.66", 8050), "EPERM")
            self.assertEqual(connect_errno(cg, "::ffff:203.0.113.66", 8050), "EPERM")
            self.assertEqual(connect_errno(cg, "::ffff:203.0.113.5", 8000), "OK")
            self.assertEqual(connect_errno(cg, "2001:db8::1", 443), "OK")
            # 0.0.0.0/0 does not name the private range: 10.0.0.1 stays denied.
            self.assertEqual(connect_errno(cg, "10.0.0.1", 9999), "EPERM")
            # Link-local is never reachable, even under 0.0.0.0/0.
            self.assertEqual(connect_errno(cg, "169.254.169.254", 9999), "EPERM")
            # Shared namespace: loopback only when named.
            self.assertEqual(connect_errno(cg, "127.0.0.1", 9999), "EPERM")

    def test_naming_special_ranges(self):
        pol = write_policy(self.tmp, "named", {
            "allow": [{"cidr": "10.0.0.0/8", "ports": [9998]}, {"cidr": "127.0.0.1/32", "ports": [9997]}]})
        cg = self.cgroup("named")
        servers = [TcpServer("10.0.0.1", 9998), TcpServer("127.0.0.1", 9997)]
        with self.attached(cg, pol, *servers):
            self.assertEqual(connect_errno(cg, "10.0.0.1", 9998), "OK")
            self.assertEqual(connect_errno(cg, "127.0.0.1", 9997), "OK")
            self.assertEqual(connect_errno(cg, "127.0.0.1", 9996), "EPERM")

    def test_link_local_rule_rejected(self):
        pol = write_policy(self.tmp, "ll", {"allow": [{"cidr": "169.254.169.254/32"}]})
        r = self.agent.ctl("policy", "validate", pol, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ll.json:", r.stderr)
        self.assertIn("link-local", r.stderr)

    def test_own_network_namespace_reaches_its_own_loopback(self):
        pol = write_policy(self.tmp, "ownns", {})
        cg = self.cgroup("ownns")
        with self.attached(cg, pol):
            code = ("import socket,subprocess\n"
                    "subprocess.run(['ip','link','set','lo','up'],check=True)\n"
                    "s=socket.socket(); s.bind(('127.0.0.1',7000)); s.listen()\n"
                    "c=socket.create_connection(('127.0.0.1',7000),2); print('OK')\n")
            r = cg.run(["unshare", "--net", sys.executable, "-c", code])
            self.assertEqual(r.stdout.strip(), "OK", r.stderr)
            # The same program in the agent's namespace is refused.
            code2 = ("import socket\n"
                     "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); p=s.getsockname()[1]\n"
                     "try:\n    socket.create_connection(('127.0.0.1',p),2); print('OK')\n"
                     "except PermissionError: print('EPERM')\n")
            r = cg.run([sys.executable, "-c", code2])
            self.assertEqual(r.stdout.strip(), "EPERM", r.stderr)

    def test_malformed_load_keeps_policy_in_force(self):
        good = write_policy(self.tmp, "keep", {"allow": [{"cidr": "203.0.113.30/32", "ports": [80]}]})
        cg = self.cgroup("keep")
        srv = TcpServer("203.0.113.30", 80)
        bad = os.path.join(self.tmp, "keep-bad.json")
        with open(bad, "w") as f:
            f.write('{\n  "version": 1,\n  "name": "keep",\n  "allow": [\n    {"cidr": "203.0.113.30/32", '
                    '"ports": [70000]}\n  ]\n}\n')
        with self.attached(cg, good, srv):
            r = self.agent.ctl("policy", "load", bad, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertRegex(r.stderr, r"keep-bad\.json:5:\d+: allow\[0\]\.ports\[0\]: port 70000 is out of range")
            self.assertEqual(connect_errno(cg, "203.0.113.30", 80), "OK")
            shown = self.agent.ctl("policy", "show", "keep").stdout
            self.assertIn("203.0.113.30/32", shown)
            self.assertNotIn("70000", shown)

    def test_show_list_delete(self):
        pol = write_policy(self.tmp, "sld", {"allow": [{"cidr": "203.0.113.40/32", "ports": [80, 81]},
                                                       {"host": "api.github.com", "ports": [443]}]})
        cg = self.cgroup("sld")
        self.agent.ctl("attach", "--cgroup", cg.path, "--policy", pol)
        shown = json.loads(self.agent.ctl("policy", "show", "sld").stdout)
        self.assertEqual(shown["name"], "sld")
        names = [p["name"] for p in json.loads(self.agent.ctl("policy", "list", "--json").stdout)]
        self.assertIn("sld", names)
        # Host rules are stored and listed; the sandbox's DNS responder enforces them.
        st = self.agent.status()
        att = [a for a in st["attachments"] if a["policy"] == "sld"][0]
        self.assertIn("api.github.com", att["host_rules"])
        self.assertGreater(att["dns_port"], 0)
        r = self.agent.ctl("policy", "delete", "sld", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("attached", r.stderr)
        self.agent.ctl("detach", "--cgroup", cg.path)
        self.agent.ctl("policy", "delete", "sld")
        names = [p["name"] for p in json.loads(self.agent.ctl("policy", "list", "--json").stdout)]
        self.assertNotIn("sld", names)

    def test_policies_persist_across_restart(self):
        pol = write_policy(self.tmp, "persist", {"allow": [{"cidr": "203.0.113.50/32", "ports": [80]}]})
        cg = self.cgroup("persist")
        srv = TcpServer("203.0.113.50", 80)
        with self.attached(cg, pol, srv):
            self.agent.stop()
            self.agent.start()
            self.assertEqual(connect_errno(cg, "203.0.113.50", 80), "OK")
            self.assertEqual(connect_errno(cg, "203.0.113.51", 80), "EPERM")
            self.assertIn("persist", self.agent.ctl("policy", "list").stdout)
            mode = os.stat(os.path.join(self.agent.state, "policies", "persist.json")).st_mode & 0o777
            self.assertEqual(mode, 0o600)

    def test_examples_validate(self):
        files = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".json"))
        self.assertGreaterEqual(len(files), 3)
        for f in files:
            r = self.agent.ctl("policy", "validate", os.path.join(EXAMPLES, f), check=False)
            self.assertEqual(r.returncode, 0, f + ": " + r.stderr)


if __name__ == "__main__":
    unittest.main(verbosity=2)
