"""The node-side guard on ONE bridge shared by two containers (the docker0 /
cni0 layout): different addresses, each container attached with a policy of
its own, each guarded on its own bridge port. What root inside one of them
tries with a packet socket (denied destinations, a neighbour's source
address, VLAN tags, fragments, IP options) is dropped by its own guard while
the other's allowed traffic crosses the same bridge; detaching one leaves the
other guarded. Then a server inside a container: its answers reach the
clients its policy names and no others.

Layout (every namespace made here, fake addresses only):
  ctr A  eth0 10.88.0.2/24 ── vethA ┐
                                    ├ brS 10.88.0.1/24  this test's ns: the node (agent, forwarding,
  ctr B  eth0 10.88.0.3/24 ── vethB ┘                   masquerade out of up0)
  node   up0 192.0.2.129/30 ── eth0 192.0.2.130/30 upstream ns: web 203.0.113.80, denied 203.0.113.81,
                                                   clients 203.0.113.90 (named by A) and .91 (not)
"""
import json
import os
import socket
import struct
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Cgroup, write_policy  # noqa: E402
from test_netns_attach import in_container_argv  # noqa: E402
from test_netns_container import (DENIED, GATEWAY, INSIDE, IP, NEIGHBOUR, PROBE, UPLINK, WEB,  # noqa: E402
                                  Container, ContainerNode, make_bridge, node_ruleset, sh)
from test_run_netns import in_netns, nft  # noqa: E402

CLIENT_NAMED, CLIENT_OTHER = "203.0.113.90", "203.0.113.91"

# A server inside a container: prints its port, then each client it accepted,
# and greets each one.
SERVER = r"""
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
s.listen(16)
print(s.getsockname()[1], flush=True)
while True:
    c, peer = s.accept()
    print(peer[0], flush=True)
    c.sendall(b"hello " + peer[0].encode())
    c.close()
"""


def checksum(data):
    words = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    return ~words & 0xFFFF


def ipv4(src, dst, payload, proto=17, frag=0, options=b""):
    ihl = 5 + len(options) // 4
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(payload), 7, frag, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst)) + options
    return hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:] + payload


def udp(port, data=b"hand-built, past the socket hooks"):
    return struct.pack("!HHHH", 40000, port, 8 + len(data), 0) + data


def ether(dst_mac, src_mac, ethertype, payload, vlan=None):
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return (bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + tag +
            struct.pack("!H", ethertype) + payload)


class SharedBridge(ContainerNode):
    """A at 10.88.0.2 may send UDP to the web server's sentinel; B at 10.88.0.3
    may send UDP to the denied server's. Each one's escape to what only the
    other may reach is the test."""

    TAG = "guardbr"
    HOOK = None  # what the agent is told to prefer (REDIR_GUARD_HOOK); None: its own choice

    @classmethod
    def setUpClass(cls):
        # For every agent this class starts (a restart included).
        if cls.HOOK:
            os.environ["REDIR_GUARD_HOOK"] = cls.HOOK
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        try:
            super().tearDownClass()
        finally:
            os.environ.pop("REDIR_GUARD_HOOK", None)

    @classmethod
    def build_containers(cls):
        cls.policy_a = write_policy(cls.tmp, "bridge-a", {"allow": [
            {"cidr": WEB + "/32", "ports": [cls.web_udp.port], "protocol": "udp"},
            {"cidr": CLIENT_NAMED + "/32", "protocol": "tcp"}]})
        cls.policy_b = write_policy(cls.tmp, "bridge-b", {"allow": [
            {"cidr": DENIED + "/32", "ports": [cls.denied_udp.port], "protocol": "udp"}]})
        nft(node_ruleset([]))
        cls.runtime = runtime = Cgroup("guardbr-runtime")
        cls.closing.append(runtime.remove)
        make_bridge("brS")
        cls.closing.append(lambda: subprocess.run([IP, "link", "del", "brS"], capture_output=True))
        cls.a = Container("bridge-a", "brS", None, runtime, inside=INSIDE, veth="vethA", own_bridge=False)
        cls.closing.append(cls.a.close)
        cls.b = Container("bridge-b", "brS", None, runtime, inside=NEIGHBOUR, veth="vethB", own_bridge=False)
        cls.closing.append(cls.b.close)
        # Both found from their default routes: the one bridge holds the gateway.
        for c, pol in ((cls.a, cls.policy_a), (cls.b, cls.policy_b)):
            cls.agent.ctl("attach", "--cgroup", c.cg.path, "--policy", pol, "--netns", c.netns)
        cls.bridge_mac = cls.mac("brS")
        # Clients upstream reach the containers through the node (no masquerade inbound).
        sh(IP, "-n", cls.upstream, "route", "add", "10.88.0.0/24", "via", UPLINK)
        for a in (CLIENT_NAMED, CLIENT_OTHER):
            sh(IP, "-n", cls.upstream, "addr", "add", a + "/32", "dev", "lo")

    @staticmethod
    def mac(dev):
        return sh(IP, "-o", "link", "show", dev).split("link/ether ")[1].split()[0]

    @staticmethod
    def ifindex(dev):
        # Not /sys/class/net: that sysfs belongs to the namespace it was mounted in.
        return int(sh(IP, "-o", "link", "show", "dev", dev).split(":")[0])

    def datagram(self, c, dst, port, src=None):
        return "packet-udp eth0 %s %s %s %d" % (self.bridge_mac, src or c.inside, dst, port)

    def dropped(self, c, since, dst, port=None, reason=None, count=1):
        """The guard's audit records of C's packets to DST (PORT), at least COUNT."""
        recs = self.agent.wait_audit(lambda r: r.get("event") == "forwarded" and r.get("cgroup_id") == c.cgroup_id
                                     and r.get("dst") == dst and (port is None or r.get("port") == port)
                                     and (reason is None or r.get("reason") == reason), since=since, count=count)
        self.assertGreaterEqual(len(recs), count, "no 'forwarded' record of %s's packet to %s (%s)" %
                                (c.cg.path, dst, reason))
        return recs

    def skip_where_packet_sockets_are_refused(self):
        if self.agent.status()["agent"].get("packet_socket_refusal"):
            self.skipTest("this kernel refuses packet sockets in the sandbox (lsm_cgroup): no packet reaches a guard")

    def test_each_container_is_guarded_on_its_own_bridge_port(self):
        mine = {a["cgroup"]: a for a in self.agent.status()["attachments"]}
        for c, veth in ((self.a, "vethA"), (self.b, "vethB")):
            guard = mine[c.cg.path].get("guard")
            self.assertIsNotNone(guard, "status names no guard for %s" % c.cg.path)
            self.assertEqual((guard["interface"], guard["ifindex"], guard["active"]),
                             (veth, self.ifindex(veth), True), guard)
            self.assertIn(guard["hook"], (self.HOOK,) if self.HOOK else ("tcx", "tc"), guard)
        text = self.agent.ctl("status").stdout
        self.assertIn("guard: active on vethA (ifindex %d)" % self.ifindex("vethA"), text)

    def test_lost_guard_is_reported_loudly_and_survives_a_restart(self):
        """C's veth is deleted under it (the host end, as a runtime tearing the
        container down without telling redir): status says the guard is not
        active, loudly, and a restarted agent comes up and says it again."""
        c = Container("bridge-c", "brS", None, self.runtime, inside="10.88.0.4", veth="vethC", own_bridge=False)
        self.addCleanup(c.close)
        self.agent.ctl("attach", "--cgroup", c.cg.path, "--policy", self.policy_a, "--netns", c.netns)
        self.addCleanup(lambda: self.agent.ctl("detach", "--cgroup", c.cg.path, check=False))
        ifindex = self.ifindex("vethC")
        sh(IP, "link", "del", "vethC")

        def guard_of_c():
            return {a["cgroup"]: a for a in self.agent.status()["attachments"]}[c.cg.path]["guard"]
        for when in ("running", "restarted"):
            g = guard_of_c()
            self.assertEqual((g["ifindex"], g["active"]), (ifindex, False), "%s: %s" % (when, g))
            self.assertIn("gone", g["problem"], g)
            self.assertIn("guard: NOT ACTIVE on interface (ifindex %d)" % ifindex, self.agent.ctl("status").stdout)
            if when == "running":
                self.agent.stop()
                self.agent.start()
        self.assertIn("node-side guard on interface %d is not active" % ifindex, open(self.agent.log).read())
        mine = {a["cgroup"]: a for a in self.agent.status()["attachments"]}
        self.assertTrue(mine[self.a.cg.path]["guard"]["active"], "A's guard must be untouched: %s" % mine)

    def test_attach_is_refused_where_no_guard_can_be_placed(self):
        """D's link is a macvlan on the bridge: no bridge port carries only its
        packets, so no guard can judge them. The attach fails closed, naming why."""
        holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "3600"])
        self.addCleanup(lambda: harness.close_all(holder))
        netns = "/proc/%d/ns/net" % holder.pid
        harness.wait_until(lambda: os.readlink(netns) != os.readlink("/proc/self/ns/net"), timeout=5)
        sh(IP, "link", "add", "mvD", "link", "brS", "type", "macvlan", "mode", "bridge")
        sh(IP, "link", "set", "mvD", "netns", str(holder.pid))
        for cmd in (["addr", "add", "10.88.0.5/24", "dev", "mvD"], ["link", "set", "mvD", "up"],
                    ["route", "add", "default", "via", GATEWAY]):
            sh("nsenter", "--net=" + netns, IP, *cmd)
        cg = Cgroup("bridge-d", parent=self.runtime)
        self.addCleanup(cg.remove)
        r = self.agent.ctl("attach", "--cgroup", cg.path, "--policy", self.policy_a, "--netns", netns, check=False)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("cannot place the node-side guard", r.stderr)
        self.assertNotIn(cg.path, [a["cgroup"] for a in self.agent.status()["attachments"]])

    def test_each_escape_is_dropped_by_its_own_guard_while_the_other_flows(self):
        self.skip_where_packet_sockets_are_refused()
        since = len(self.agent.audit_records())
        web_before, denied_before = len(self.web_udp.received), len(self.denied_udp.received)
        # A to the web server (its policy) and to the denied one (B's policy only); B the other way round.
        self.assertEqual(self.a.probe(self.datagram(self.a, WEB, self.web_udp.port),
                                      self.datagram(self.a, DENIED, self.denied_udp.port)), ["SENT", "SENT"])
        self.assertEqual(self.b.probe(self.datagram(self.b, DENIED, self.denied_udp.port),
                                      self.datagram(self.b, WEB, self.web_udp.port)), ["SENT", "SENT"])
        self.assertTrue(harness.wait_until(lambda: len(self.web_udp.received) > web_before and
                                           len(self.denied_udp.received) > denied_before, timeout=5),
                        "each container's allowed datagram must cross the shared bridge (web %s, denied %s)" %
                        (self.web_udp.received[web_before:], self.denied_udp.received[denied_before:]))
        self.dropped(self.a, since, DENIED, self.denied_udp.port, "policy")
        self.dropped(self.b, since, WEB, self.web_udp.port, "policy")
        # Exactly one datagram each: the allowed one (the node masquerades it as its uplink).
        self.assertEqual(self.web_udp.received[web_before:], [(UPLINK, self.web_udp.received[web_before][1])])
        self.assertEqual(len(self.denied_udp.received[denied_before:]), 1)

    def test_escape_with_the_neighbours_source_address(self):
        """A forges B's address as source towards what only B may reach: it is
        judged on A's bridge port, under A's policy, whatever it claims."""
        self.skip_where_packet_sockets_are_refused()
        since = len(self.agent.audit_records())
        before = len(self.denied_udp.received)
        self.assertEqual(self.a.probe(self.datagram(self.a, DENIED, self.denied_udp.port, src=NEIGHBOUR)), ["SENT"])
        self.dropped(self.a, since, DENIED, self.denied_udp.port)
        self.assertEqual(self.denied_udp.received[before:], [])
        # The control: the same datagram from B's own port is B's, and allowed.
        self.assertEqual(self.b.probe(self.datagram(self.b, DENIED, self.denied_udp.port)), ["SENT"])
        self.assertTrue(harness.wait_until(lambda: len(self.denied_udp.received) > before, timeout=5))

    def test_escape_with_tags_fragments_and_options(self):
        """Frames built whole by A: a VLAN tag, a datagram cut in two
        fragments, IP options. None is judged; each is dropped in A's name,
        and the denied server sees nothing."""
        self.skip_where_packet_sockets_are_refused()
        src_mac = subprocess.run(["nsenter", "--net=" + self.a.netns, IP, "-o", "link", "show", "eth0"],
                                 capture_output=True, text=True, check=True).stdout.split("link/ether ")[1].split()[0]
        whole = udp(self.denied_udp.port, b"x" * 24)
        first = ipv4(INSIDE, DENIED, whole[:16], frag=0x2000)
        rest = ipv4(INSIDE, DENIED, whole[16:], frag=2)
        record_route = bytes([7, 7, 4, 0, 0, 0, 0]) + b"\0"  # RR with one slot, padded to 8
        frames = {
            "vlan": ether(self.bridge_mac, src_mac, 0x0800, ipv4(INSIDE, DENIED, udp(self.denied_udp.port)), vlan=5),
            "fragment 1": ether(self.bridge_mac, src_mac, 0x0800, first),
            "fragment 2": ether(self.bridge_mac, src_mac, 0x0800, rest),
            "options": ether(self.bridge_mac, src_mac, 0x0800,
                             ipv4(INSIDE, DENIED, udp(self.denied_udp.port), options=record_route)),
        }
        since = len(self.agent.audit_records())
        before = len(self.denied_udp.received)
        out = self.a.probe(*["frame eth0 " + f.hex() for f in frames.values()])
        self.assertEqual(out, ["SENT"] * len(frames))
        self.dropped(self.a, since, DENIED, reason="unparsed", count=len(frames))
        self.assertEqual(self.denied_udp.received[before:], [])

    def test_escape_moving_the_link_into_a_nested_namespace(self):
        """A's root moves its end of the veth into a namespace of its own
        making and sends from there: the guard is on the host end, which it
        cannot touch, so the packet is still A's. (The link is moved back.)"""
        self.skip_where_packet_sockets_are_refused()
        script = r"""
set -e
unshare --net sleep 60 & P=$!
while [ "$(readlink /proc/$P/ns/net)" = "$(readlink /proc/self/ns/net)" ]; do sleep 0.05; done
ip link set eth0 netns $P
IN="nsenter --net=/proc/$P/ns/net"
$IN ip addr add {inside}/24 dev eth0
$IN ip link set eth0 up
$IN ip route add default via {gw}
$IN python3 -c "$PROBE" "packet-udp eth0 {mac} {inside} {web} {web_port}" "packet-udp eth0 {mac} {inside} {denied} {denied_port}"
$IN ip link set eth0 netns {holder}
kill $P
""".format(inside=INSIDE, gw=GATEWAY, mac=self.bridge_mac, web=WEB, web_port=self.web_udp.port, denied=DENIED,
           denied_port=self.denied_udp.port, holder=self.a.holder.pid)
        since = len(self.agent.audit_records())
        web_before, denied_before = len(self.web_udp.received), len(self.denied_udp.received)
        r = self.a.run(["sh", "-c", script], env={"PROBE": PROBE})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout), ["SENT", "SENT"])
        self.assertTrue(harness.wait_until(lambda: len(self.web_udp.received) > web_before, timeout=5),
                        "the allowed datagram from the nested namespace never arrived: the refusal proves nothing")
        self.dropped(self.a, since, DENIED, self.denied_udp.port, "policy")
        self.assertEqual(self.denied_udp.received[denied_before:], [])

    def test_detaching_one_container_leaves_the_other_guarded(self):
        self.skip_where_packet_sockets_are_refused()
        self.agent.ctl("detach", "--cgroup", self.b.cg.path)
        try:
            mine = {a["cgroup"]: a for a in self.agent.status()["attachments"]}
            self.assertNotIn(self.b.cg.path, mine)
            self.assertTrue(mine[self.a.cg.path]["guard"]["active"], mine[self.a.cg.path])
            since = len(self.agent.audit_records())
            denied_before, web_before = len(self.denied_udp.received), len(self.web_udp.received)
            self.assertEqual(self.a.probe(self.datagram(self.a, DENIED, self.denied_udp.port),
                                          self.datagram(self.a, WEB, self.web_udp.port)), ["SENT", "SENT"])
            self.dropped(self.a, since, DENIED, self.denied_udp.port)
            self.assertTrue(harness.wait_until(lambda: len(self.web_udp.received) > web_before, timeout=5))
            self.assertEqual(self.denied_udp.received[denied_before:], [])
            # B's port is nobody's guard any more (B is unenforced, as detached).
            self.assertNotIn(self.ifindex("vethB"), [a["guard"]["ifindex"] for a in mine.values() if a.get("guard")])
            tc = subprocess.run(["tc", "filter", "show", "dev", "vethB", "ingress"], capture_output=True, text=True)
            self.assertNotIn("redir_guard", tc.stdout)
        finally:
            self.agent.ctl("attach", "--cgroup", self.b.cg.path, "--policy", self.policy_b, "--netns", self.b.netns)

    def test_server_inside_answers_only_the_clients_its_policy_names(self):
        """A serves on a TCP port. The client its policy names (a cidr rule,
        no ports: answers go to the client's port) is answered; another
        client's connection never completes (its SYN-ACK is dropped, in A's
        name), and the server never accepts it."""
        argv = in_container_argv(self.a.netns, self.a.cg.path,
                                 ["nsenter", "--user=" + self.a.userns, sys.executable, "-c", SERVER, INSIDE])
        server = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: (server.kill(), server.wait()))
        port = int(server.stdout.readline())
        up = "/run/netns/" + self.upstream

        def connect_from(src):
            s = socket.socket()
            s.settimeout(3)
            s.bind((src, 0))
            try:
                s.connect((INSIDE, port))
                return s.getsockname()[1], s.recv(64).decode()
            except OSError as e:
                return s.getsockname()[1], type(e).__name__
            finally:
                s.close()

        since = len(self.agent.audit_records())
        _, got = in_netns(up, lambda: connect_from(CLIENT_NAMED))
        self.assertEqual(got, "hello " + CLIENT_NAMED)
        other_port, got = in_netns(up, lambda: connect_from(CLIENT_OTHER))
        self.assertIn(got, ("timeout", "TimeoutError"), "a client A's policy does not name got an answer")
        recs = self.dropped(self.a, since, CLIENT_OTHER, other_port, "policy")
        self.assertEqual(recs[0]["protocol"], "tcp")
        self.assertEqual(server.stdout.readline().strip(), CLIENT_NAMED)
        server.kill()
        rest, _ = server.communicate(timeout=5)
        self.assertNotIn(CLIENT_OTHER, rest, "the server accepted a connection its answers could not reach")



class SharedBridgeClsact(SharedBridge):
    """The same, with the guard on clsact (the hook of kernels before 6.6,
    which have no tcx), forced on this one through REDIR_GUARD_HOOK=tc."""

    TAG = "guardtc"
    HOOK = "tc"

    def test_guard_is_our_tc_filter_on_each_port(self):
        for veth in ("vethA", "vethB"):
            tc = sh("tc", "filter", "show", "dev", veth, "ingress")
            self.assertIn("redir_guard", tc, veth)
            self.assertIn("handle 0x7265", tc, veth)

    # Each case that can skip is an entry of its own (tests/e2e/list_e2e.py reads this file, not SharedBridge's).
    def test_each_escape_is_dropped_by_its_own_guard_while_the_other_flows(self):  # may skip
        super().test_each_escape_is_dropped_by_its_own_guard_while_the_other_flows()

    def test_escape_with_the_neighbours_source_address(self):  # may skip
        super().test_escape_with_the_neighbours_source_address()

    def test_escape_with_tags_fragments_and_options(self):  # may skip
        super().test_escape_with_tags_fragments_and_options()

    def test_detaching_one_container_leaves_the_other_guarded(self):  # may skip
        super().test_detaching_one_container_leaves_the_other_guarded()

    def test_escape_moving_the_link_into_a_nested_namespace(self):  # may skip
        super().test_escape_moving_the_link_into_a_nested_namespace()


if __name__ == "__main__":
    unittest.main()
