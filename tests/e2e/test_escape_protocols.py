"""Escape corpus, socket kinds: every way of putting bytes on the wire that
might not pass through the connect/sendmsg hooks — unconnected and connected
UDP, sendmmsg, QUIC to a TCP-only destination, TCP Fast Open, MPTCP,
UDP-Lite, io_uring, raw, ping, packet and other non-inet sockets. The
destination is denied (or allowed for TCP only); its listener must see nothing."""
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from escape_support import ESCAPE_PROBE_BIN, EscapeCase, PacketWitness, parse_kv  # noqa: E402

DENIED = "198.51.100.160"
DENIED6 = "2001:db8:66::160"
ALLOWED6 = "2001:db8:a::160"  # allowed for TCP 443 and UDP 4000
TCP_ONLY = "203.0.113.160"     # allowed for TCP 443 only
UDP_PEER = "203.0.113.161"     # allowed for UDP 4000 only
IPPROTO_UDPLITE = 136


class EscapeProtocols(EscapeCase):
    """Host root inside an attached cgroup (the strongest attacker the hooks
    alone must stop); packet sockets are tried under `redirctl run`."""

    TAG = "esc-proto"
    LO_ADDRS = (DENIED, TCP_ONLY, UDP_PEER, DENIED6, ALLOWED6)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # TCP Fast Open for clients and servers in this namespace, so a TFO SYN would carry data.
        with open("/proc/sys/net/ipv4/tcp_fastopen", "w") as f:
            f.write("3")
        cls.cg = cls.attached("tcp443", {"allow": [
            {"cidr": TCP_ONLY + "/32", "ports": [443], "protocol": "tcp"},
            {"cidr": UDP_PEER + "/32", "ports": [4000], "protocol": "udp"},
            {"cidr": ALLOWED6 + "/128", "ports": [443], "protocol": "tcp"},
            {"cidr": ALLOWED6 + "/128", "ports": [4000], "protocol": "udp"}]})
        cls.denied = cls.witness(DENIED)
        cls.denied_lite = cls.witness(DENIED, tcp=False, udp_proto=IPPROTO_UDPLITE)
        cls.quic = cls.witness(TCP_ONLY, 443)
        cls.udp_peer = cls.witness(UDP_PEER, 4000, tcp=False)
        cls.wire = PacketWitness(DENIED)
        cls.wire6 = PacketWitness(DENIED6)
        cls.witnesses += [cls.wire, cls.wire6]
        cls.allowed6 = [cls.witness(ALLOWED6, 443, udp=False), cls.witness(ALLOWED6, 4000, tcp=False)]

    def d(self):
        return [DENIED, self.denied.port]

    def helper(self, *args):
        return self.helper_in(self.cg, *args)

    def test_control_tcp_443_is_allowed_and_seen(self):
        self.assertEqual(self.probe_in(self.cg, "tcp", TCP_ONLY, 443)["connect"], "OK")
        self.assertEqual([e[0] for e in self.quic.intrusions()], ["tcp"])

    def test_udp_unconnected_sendto(self):
        self.assertEqual(self.probe_in(self.cg, "udp-sendto", *self.d())["sendto"], "EPERM")
        self.assert_untouched(self.denied)

    def test_udp_sendmmsg(self):
        res = self.helper("sendmmsg", *self.d())
        self.assertEqual(res["sendmmsg"], "EPERM", res)
        self.assert_untouched(self.denied)

    def test_udp_connected(self):
        res = self.probe_in(self.cg, "udp-connect", *self.d())
        self.assertEqual(res["connect"], "EPERM", res)
        self.assertNotEqual(res["send"], "OK", res)
        self.assert_untouched(self.denied)

    def test_udp_connected_to_an_allowed_peer_then_sendto_another(self):
        res = self.probe_in(self.cg, "udp-switch", UDP_PEER, 4000, *self.d())
        self.assertEqual(res["connect_allowed"], "OK", res)
        self.assertEqual(res["sendto_other"], "EPERM", res)
        self.assertEqual(res["sendto_after_disconnect"], "EPERM", res)
        self.assert_untouched(self.denied)
        self.udp_peer.intrusions()

    def test_udp_v4_mapped_sendto_from_an_ipv6_socket(self):
        res = self.probe_in(self.cg, "udp6-sendto", "::ffff:" + DENIED, self.denied.port)
        self.assertEqual(res["sendto"], "EPERM", res)
        self.assert_untouched(self.denied)

    def test_quic_to_a_tcp_only_destination(self):
        res = self.probe_in(self.cg, "quic", TCP_ONLY, 443)
        self.assertEqual(res["sendto"], "EPERM", res)
        self.assertEqual(res["connect"], "EPERM", res)
        self.assert_untouched(self.quic)

    def test_tcp_fast_open_sendto(self):
        res = self.probe_in(self.cg, "tfo", *self.d())
        self.assertEqual(res["sendto_fastopen"], "EPERM", res)
        self.assertEqual(res["connect"], "EPERM", res)
        self.assert_untouched(self.denied)

    def test_mptcp(self):
        res = self.probe_in(self.cg, "mptcp", *self.d())
        if res["socket"] in ("EPROTONOSUPPORT", "ENOPROTOOPT"):
            self.skipTest("this kernel has no MPTCP (%s)" % res["socket"])
        self.assertIn(res["socket"], ("OK", "EPERM"), res)
        if res["socket"] == "OK":  # governed, not refused: then the connect must be denied
            self.assertEqual(res["connect"], "EPERM", res)
        self.assert_untouched(self.denied)

    def test_udp_lite(self):
        res = self.probe_in(self.cg, "udplite", *self.d())
        if res["socket"] in ("EPROTONOSUPPORT", "ESOCKTNOSUPPORT"):
            self.skipTest("this kernel has no UDP-Lite (%s)" % res["socket"])
        if res["socket"] == "OK":  # governed, not refused: every way of sending must be denied
            self.assertEqual((res["sendto"], res["connect"], res["send"]), ("EPERM", "EPERM", "EDESTADDRREQ"), res)
        else:
            self.assertEqual(res["socket"], "EPERM", res)
        self.assert_untouched(self.denied_lite)

    def test_io_uring_connect(self):
        res = self.helper("uring-connect", *self.d())
        if res.get("uring_setup"):
            self.skipTest("io_uring unavailable here (%s)" % res["uring_setup"])
        self.assertEqual(res["connect"], "EPERM", res)
        self.assert_untouched(self.denied)

    def test_io_uring_socket_then_connect(self):
        res = self.helper("uring-socket-connect", *self.d())
        if res.get("uring_setup"):
            self.skipTest("io_uring unavailable here (%s)" % res["uring_setup"])
        if res.get("socket") == "EINVAL":
            self.skipTest("this kernel has no IORING_OP_SOCKET")
        self.assertEqual(res["connect"], "EPERM", res)
        self.assert_untouched(self.denied)

    def test_io_uring_sendmsg(self):
        res = self.helper("uring-sendmsg", *self.d())
        if res.get("uring_setup"):
            self.skipTest("io_uring unavailable here (%s)" % res["uring_setup"])
        self.assertEqual(res["sendmsg"], "EPERM", res)
        self.assert_untouched(self.denied)

    def test_raw_sockets_even_for_root(self):
        res = self.probe_in(self.cg, "raw", *self.d())
        for k in ("raw4_udp", "raw4_tcp", "raw4_icmp", "raw6_udp", "raw4_ipip"):
            self.assertEqual(res[k], "EPERM", res)
        self.assert_untouched(self.denied)

    def test_ping_socket(self):
        with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
            f.write("0 2147483647")  # ping sockets open to every group in this namespace
        res = self.probe_in(self.cg, "ping", DENIED)
        self.assertEqual(res["socket"], "EPERM", res)

    def test_sctp_dccp_l2tp_refused_or_absent(self):
        """Other IP protocols the kernel may autoload: never a way around the hooks."""
        tried = {}
        for name, fam, typ, proto in (("sctp", 2, 1, 132), ("sctp-seqpacket", 2, 5, 132), ("dccp", 2, 6, 33),
                                      ("l2tp-ip", 2, 2, 115), ("sctp6", 10, 1, 132), ("l2tp-ip6", 10, 2, 115)):
            tried[name] = self.probe_in(self.cg, "socket", fam, typ, proto)["socket"]
        absent = ("EPROTONOSUPPORT", "ESOCKTNOSUPPORT", "EAFNOSUPPORT", "EINVAL")
        self.assertFalse({k: v for k, v in tried.items() if v == "OK"}, "created inside a sandbox: %s" % tried)
        if all(v in absent for v in tried.values()):
            self.skipTest("none of SCTP, DCCP, L2TP/IP exists on this kernel: %s" % tried)

    def test_loose_source_route_through_a_denied_first_hop(self):
        """IP_OPTIONS LSRR: connect()/sendto() name an allowed destination, the
        packet's IP header names DENIED. Host root holds CAP_NET_RAW, which the
        kernel requires for source routes."""
        for proto, addr, port in (("udp", UDP_PEER, 4000), ("tcp", TCP_ONLY, 443), ("tcp", "198.18.0.1", 443)):
            res = self.probe_in(self.cg, "lsrr", DENIED, addr, port, proto)
            got = self.wire.intrusions()
            self.assertEqual(len(got), 0, "%s to %s:%d left addressed to %s (%s)" % (proto, addr, port, DENIED, res))
        self.udp_peer.intrusions()
        self.quic.intrusions()

    def test_loose_source_route_under_run(self):
        for user in (None, "root"):
            for proto, addr, port in (("udp", UDP_PEER, 4000), ("tcp", "198.18.0.1", 443)):
                res = self.probe_run("lsrr", DENIED, addr, port, proto, user=user)
                self.assertEqual(res["setsockopt"], "EPERM", res)
            res = self.probe_run("lsrr", DENIED, UDP_PEER, 4000, "udp-cmsg", user=user)
            self.assertEqual(res["send"], "EPERM", res)
        self.assertEqual(self.wire.intrusions(), [])

    def srh_cases(self):
        # An allowed v6 destination, and DNS to any v6 address: port 53 is
        # always redirected to the agent, so every sandbox has that one.
        return (("udp", ALLOWED6, 4000), ("tcp", ALLOWED6, 443), ("udp", "2001:db8:53::1", 53),
                ("tcp", "2001:db8:53::1", 53))

    def assert_srh_blocked(self, probe):
        for proto, addr, port in self.srh_cases():
            res = probe(proto, addr, port)
            got = self.wire6.intrusions()
            self.assertEqual(len(got), 0, "%s to [%s]:%d left addressed to %s through a segment routing header (%s)" %
                             (proto, addr, port, DENIED6, res))
        for w in self.allowed6:
            w.intrusions()

    def test_ipv6_segment_routing_header_through_a_denied_hop(self):
        """IPV6_RTHDR with an SRH needs no capability: the hooks see the allowed
        destination, the IPv6 header names the denied next segment."""
        self.assert_srh_blocked(lambda proto, addr, port: self.probe_in(self.cg, "srh", DENIED6, addr, port, proto))

    def test_ipv6_segment_routing_header_under_run(self):
        """The same from an inference-only `run` sandbox, through its DNS redirect."""
        self.assert_srh_blocked(lambda proto, addr, port: self.probe_run("srh", DENIED6, addr, port, proto))

    def test_packet_sockets_under_run_default_user(self):
        res = self.probe_run("packet")
        self.assertEqual((res["raw"], res["dgram"]), ("EPERM", "EPERM"), res)

    def test_packet_sockets_under_run_userns_root(self):
        res = self.probe_run("packet", user="root")
        self.assertEqual((res["raw"], res["dgram"]), ("EPERM", "EPERM"), res)

    def test_raw_and_ping_under_run_userns_root(self):
        res = self.probe_run("raw", *self.d(), user="root")
        for k in ("raw4_udp", "raw4_tcp", "raw4_icmp", "raw6_udp", "raw4_ipip"):
            self.assertEqual(res[k], "EPERM", res)
        self.assertEqual(self.probe_run("ping", DENIED, user="root")["socket"], "EPERM")
        self.assert_untouched(self.denied)

    def test_vsock_and_xdp_sockets_under_run(self):
        """Families no inet hook sees: AF_VSOCK reaches the hypervisor's host, AF_XDP
        sends frames. Refused by the LSM program, or (without BPF LSM) by privilege."""
        res = {"vsock": self.probe_run("socket", 40, 1, 0)["socket"],
               "vsock_dgram": self.probe_run("socket", 40, 2, 0)["socket"],
               "xdp": self.probe_run("socket", 44, 3, 0, user="root")["socket"]}
        self.assertFalse({k: v for k, v in res.items() if v == "OK"}, "created under run: %s" % res)

    def test_vsock_through_the_32_bit_and_x32_syscall_abis_under_run(self):
        """A seccomp filter for the native ABI alone would miss int $0x80 and x32."""
        for abi in ("ia32", "x32"):
            r = self.run_cmd([ESCAPE_PROBE_BIN, "other-abi-socket", abi, 40, 1])
            res = parse_kv(r, self)
            self.assertEqual(res.get("attempt"), abi, res)
            self.assertNotEqual(res.get("socket"), "OK", "AF_VSOCK created through the %s ABI under run: %s" %
                                (abi, r.returncode))

    def test_packet_socket_holder_in_an_attached_cgroup_is_named_by_status(self):
        """Without BPF LSM a process holding CAP_NET_RAW can open packet sockets in
        any cgroup: status must either refuse them or name the process."""
        p = self.cg.popen(["sleep", "30"])
        self.addCleanup(p.wait)
        self.addCleanup(p.kill)
        st = self.agent.status()
        if st["agent"].get("packet_socket_refusal"):
            res = self.probe_in(self.cg, "packet")
            self.assertEqual((res["raw"], res["dgram"]), ("EPERM", "EPERM"), res)
            return
        deadline = time.monotonic() + 10
        while True:
            text = self.agent.ctl("status", "--json").stdout
            if str(p.pid) in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertIn(str(p.pid), text, "status does not name pid %d holding CAP_NET_RAW in %s" % (p.pid, self.cg.path))


if __name__ == "__main__":
    unittest.main(verbosity=2)
