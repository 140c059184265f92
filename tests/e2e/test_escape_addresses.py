"""Escape corpus, addresses: a denied destination spelled another way (IPv6
literal, v4-mapped, v4-compatible, NAT64, 6to4, 0.0.0.0, loopback), every
metadata address of INTERFACE.md under a policy that allows everything else,
the agent's own listeners, and the inference VIP on ports other than 443/80.
Each denied address carries a real TCP+UDP listener that must see nothing."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from escape_support import EscapeCase  # noqa: E402

# 203.0.113.66 (denied by a deny entry) and 203.0.113.150 (allowed) embedded in v6.
NAT64_DENIED, NAT64_ALLOWED = "64:ff9b::cb00:7142", "64:ff9b::cb00:7196"
SIXTOFOUR_DENIED, SIXTOFOUR_ALLOWED = "2002:cb00:7142::1", "2002:cb00:7196::1"
V4COMPAT_DENIED = "::cb00:7142"


class EscapeAddressForms(EscapeCase):
    """Policy: 203.0.113.0/24 and 2001:db8:a::/48 (any protocol), 203.0.113.66 denied."""

    TAG = "esc-addr"
    LO_ADDRS = ("203.0.113.66", "203.0.113.150", "198.51.100.66", "2001:db8:66::1", "2001:db8:a::1",
                NAT64_DENIED, NAT64_ALLOWED, SIXTOFOUR_DENIED, SIXTOFOUR_ALLOWED, V4COMPAT_DENIED)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cg = cls.attached("forms", {
            "allow": [{"cidr": "203.0.113.0/24", "protocol": "any"}, {"cidr": "2001:db8:a::/48", "protocol": "any"}],
            "deny": [{"cidr": "203.0.113.66/32", "protocol": "any"}]})
        cls.w = {a: cls.witness(a) for a in cls.LO_ADDRS}
        cls.lo4 = cls.witness("127.0.0.1")
        cls.lo6 = cls.witness("::1")

    def test_control_allowed_address_is_reached(self):
        """Not an attempt: proves the witnesses and the probe can see a way through."""
        w = self.w["203.0.113.150"]
        self.assertEqual(self.probe_in(self.cg, "tcp", w.addr, w.port)["connect"], "OK")
        self.assertEqual([e[0] for e in w.intrusions()], ["tcp"])
        self.assertEqual(self.probe_in(self.cg, "tcp", "2001:db8:a::1", self.w["2001:db8:a::1"].port)["connect"], "OK")
        self.w["2001:db8:a::1"].intrusions()

    def test_ipv6_literal_outside_the_policy(self):
        self.blocked("2001:db8:66::1", self.w["2001:db8:66::1"])

    def test_v4_mapped_form_of_a_denied_address(self):
        self.blocked("::ffff:203.0.113.66", self.w["203.0.113.66"], tcp6=True)

    def test_v4_mapped_form_of_an_unlisted_address(self):
        self.blocked("::ffff:198.51.100.66", self.w["198.51.100.66"], tcp6=True)

    def test_nat64_form_of_a_denied_address(self):
        self.blocked(NAT64_DENIED, self.w[NAT64_DENIED])

    def test_nat64_form_of_an_allowed_address(self):
        """64:ff9b::/96 is special: reachable only through a rule that names it."""
        self.blocked(NAT64_ALLOWED, self.w[NAT64_ALLOWED])

    def test_6to4_form_of_a_denied_address(self):
        self.blocked(SIXTOFOUR_DENIED, self.w[SIXTOFOUR_DENIED])

    def test_6to4_form_of_an_allowed_address(self):
        self.blocked(SIXTOFOUR_ALLOWED, self.w[SIXTOFOUR_ALLOWED])

    def test_v4_compatible_form_of_a_denied_address(self):
        self.blocked(V4COMPAT_DENIED, self.w[V4COMPAT_DENIED])

    def test_unspecified_address_means_this_host(self):
        """connect(0.0.0.0) / connect(::) reach the host's own listeners."""
        self.blocked("0.0.0.0", self.lo4)
        self.blocked("::", self.lo6)

    def test_node_loopback_from_a_sandbox_sharing_the_agents_namespace(self):
        self.blocked("127.0.0.1", self.lo4)
        self.blocked("::1", self.lo6)
        self.blocked("::ffff:127.0.0.1", self.lo4, tcp6=True)


METADATA_V4 = ("169.254.169.254", "169.254.170.2", "100.100.100.200")
METADATA_V6 = ("fd00:ec2::254", "64:ff9b::a9fe:a9fe", "2002:a9fe:a9fe::1", "fe80::a9fe:a9fe")


class EscapeMetadata(EscapeCase):
    """Every metadata address of INTERFACE.md, under a policy that allows the
    whole address space and names the ranges around them."""

    TAG = "esc-meta"
    LO_ADDRS = METADATA_V4 + METADATA_V6 + ("203.0.113.151",)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cg = cls.attached("wide", {"allow": [
            {"cidr": "0.0.0.0/0", "protocol": "any"}, {"cidr": "::/0", "protocol": "any"},
            {"cidr": "100.64.0.0/10", "protocol": "any"}, {"cidr": "fd00::/8", "protocol": "any"},
            {"cidr": "64:ff9b::/96", "protocol": "any"}, {"cidr": "2002::/16", "protocol": "any"},
            {"cidr": "fe80::/9", "protocol": "any"}]})
        cls.w = {a: cls.witness(a if not a.startswith("fe80") else a + "%lo") for a in cls.LO_ADDRS}

    def test_control_the_wide_policy_reaches_a_public_address(self):
        w = self.w["203.0.113.151"]
        self.assertEqual(self.probe_in(self.cg, "tcp", w.addr, w.port)["connect"], "OK")
        self.assertEqual([e[0] for e in w.intrusions()], ["tcp"])

    def test_aws_gcp_azure_imds_v4(self):
        self.blocked("169.254.169.254", self.w["169.254.169.254"])

    def test_ecs_task_metadata(self):
        self.blocked("169.254.170.2", self.w["169.254.170.2"])

    def test_aws_imds_v6(self):
        self.blocked("fd00:ec2::254", self.w["fd00:ec2::254"])

    def test_alibaba_metadata(self):
        self.blocked("100.100.100.200", self.w["100.100.100.200"])

    def test_alibaba_metadata_v4_mapped(self):
        self.blocked("::ffff:100.100.100.200", self.w["100.100.100.200"], tcp6=True)

    def test_imds_v4_mapped(self):
        self.blocked("::ffff:169.254.169.254", self.w["169.254.169.254"], tcp6=True)

    def test_imds_inside_nat64(self):
        self.blocked("64:ff9b::a9fe:a9fe", self.w["64:ff9b::a9fe:a9fe"])

    def test_imds_inside_6to4(self):
        self.blocked("2002:a9fe:a9fe::1", self.w["2002:a9fe:a9fe::1"])

    def test_ipv6_link_local(self):
        w = self.w["fe80::a9fe:a9fe"]
        self.blocked("fe80::a9fe:a9fe%lo", w)


class EscapeAgentPorts(EscapeCase):
    """The agent's own listeners and the inference VIP on other ports, from a
    sandbox that shares the agent's network namespace (inference only)."""

    TAG = "esc-ports"
    VIP = "198.18.0.1"
    LO_ADDRS = (VIP,)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.cg = cls.attached("inference-only", {"inference": {"enabled": True}})
        cls.vip_other = cls.witness(cls.VIP)
        cls.vip_quic = cls.witness(cls.VIP, 443, tcp=False)
        cls.vip_https = cls.witness(cls.VIP, 443, udp=False)
        cls.st = cls.agent.status()["agent"]

    def agent_port_blocked(self, port, proto="tcp"):
        for addr in ("127.0.0.1", "::1", "0.0.0.0", "::ffff:127.0.0.1"):
            if proto == "tcp":
                res = self.probe_in(self.cg, "tcp6" if addr.startswith("::ffff") else "tcp", addr, port)
                self.assertEqual(res["connect"], "EPERM", "connect to the agent at %s:%d: %s" % (addr, port, res))
            else:
                res = self.probe_in(self.cg, "udp-sendto", addr, port)
                self.assertEqual(res["sendto"], "EPERM", "sendto the agent at %s:%d: %s" % (addr, port, res))

    def test_terminator_port_directly(self):
        self.agent_port_blocked(self.st["terminator_port"])

    def test_relay_port_directly(self):
        self.agent_port_blocked(self.st["relay_port"])

    def test_plain_http_port_directly(self):
        self.agent_port_blocked(self.st["plain_http_port"])

    def test_dns_responder_port_directly(self):
        ports = [a.get("dns_port") for a in self.agent.status()["attachments"] if a.get("cgroup") == self.cg.path]
        self.assertTrue(ports and ports[0], "status names no DNS port for the sandbox: %s" % self.agent.status())
        self.agent_port_blocked(ports[0], proto="udp")
        self.agent_port_blocked(ports[0], proto="tcp")

    def test_inference_vip_on_other_ports(self):
        res = self.probe_in(self.cg, "tcp", self.VIP, self.vip_other.port)
        self.assertEqual(res["connect"], "EPERM", res)
        res = self.probe_in(self.cg, "udp-sendto", self.VIP, self.vip_other.port)
        self.assertEqual(res["sendto"], "EPERM", res)
        self.assert_untouched(self.vip_other)

    def test_inference_vip_over_quic(self):
        res = self.probe_in(self.cg, "quic", self.VIP, 443)
        self.assertEqual(res["sendto"], "EPERM", res)
        self.assertEqual(res["connect"], "EPERM", res)
        self.assert_untouched(self.vip_quic)

    def test_inference_vip_443_never_reaches_the_vip_itself(self):
        """TCP/443 is redirected to the terminator: the VIP's own listener sees nothing."""
        res = self.probe_in(self.cg, "tcp", self.VIP, 443)
        self.assertEqual(res["connect"], "OK", "the terminator should accept: %s" % res)
        self.assert_untouched(self.vip_https)


if __name__ == "__main__":
    unittest.main(verbosity=2)
