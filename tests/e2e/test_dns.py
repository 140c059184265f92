"""Issue: DNS responder — inference.local and host-name policy enforced in the
kernel. Real glibc (getent), Python and curl inside sandboxes whose
/etc/resolv.conf names a resolver address; the kernel redirects their port-53
traffic to the agent's per-sandbox responder, which forwards allowed names to
a fake upstream DNS server inside this test's network namespace.
"""
import os
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_dns import A, AAAA, CNAME, FakeDns  # noqa: E402
from harness import Agent, Cgroup, TcpServer, write_policy  # noqa: E402

ZONE = {
    "api.github.com": [(A, "203.0.113.80", 300)],
    "evil.example": [(A, "203.0.113.81", 300)],
    "alias.example": [(CNAME, "target.example", 300)],
    "target.example": [(A, "203.0.113.82", 300)],
    "pkg.pythonhosted.org": [(A, "203.0.113.83", 300)],
    "pythonhosted.org": [(A, "203.0.113.84", 300)],
    "short.example": [(A, "203.0.113.85", 1)],
    "rebind.example": [(A, "10.0.0.5", 300)],
    "pinned.example": [(A, "10.0.0.6", 300)],
    "v6.example": [(AAAA, "2001:db8::80", 300)],
}

POLICY_A = {
    "allow": [
        {"host": "api.github.com", "ports": [80]},
        {"host": "alias.example", "ports": [80]},
        {"host": "*.pythonhosted.org", "ports": [80]},
        {"host": "short.example", "ports": [80]},
        {"host": "rebind.example", "ports": [80]},
        {"host": "pinned.example", "ports": [80], "allowed_ips": ["10.0.0.0/24"]},
        {"host": "v6.example", "ports": [80]},
    ]
}

CONNECT = r"""
import socket, sys, errno
a, p = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((a, p), 3).close(); print("OK")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)))
"""


class DnsE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.enter_netns(extra_addrs=["10.0.0.5/32", "10.0.0.6/32", "2001:db8::80/128"])
        cls.tmp = tempfile.mkdtemp(prefix="redir-e2e-dns-")
        os.chmod(cls.tmp, 0o755)
        cls.fake_dns = FakeDns(harness.FAKE_RESOLVER, ZONE)
        # The sandboxes believe their resolver is some other address entirely.
        cls.resolv = harness.write_resolv_conf(cls.tmp)
        cls.servers = [TcpServer(ip, 80, http=True) for ip in
                       ("203.0.113.80", "203.0.113.81", "203.0.113.82", "203.0.113.83", "203.0.113.84",
                        "203.0.113.85", "10.0.0.5", "10.0.0.6", "2001:db8::1", "2001:db8::80")]
        cls.agent = Agent("dns").start()
        cls.pol_a = write_policy(cls.tmp, "dns-a", POLICY_A)
        cls.pol_b = write_policy(cls.tmp, "dns-b", {"allow": [{"host": "evil.example", "ports": [80]}]})
        cls.cg_a = Cgroup("dns-a")
        cls.cg_b = Cgroup("dns-b")
        cls.agent.ctl("attach", "--cgroup", cls.cg_a.path, "--policy", cls.pol_a)
        cls.agent.ctl("attach", "--cgroup", cls.cg_b.path, "--policy", cls.pol_b)

    @classmethod
    def tearDownClass(cls):
        for s in cls.servers:
            s.close()
        cls.fake_dns.close()
        cls.agent.cleanup([cls.cg_a, cls.cg_b])

    def resolve(self, cg, *names):
        return cg.getaddrinfo(self.resolv, *names)

    def connect(self, cg, addr, port=80):
        return cg.run([sys.executable, "-c", CONNECT, addr, str(port)]).stdout.strip()

    def test_getent_python_and_curl_resolve_and_connect(self):
        r = self.cg_a.run_resolving(["getent", "ahosts", "api.github.com"], self.resolv, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("203.0.113.80", r.stdout)
        self.assertEqual(self.resolve(self.cg_a, "api.github.com"), {"api.github.com": ["203.0.113.80"]})
        r = self.cg_a.run_resolving(["curl", "-sS", "-m", "5", "http://api.github.com/"], self.resolv, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(r.stdout.startswith("203.0.113.80 80"), r.stdout)

    def test_denied_name_nxdomain_and_ip_literal_refused(self):
        r = self.cg_a.run_resolving(["getent", "ahosts", "evil.example"], self.resolv, timeout=30)
        self.assertEqual(r.returncode, 2, r.stdout + r.stderr)  # not found
        out = self.resolve(self.cg_a, "evil.example")
        self.assertTrue(str(out["evil.example"]).startswith("error"), out)
        self.assertEqual(self.connect(self.cg_a, "203.0.113.81"), "EPERM")
        # A name no policy allows is never even forwarded upstream.
        self.resolve(self.cg_a, "never.example")
        self.assertNotIn("never.example", {q[0] for q in self.fake_dns.queries})
        recs = self.agent.wait_audit(lambda r: r.get("event") == "dns" and r.get("name") == "evil.example")
        self.assertTrue(recs)
        self.assertEqual(recs[-1]["verdict"], "denied")
        self.assertIn(recs[-1]["type"], ("A", "AAAA"))
        # The process that asked is named: pid and comm of the sandbox socket's owner.
        self.assertGreater(recs[-1]["pid"], 0, recs[-1])
        self.assertTrue(recs[-1]["comm"].startswith("python") or recs[-1]["comm"] == "getent", recs[-1])

    def test_cname_chain_admits_final_address(self):
        self.assertEqual(self.resolve(self.cg_a, "alias.example"), {"alias.example": ["203.0.113.82"]})
        self.assertEqual(self.connect(self.cg_a, "203.0.113.82"), "OK")

    def test_wildcard_matches_subdomains_not_bare_suffix(self):
        out = self.resolve(self.cg_a, "pkg.pythonhosted.org", "pythonhosted.org")
        self.assertEqual(out["pkg.pythonhosted.org"], ["203.0.113.83"])
        self.assertTrue(str(out["pythonhosted.org"]).startswith("error"), out)
        self.assertEqual(self.connect(self.cg_a, "203.0.113.83"), "OK")
        self.assertEqual(self.connect(self.cg_a, "203.0.113.84"), "EPERM")

    def test_ttl_expiry(self):
        self.assertEqual(self.resolve(self.cg_a, "short.example"), {"short.example": ["203.0.113.85"]})
        admitted_at = time.time()
        self.assertEqual(self.connect(self.cg_a, "203.0.113.85"), "OK")
        # TTL 1 s, raised to the 5 s floor: refused again soon after 5 s, not before.
        expired = harness.wait_until(lambda: self.connect(self.cg_a, "203.0.113.85") == "EPERM", timeout=12,
                                     interval=0.25)
        self.assertTrue(expired, "the admission outlived its TTL")
        self.assertGreaterEqual(time.time() - admitted_at, 4.5, "the admission expired before the 5 s floor")
        self.resolve(self.cg_a, "short.example")
        self.assertEqual(self.connect(self.cg_a, "203.0.113.85"), "OK")

    def test_rebinding_defence_and_allowed_ips(self):
        self.resolve(self.cg_a, "rebind.example", "pinned.example")
        self.assertEqual(self.connect(self.cg_a, "10.0.0.5"), "EPERM")
        self.assertEqual(self.connect(self.cg_a, "10.0.0.6"), "OK")

    def test_ipv6_answer_admitted(self):
        # AAAA for an allowed name is admitted like A: refused before the
        # answer, connectable after it.
        self.assertEqual(self.connect(self.cg_a, "2001:db8::80"), "EPERM")
        out = self.resolve(self.cg_a, "v6.example")
        self.assertEqual(out["v6.example"], ["2001:db8::80"])
        self.assertEqual(self.connect(self.cg_a, "2001:db8::80"), "OK")

    def test_two_sandboxes_each_get_only_their_own_admission(self):
        self.resolve(self.cg_a, "api.github.com")
        self.assertEqual(self.connect(self.cg_a, "203.0.113.80"), "OK")
        # B's policy does not allow the name: NXDOMAIN, and A's admission does not leak.
        self.assertTrue(str(self.resolve(self.cg_b, "api.github.com")["api.github.com"]).startswith("error"))
        self.assertEqual(self.connect(self.cg_b, "203.0.113.80"), "EPERM")
        # B's own name works for B, not for A (A never resolved it and may not).
        self.assertEqual(self.resolve(self.cg_b, "evil.example"), {"evil.example": ["203.0.113.81"]})
        self.assertEqual(self.connect(self.cg_b, "203.0.113.81"), "OK")
        self.assertEqual(self.connect(self.cg_a, "203.0.113.81"), "EPERM")

    def test_inference_local_resolves_to_vip(self):
        r = self.cg_a.run_resolving(["getent", "ahosts", "inference.local"], self.resolv, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("198.18.0.1", r.stdout)

    def test_tcp_dns(self):
        r = self.cg_a.run_resolving(["dig", "+tcp", "+short", "+time=3", "+tries=1", "api.github.com"], self.resolv,
                                    timeout=30)
        self.assertEqual(r.stdout.strip(), "203.0.113.80", r.stderr)

    def test_reload_removing_host_rule_removes_admission(self):
        cg = Cgroup("dns-reload")
        pol = write_policy(self.tmp, "dns-reload", {"allow": [{"host": "api.github.com", "ports": [80]},
                                                              {"host": "alias.example", "ports": [80]}]})
        try:
            self.agent.ctl("attach", "--cgroup", cg.path, "--policy", pol)
            self.resolve(cg, "api.github.com", "alias.example")
            self.assertEqual(self.connect(cg, "203.0.113.80"), "OK")
            self.assertEqual(self.connect(cg, "203.0.113.82"), "OK")
            pol2 = write_policy(self.tmp, "dns-reload", {"allow": [{"host": "alias.example", "ports": [80]}]})
            self.agent.ctl("policy", "load", pol2)
            self.assertEqual(self.connect(cg, "203.0.113.80"), "EPERM")
            # The rule that stayed keeps its admission across the reload.
            self.assertEqual(self.connect(cg, "203.0.113.82"), "OK")
        finally:
            self.agent.ctl("detach", "--cgroup", cg.path)
            cg.remove()

    def test_inference_disabled_gives_nxdomain(self):
        cg = Cgroup("dns-noinf")
        pol = write_policy(self.tmp, "dns-noinf", {"inference": {"enabled": False}})
        try:
            self.agent.ctl("attach", "--cgroup", cg.path, "--policy", pol)
            r = cg.run_resolving(["getent", "ahosts", "inference.local"], self.resolv, timeout=30)
            self.assertEqual(r.returncode, 2, r.stdout)
            self.assertEqual(self.connect(cg, "198.18.0.1", 443), "EPERM")
        finally:
            self.agent.ctl("detach", "--cgroup", cg.path)
            cg.remove()

    def test_unconnected_udp_reply_appears_to_come_from_the_resolver_asked(self):
        code = r'''
import socket, struct, sys
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x03api\x06github\x03com\x00" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, ("192.0.2.77", 53))
data, src = s.recvfrom(4096)
print(src[0], src[1], struct.unpack("!H", data[:2])[0] == 0x4242, data[3] & 15)
'''
        r = self.cg_a.run([sys.executable, "-c", code])
        self.assertEqual(r.stdout.split(), ["192.0.2.77", "53", "True", "0"], r.stderr)

    def test_ipv6_resolver_address(self):
        resolv6 = harness.write_resolv_conf(self.tmp, "2001:db8::53", "resolv6.conf")
        self.assertEqual(self.cg_a.getaddrinfo(resolv6, "api.github.com"), {"api.github.com": ["203.0.113.80"]})

    def test_other_udp_denied(self):
        code = ("import socket,errno\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                "try:\n    s.sendto(b'x',('203.0.113.80',443)); print('OK')\n"
                "except OSError as e: print(errno.errorcode[e.errno])\n")
        self.assertEqual(self.cg_a.run([sys.executable, "-c", code]).stdout.strip(), "EPERM")


if __name__ == "__main__":
    unittest.main(verbosity=2)
