"""Issue #10: sandboxes in their own network namespace ("containers" built the
way runtimes build them: a child cgroup, a network namespace held by its first
process, a veth pair to this test's namespace, addresses and a default route),
attached with `redirctl attach --netns`. From inside: curl reaches
https://inference.local with only the CA, an allowed name resolves and
connects, a denied address gets EPERM, a denied name NXDOMAIN, audit events
name the sandbox; a second container with identical internal addresses works
side by side; and the escape attempts from inside a container namespace fail.
The identical addresses are the spoofing case too: the agent tells the two
apart by the namespace its kernel record names, never by the source address.
"""
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_dns import A, FakeDns  # noqa: E402
from fake_provider import serve_inference  # noqa: E402
from harness import Agent, Cgroup, TcpServer, write_policy  # noqa: E402

ZONE = {
    "api.github.com": [(A, "203.0.113.80", 300)],
    "evil.example": [(A, "203.0.113.81", 300)],
}
POLICY = {"allow": [{"host": "api.github.com", "ports": [80]}]}
AGENT_ADDR = "192.0.2.1"      # the host side of every container's veth
INSIDE_ADDR = "192.0.2.2"     # every container's own address (identical on purpose)
RESOLVER = "192.0.2.9"        # what the containers' resolv.conf names

CONNECT = r"""
import socket, sys, errno
a, p, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(3)
try:
    if proto == "tcp":
        s.connect((a, p))
        print("OK")
    else:
        s.sendto(b"\0\1\1\0\0\1\0\0\0\0\0\0\7example\0\0\1\0\1", (a, p))
        s.recvfrom(512)
        print("ANSWERED")
except socket.timeout:
    print("TIMEOUT")
except ConnectionResetError:
    print("RESET")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)))
"""


def in_container_argv(netns, cgroup, argv, resolv_conf=None, in_cgroup=True):
    """ARGV run in the network namespace NETNS (a private mount namespace with
    RESOLV_CONF over /etc/resolv.conf) and, IN_CGROUP, the cgroup CGROUP:
    harness.sandbox_argv with a container's arguments."""
    return harness.sandbox_argv(argv, cgroup if in_cgroup else None,
                                {"/etc/resolv.conf": resolv_conf} if resolv_conf else None, netns)


def ip(*args, netns_pid=None):
    argv = ["ip"] + list(args)
    if netns_pid:
        argv = ["nsenter", "--net=/proc/%d/ns/net" % netns_pid] + argv
    subprocess.run(argv, check=True, capture_output=True)


class Container:
    """A child cgroup plus a network namespace (held by a sleeping first
    process, as a runtime's pause/init process holds it) joined to this test's
    namespace by a veth pair HOST_IF <-> eth0."""

    def __init__(self, tag, host_if):
        self.cg = Cgroup(tag)
        self.host_if = host_if
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "3600"])
        self.netns = "/proc/%d/ns/net" % self.holder.pid
        harness.wait_until(lambda: os.readlink(self.netns) != os.readlink("/proc/self/ns/net"), timeout=5)
        ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", str(self.holder.pid))
        ip("addr", "add", AGENT_ADDR + "/28", "dev", host_if)
        ip("link", "set", host_if, "up")
        # Identical prefixes on two veths: the reverse-path filter must not drop the second.
        with open("/proc/sys/net/ipv4/conf/%s/rp_filter" % host_if, "w") as f:
            f.write("0")
        pid = self.holder.pid
        ip("link", "set", "lo", "up", netns_pid=pid)
        ip("addr", "add", INSIDE_ADDR + "/28", "dev", "eth0", netns_pid=pid)
        ip("link", "set", "eth0", "up", netns_pid=pid)
        ip("route", "add", "default", "via", AGENT_ADDR, netns_pid=pid)

    def run(self, argv, resolv_conf=None, in_cgroup=True, timeout=30):
        """ARGV inside the container's namespace (and cgroup), optionally with
        RESOLV_CONF over /etc/resolv.conf."""
        argv = in_container_argv(self.netns, self.cg.path, argv, resolv_conf, in_cgroup)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def connect(self, addr, port, proto="tcp", in_cgroup=True):
        r = self.run([sys.executable, "-c", CONNECT, addr, str(port), proto], in_cgroup=in_cgroup)
        return r.stdout.strip() or r.stderr.strip()

    def getaddrinfo(self, resolv_conf, *names):
        r = self.run([sys.executable, "-c", harness.GETADDRINFO] + list(names), resolv_conf=resolv_conf)
        if r.returncode != 0:
            raise AssertionError("getaddrinfo in %s failed: %s" % (self.cg.path, r.stderr))
        return json.loads(r.stdout)

    def close(self):
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        harness.close_all(self.holder)
        self.cg.remove()


class NetnsAttachE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, _ = harness.isolated(cls, "netns")
        cls.fake_dns = FakeDns(harness.FAKE_RESOLVER, ZONE)
        cls.resolv = harness.write_resolv_conf(cls.tmp, nameserver=RESOLVER)
        cls.agent = Agent("netns")
        cls.agent.start()
        cls.provider, cls.ca = serve_inference(cls.agent, cls.tmp, "203.0.113.7")
        cls.web = TcpServer("203.0.113.80", 80)
        cls.denied_web = TcpServer("203.0.113.81", 80)
        cls.policy = write_policy(cls.tmp, "netns-policy", POLICY)
        cls.a = Container("ctr-a", "rk-ctr-a")
        # Only one veth holds the agent's address yet: found from the default route.
        out = cls.agent.ctl("attach", "--cgroup", cls.a.cg.path, "--policy", cls.policy, "--netns", cls.a.netns)
        cls.attach_a_output = out.stdout
        cls.b = Container("ctr-b", "rk-ctr-b")
        # Now two do: the operator names the interface.
        cls.agent.ctl("attach", "--cgroup", cls.b.cg.path, "--policy", cls.policy, "--netns", cls.b.netns,
                      "--redirect-via", AGENT_ADDR + "%" + cls.b.host_if)

    @classmethod
    def tearDownClass(cls):
        for c in (cls.a, cls.b):
            cls.agent.ctl("detach", "--cgroup", c.cg.path, check=False)
        cls.agent.cleanup()
        harness.close_all(cls.a, cls.b, cls.web, cls.denied_web, cls.provider, cls.fake_dns)

    def curl_inference(self, c):
        return c.run(["curl", "-sS", "--fail-with-body", "--cacert", self.ca, "-m", "10",
                      "https://inference.local/v1/chat/completions", "-H", "content-type: application/json",
                      "-d", '{"model":"x","messages":[{"role":"user","content":"hi"}]}'], resolv_conf=self.resolv)

    def test_attach_found_the_gateway_with_rtnetlink(self):
        self.assertIn("redirected via %s (%s)" % (AGENT_ADDR, self.a.host_if), self.attach_a_output)

    def test_inference_local_with_only_the_ca_from_both_containers(self):
        for c in (self.a, self.b):
            r = self.curl_inference(c)
            self.assertEqual(r.returncode, 0, "%s: %s %s" % (c.cg.path, r.stdout, r.stderr))
            self.assertIn("served-model", r.stdout)

    def test_allowed_name_resolves_and_connects_denied_name_is_nxdomain(self):
        got = self.a.getaddrinfo(self.resolv, "api.github.com", "evil.example")
        self.assertEqual(got["api.github.com"], ["203.0.113.80"])
        self.assertTrue(str(got["evil.example"]).startswith("error"), got)
        self.assertEqual(self.a.connect("203.0.113.80", 80), "OK")
        # Resolved by A only: B's sandbox has no admission for it.
        self.assertEqual(self.b.connect("203.0.113.80", 80), "EPERM")

    def test_denied_address_is_eperm_and_the_audit_event_names_the_sandbox(self):
        since = len(self.agent.audit_records())
        self.assertEqual(self.a.connect("203.0.113.81", 80), "EPERM")
        cg_id = os.stat(self.a.cg.path).st_ino
        rec = self.agent.wait_audit(lambda r: r.get("event") == "connect" and r.get("dst") == "203.0.113.81",
                                    since=since)
        self.assertTrue(rec, "no audit record for the denied connect")
        self.assertEqual(rec[0]["cgroup_id"], cg_id)
        self.assertEqual(rec[0]["verdict"], "deny")

    def test_escape_direct_connect_to_the_agents_veth_address_is_refused(self):
        ports = self.agent.status()["agent"]
        for port in (ports["terminator_port"], ports["relay_port"], ports["plain_http_port"]):
            self.assertEqual(self.a.connect(AGENT_ADDR, port), "EPERM", port)
        # A process in the namespace that is outside the hooks (not in the
        # cgroup) reaches the listener, but carries no original destination.
        since = len(self.agent.audit_records())
        self.assertIn(self.a.connect(AGENT_ADDR, ports["terminator_port"], in_cgroup=False), ("OK", "RESET"))
        rec = self.agent.wait_audit(lambda r: r.get("event") == "redirect" and r.get("verdict") == "refused",
                                    since=since)
        self.assertTrue(rec, "the listener served a connection that was never redirected")

    def test_escape_dns_to_the_other_sandboxs_responder(self):
        b_port = [a for a in self.agent.status()["attachments"] if a["cgroup"] == self.b.cg.path][0]["dns_port"]
        self.assertEqual(self.a.connect(AGENT_ADDR, b_port, proto="udp"), "EPERM")
        # Outside the cgroup: B's responder is bound to B's veth, A's datagram never reaches it.
        self.assertIn(self.a.connect(AGENT_ADDR, b_port, proto="udp", in_cgroup=False),
                      ("TIMEOUT", "ECONNREFUSED"))


if __name__ == "__main__":
    unittest.main()
