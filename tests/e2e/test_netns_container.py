"""Issue #10: two "containers" built the way runtimes build them, behind a node
that routes and masquerades their egress to an upstream namespace, attached
with `redirctl attach --netns`; then what a root process inside one of them
tries in order to get out.

Layout (every namespace made here, fake addresses only):
  ctr A  eth0 10.88.0.2/24 ── vethA ── brA 10.88.0.1/24 ┐
  ctr B  eth0 10.88.0.2/24 ── vethB ── brB 10.88.0.1/24 ┤ this test's ns: the node (agent, forwarding,
                                                       │ masquerade out of up0, per-bridge conntrack
                                                       │ zones and marks so identical addresses route back)
  node   up0 192.0.2.129/30 ── eth0 192.0.2.130/30 upstream ns: provider 203.0.113.7, web 203.0.113.80,
                                                   denied 203.0.113.81 (real listeners), resolver 198.51.100.53
The upstream namespace has no route to 10.88.0.0/24: an answer reaches a
container only through the node's masquerade. Each container's namespace is
owned by a user namespace of its own, whose root (CAP_NET_ADMIN, CAP_NET_RAW
in that namespace only) runs every command inside, as in a rootless or
user-namespaced container.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_dns import A, FakeDns  # noqa: E402
from fake_provider import FakeProvider, make_test_ca  # noqa: E402
from harness import Agent, Cgroup, write_policy  # noqa: E402
from test_run import CountingListener  # noqa: E402
from test_netns_attach import in_container_argv  # noqa: E402
from test_run_netns import in_netns, nft  # noqa: E402

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
GATEWAY, INSIDE, NEIGHBOUR = "10.88.0.1", "10.88.0.2", "10.88.0.3"
UPLINK, UPSTREAM_END = "192.0.2.129", "192.0.2.130"
PROVIDER, WEB, DENIED, RESOLVER = "203.0.113.7", "203.0.113.80", "203.0.113.81", "198.51.100.53"
ALLOWED_NAME, DENIED_NAME = "api.allowed.example", "blocked.example"
# The provider's credential: it must reach the provider and nothing else.
SECRET = "sk-upstream-secret-4f1c9a7e2b"
ZONE = {ALLOWED_NAME: [(A, WEB, 300)], DENIED_NAME: [(A, DENIED, 300)]}

# Runs each step ("connect ADDR PORT tcp|udp [SRC]", "socket FAMILY TYPE PROTO",
# "packet-udp IF MAC SRC DST PORT", "frame IF HEX", "ip ARGS...") in order and prints the outcomes as JSON.
PROBE = r"""
import errno, json, socket, struct, subprocess, sys
IP_FREEBIND = 15
def connect(addr, port, proto, src=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        if src:
            s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            s.bind((src, 0))
        if proto == "tcp":
            s.connect((addr, int(port)))
            try:
                return ("OK " + s.recv(64).decode(errors="replace")).strip()
            except socket.timeout:
                return "OK"
        s.sendto(b"\0\1\1\0\0\1\0\0\0\0\0\0\7example\0\0\1\0\1", (addr, int(port)))
        s.recvfrom(512)
        return "ANSWERED"
    except socket.timeout:
        return "TIMEOUT"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
def packet_udp(ifname, gw_mac, src, dst, port):
    # An IPv4/UDP datagram built by hand and handed to the link layer: no
    # connect() or sendmsg() hook runs for it.
    payload = b"sent through a packet socket"
    udp = struct.pack("!HHHH", 40000, int(port), 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    words = sum(struct.unpack("!10H", hdr))
    while words >> 16:
        words = (words & 0xFFFF) + (words >> 16)
    hdr = hdr[:10] + struct.pack("!H", ~words & 0xFFFF) + hdr[12:]
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    s.sendto(hdr + udp, (ifname, 0x0800, 0, 0, bytes.fromhex(gw_mac.replace(":", ""))))
    return "SENT"
def frame(ifname, hexbytes):
    # A whole Ethernet frame, headers and all, as built by the caller.
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    s.bind((ifname, 0))
    s.send(bytes.fromhex(hexbytes))
    return "SENT"
def make(fam, typ, proto):
    try:
        socket.socket(getattr(socket, fam), getattr(socket, typ), int(proto)).close()
        return "OK"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
out = []
for step in sys.argv[1:]:
    kind, *rest = step.split()
    if kind == "connect":
        out.append(connect(*rest))
    elif kind == "socket":
        out.append(make(*rest))
    elif kind == "packet-udp":
        out.append(packet_udp(*rest))
    elif kind == "frame":
        out.append(frame(*rest))
    else:
        r = subprocess.run([kind] + rest, capture_output=True, text=True)
        out.append("OK" if r.returncode == 0 else r.stderr.strip())
print(json.dumps(out))
"""

# The official OpenAI Python SDK, configured only by the environment.
PY_SDK = r"""
import json, openai
c = openai.OpenAI(api_key="sk-sandbox-placeholder")
r = c.chat.completions.create(model="client-model", messages=[{"role": "user", "content": "hi"}])
print(json.dumps({"content": r.choices[0].message.content, "model": r.model}))
"""


def sh(*argv):
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError("%s failed: %s" % (" ".join(argv), r.stderr))
    return r.stdout


def node_ruleset(zones):
    """What a runtime's node does for its bridges, plus what identical container
    addresses need: each bridge's connections in a conntrack zone of their own
    (identical tuples stay apart: without zones conntrack would remap the
    source port of the second, and the agent would find no original
    destination for it) and marked, so the answer, once un-masqueraded, is
    routed back to the bridge it came from. Connections to the node itself are
    zoned both ways; forwarded ones only in the original direction, as their
    answers come in through the uplink."""
    raw = "\n".join('    iifname "%s" fib daddr type local ct zone set %d\n'
                     '    iifname "%s" fib daddr type != local ct original zone set %d' % (br, z, br, z)
                     for br, z in zones)
    out = "\n".join('    oifname "%s" ct zone set %d' % (br, z) for br, z in zones)
    mark = "\n".join('    iifname "%s" ct mark set %d' % (br, z) for br, z in zones)
    return """table ip redir_e2e_node {
  chain raw_pre {
    type filter hook prerouting priority raw; policy accept;
%s
  }
  chain raw_out {
    type filter hook output priority raw; policy accept;
%s
  }
  chain mangle_pre {
    type filter hook prerouting priority mangle; policy accept;
%s
    ct direction reply meta mark set ct mark
  }
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "up0" masquerade
  }
}
""" % (raw, out, mark)


def make_bridge(bridge):
    """Bridge BRIDGE holding GATEWAY/24, up."""
    sh(IP, "link", "add", bridge, "type", "bridge")
    sh(IP, "addr", "add", GATEWAY + "/24", "dev", bridge)
    sh(IP, "link", "set", bridge, "up")
    # Identical prefixes on two bridges: the reverse-path filter must not drop the second.
    with open("/proc/sys/net/ipv4/conf/%s/rp_filter" % bridge, "w") as f:
        f.write("0")


class UdpSentinel:
    """Counts every datagram that reaches ADDR (a port of its own)."""

    def __init__(self, addr):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 0))
        self.port = self.sock.getsockname()[1]
        self.received = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                self.received.append(self.sock.recvfrom(2048)[1])
            except OSError:
                return

    def close(self):
        self.sock.close()


class Container:
    """A child cgroup of the runtime's plus a network namespace owned by a user namespace of its
    own (held by a sleeping first process, as a runtime's pause process holds
    it), joined to bridge BRIDGE (GATEWAY/24) of this namespace by a veth pair;
    eth0 is INSIDE/24. With OWN_BRIDGE the bridge is made for it alone (then
    ZONE routes its answers back: every container there has the same address);
    else BRIDGE already exists and is shared (docker0, cni0)."""

    def __init__(self, tag, bridge, zone, runtime, inside=INSIDE, veth=None, own_bridge=True):
        self.cg = Cgroup(tag, parent=runtime)
        self.bridge, self.veth, self.inside = bridge, veth or "veth" + bridge[-1], inside
        self.own_bridge = own_bridge
        self.holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--net", "sleep", "3600"])
        self.netns = "/proc/%d/ns/net" % self.holder.pid
        self.userns = "/proc/%d/ns/user" % self.holder.pid
        harness.wait_until(lambda: os.readlink(self.netns) != os.readlink("/proc/self/ns/net"), timeout=5)
        if own_bridge:
            make_bridge(bridge)
        sh(IP, "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", str(self.holder.pid))
        sh(IP, "link", "set", self.veth, "master", bridge)
        sh(IP, "link", "set", self.veth, "up")
        if own_bridge:
            # Answers of this bridge's connections come back marked ZONE (node_ruleset).
            sh(IP, "route", "add", "10.88.0.0/24", "dev", bridge, "table", str(100 + zone))
            sh(IP, "rule", "add", "fwmark", str(zone), "table", str(100 + zone))
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", inside + "/24", "dev", "eth0"],
                    ["link", "set", "eth0", "up"], ["route", "add", "default", "via", GATEWAY]):
            self.admin(*cmd)

    def admin(self, *args, check=True):
        """`ip ARGS` in the container's namespace as the node's root (the runtime)."""
        r = subprocess.run(["nsenter", "--net=" + self.netns, IP] + list(args), capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError("ip %s in %s failed: %s" % (" ".join(args), self.netns, r.stderr))

    def run(self, argv, resolv_conf=None, env=None, in_cgroup=True, timeout=60):
        """ARGV as root of the container's user namespace, inside its network
        namespace (and cgroup), with RESOLV_CONF over /etc/resolv.conf."""
        argv = in_container_argv(self.netns, self.cg.path, ["nsenter", "--user=" + self.userns] + list(argv),
                                 resolv_conf, in_cgroup)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, **(env or {})))

    def probe(self, *steps, in_cgroup=True):
        r = self.run([sys.executable, "-c", PROBE] + list(steps), in_cgroup=in_cgroup)
        if r.returncode != 0:
            raise AssertionError("probe in %s failed: %s" % (self.cg.path, r.stderr))
        return json.loads(r.stdout)

    def getaddrinfo(self, resolv_conf, *names):
        r = self.run([sys.executable, "-c", harness.GETADDRINFO] + list(names), resolv_conf=resolv_conf)
        if r.returncode != 0:
            raise AssertionError("getaddrinfo in %s failed: %s" % (self.cg.path, r.stderr))
        return json.loads(r.stdout)

    @property
    def cgroup_id(self):
        return os.stat(self.cg.path).st_ino

    def close(self):
        for dev in (self.veth, self.bridge) if self.own_bridge else (self.veth,):
            subprocess.run([IP, "link", "del", dev], capture_output=True)
        harness.close_all(self.holder)
        self.cg.remove()


class ContainerNode(unittest.TestCase):
    """The node, the upstream namespace, one agent and containers A and B."""

    TAG = "ctrnode"

    @classmethod
    def setUpClass(cls):
        cls.tmp, _ = harness.isolated(cls, cls.TAG)
        cls.closing = [lambda: shutil.rmtree(cls.tmp, ignore_errors=True)]
        try:
            cls.build()
        except BaseException:
            # unittest skips tearDownClass when setUpClass fails: nothing may stay behind.
            cls.tearDownClass()
            raise

    @classmethod
    def build(cls):
        # The fake internet is upstream, not on this namespace's lo.
        for a in ("203.0.113.1/24", "198.51.100.1/24"):
            sh(IP, "addr", "del", a, "dev", "lo")
        cls.upstream = "redir-e2e-up-%d" % os.getpid()
        sh(IP, "netns", "add", cls.upstream)
        cls.closing.append(lambda: subprocess.run([IP, "netns", "del", cls.upstream], capture_output=True))
        sh(IP, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", cls.upstream)
        sh(IP, "addr", "add", UPLINK + "/30", "dev", "up0")
        sh(IP, "link", "set", "up0", "up")
        for cmd in [["link", "set", "lo", "up"], ["addr", "add", UPSTREAM_END + "/30", "dev", "eth0"],
                    ["link", "set", "eth0", "up"]] + [["addr", "add", a + "/32", "dev", "lo"]
                                                      for a in (PROVIDER, WEB, DENIED, RESOLVER)]:
            sh(IP, "-n", cls.upstream, *cmd)
        sh(IP, "route", "add", "default", "via", UPSTREAM_END)
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        up = "/run/netns/" + cls.upstream
        cls.web, cls.web_udp, cls.denied, cls.denied_udp, cls.dns = in_netns(up, lambda: (
            CountingListener(WEB), UdpSentinel(WEB), CountingListener(DENIED), UdpSentinel(DENIED),
            FakeDns(RESOLVER, ZONE)))
        cls.closing += [cls.web.close, cls.web_udp.close, cls.denied.close, cls.denied_udp.close, cls.dns.close]
        ca, cert, key = make_test_ca(cls.tmp, PROVIDER)
        cls.provider = in_netns(up, lambda: FakeProvider(PROVIDER, 8443, cert, key, name="upstream"))
        cls.closing.append(cls.provider.close)

        cls.agent = Agent(cls.TAG)
        cls.agent.extra = ["--dns-upstream", RESOLVER + ":53"]
        cls.agent.start()
        cls.closing.append(cls.agent.cleanup)
        cls.agent.ctl("provider", "create", "--name", "upstream", "--type", "openai-compatible", "--base-url",
                      "https://%s:8443/v1" % PROVIDER, "--ca-file", ca, "--credential", "OPENAI_API_KEY=" + SECRET)
        cls.agent.ctl("inference", "set", "--provider", "upstream", "--model", "served-model")
        cls.ca = os.path.join(cls.tmp, "inference-ca.pem")
        cls.agent.ctl("ca", "export", "--out", cls.ca)
        cls.resolv = harness.write_resolv_conf(cls.tmp, nameserver="10.88.0.53")
        cls.build_containers()

    @classmethod
    def build_containers(cls):
        """Containers A and B, each behind a bridge of its own, same addresses."""
        # One UDP port of the web server by address: a forwarded flow the node-side guard must let through.
        cls.policy = write_policy(cls.tmp, "ctr-policy", {"allow": [
            {"host": ALLOWED_NAME}, {"cidr": WEB + "/32", "ports": [cls.web_udp.port], "protocol": "udp"}]})

        nft(node_ruleset([("brA", 1), ("brB", 2)]))
        # The runtime's parent cgroup (system.slice, kubepods.slice), one child per container.
        runtime = Cgroup("ctr-runtime")
        cls.closing.append(runtime.remove)
        cls.a = Container("ctr-a", "brA", 1, runtime)
        cls.closing.append(cls.a.close)
        # Only one bridge holds the gateway address yet: found from the default route.
        cls.attach_a = cls.agent.ctl("attach", "--cgroup", cls.a.cg.path, "--policy", cls.policy,
                                     "--netns", cls.a.netns).stdout
        cls.b = Container("ctr-b", "brB", 2, runtime)
        cls.closing.append(cls.b.close)
        # Now two do: the operator names the bridge.
        cls.agent.ctl("attach", "--cgroup", cls.b.cg.path, "--policy", cls.policy, "--netns", cls.b.netns,
                      "--redirect-via", GATEWAY + "%brB")

    @classmethod
    def tearDownClass(cls):
        for c in ("a", "b"):
            if hasattr(cls, c):
                cls.agent.ctl("detach", "--cgroup", getattr(cls, c).cg.path, check=False)
        for close in reversed(cls.closing):
            close()

    def containers(self):
        return (("A", self.a), ("B", self.b))

    def dns_port(self, c):
        return [a for a in self.agent.status()["attachments"] if a["cgroup"] == c.cg.path][0]["dns_port"]

    def ca_env(self):
        """The CA and nothing else, under each client's name for it (curl 7.88
        reads CURL_CA_BUNDLE, not SSL_CERT_FILE; Node reads NODE_EXTRA_CA_CERTS)."""
        return {"SSL_CERT_FILE": self.ca, "CURL_CA_BUNDLE": self.ca, "NODE_EXTRA_CA_CERTS": self.ca}

    def sdk_env(self):
        return dict(self.ca_env(), OPENAI_BASE_URL="https://inference.local/v1")


class ContainerEgress(ContainerNode):
    def test_attach_found_the_bridge_from_the_default_route(self):
        self.assertIn("redirected via %s (brA)" % GATEWAY, self.attach_a)

    def test_allowed_name_is_forwarded_through_the_masquerade(self):
        for name, c in self.containers():
            got = c.getaddrinfo(self.resolv, ALLOWED_NAME)
            self.assertEqual(got[ALLOWED_NAME], [WEB], name)
            before = len(self.web.accepted)
            self.assertEqual(c.probe("connect %s %d tcp" % (WEB, self.web.port)), ["OK"], name)
            # Upstream saw the node's uplink address, never the container's.
            self.assertEqual([p[0] for p in self.web.accepted[before:]], [UPLINK], name)

    def test_denied_address_is_eperm_and_its_listener_sees_nothing(self):
        since = len(self.agent.audit_records())
        for name, c in self.containers():
            got = c.probe("connect %s %d tcp" % (DENIED, self.denied.port),
                          "connect %s %d udp" % (DENIED, self.denied_udp.port))
            self.assertEqual(got, ["EPERM", "EPERM"], name)
        self.assertEqual(self.denied.accepted, [])
        self.assertEqual(self.denied_udp.received, [])
        recs = self.agent.wait_audit(lambda r: r.get("dst") == DENIED, since=since, count=4)
        for name, c in self.containers():
            mine = [r for r in recs if r["cgroup_id"] == c.cgroup_id]
            self.assertEqual(sorted((r["event"], r["protocol"]) for r in mine),
                             [("connect", "tcp"), ("sendmsg", "udp")], "%s: %s" % (name, recs))
            self.assertTrue(all(r["verdict"] == "deny" for r in mine), mine)

    def test_denied_name_is_nxdomain_and_recorded_per_container(self):
        since = len(self.agent.audit_records())
        for name, c in self.containers():
            got = c.getaddrinfo(self.resolv, DENIED_NAME)
            self.assertTrue(str(got[DENIED_NAME]).startswith("error"), "%s: %s" % (name, got))
        recs = self.agent.wait_audit(lambda r: r.get("event") == "dns" and r.get("name") == DENIED_NAME,
                                     since=since, count=2)
        self.assertEqual({r["cgroup_id"] for r in recs}, {self.a.cgroup_id, self.b.cgroup_id}, recs)

    def test_curl_reaches_inference_local_with_only_the_ca(self):
        since = len(self.agent.audit_records())
        for name, c in self.containers():
            r = c.run(["curl", "-sS", "--fail-with-body", "-m", "20", "https://inference.local/v1/chat/completions",
                       "-H", "content-type: application/json",
                       "-d", '{"model":"gpt-x-%s","messages":[{"role":"user","content":"hi"}]}' % name],
                      resolv_conf=self.resolv, env=self.ca_env())
            self.assertEqual(r.returncode, 0, "%s: %s %s" % (name, r.stdout, r.stderr))
            self.assertEqual(json.loads(r.stdout)["model"], "served-model")
            self.assertEqual(self.provider.rec.last()["headers"].get("authorization"), "Bearer " + SECRET)
        recs = self.agent.wait_audit(lambda r: r.get("event") == "inference", since=since, count=2)
        by_model = {r["model_requested"]: r["cgroup_id"] for r in recs}
        self.assertEqual(by_model, {"gpt-x-A": self.a.cgroup_id, "gpt-x-B": self.b.cgroup_id}, recs)
        for r in recs:
            self.assertEqual((r.get("credential"), r.get("credential_header"), r.get("credential_key")),
                             ("injected", "authorization", "OPENAI_API_KEY"), r)
        with open(self.agent.audit_log) as f:
            self.assertNotIn(SECRET, f.read())

    def test_identical_four_tuples_at_once_keep_their_own_sandbox(self):
        """Both containers call inference.local at the same time from the same
        address AND source port: two connections with one 4-tuple, one per
        namespace. Each is answered, and each record names its own cgroup."""
        since = len(self.agent.audit_records())
        procs = {}
        for name, c in self.containers():
            argv = in_container_argv(c.netns, c.cg.path, [
                "nsenter", "--user=" + c.userns, "curl", "-sS", "--fail-with-body", "-m", "20", "--local-port",
                "40123", "https://inference.local/v1/chat/completions", "-H", "content-type: application/json",
                "-d", '{"model":"same-port-%s","messages":[{"role":"user","content":"hi"}]}' % name], self.resolv)
            procs[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                           env=dict(os.environ, **self.ca_env()))
        for name, p in procs.items():
            out, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, "%s: %s %s" % (name, out, err))
        recs = self.agent.wait_audit(lambda r: r.get("event") == "inference" and
                                     str(r.get("model_requested")).startswith("same-port-"), since=since, count=2)
        self.assertEqual({r["model_requested"]: r["cgroup_id"] for r in recs},
                         {"same-port-A": self.a.cgroup_id, "same-port-B": self.b.cgroup_id}, recs)

    def test_openai_node_sdk_reaches_inference_local(self):
        for name, c in self.containers():
            for mode in ("plain", "stream"):
                r = c.run(["node", os.path.join(NODE_DIR, "openai_client.js"), mode], resolv_conf=self.resolv,
                          env=self.sdk_env())
                self.assertEqual(r.returncode, 0, "%s %s: %s" % (name, mode, r.stderr))
                out = json.loads(r.stdout)
                if mode == "plain":
                    self.assertEqual(out["content"], "hello from upstream", name)
                else:
                    self.assertEqual("".join(e["text"] for e in out["events"]), "tok0 tok1 tok2 tok3 tok4 ")

    def test_openai_python_sdk_reaches_inference_local(self):
        if subprocess.run([sys.executable, "-c", "import openai"], capture_output=True).returncode != 0:
            self.skipTest("the official OpenAI Python SDK (`openai`) is not installed: Debian 12 does not package "
                          "it and PyPI is not reachable from this machine (scripts/install-deps.sh installs "
                          "python3-openai where Debian has it); the Node SDK test covers the same path")
        for name, c in self.containers():
            r = c.run([sys.executable, "-c", PY_SDK], resolv_conf=self.resolv, env=self.sdk_env())
            self.assertEqual(r.returncode, 0, "%s: %s" % (name, r.stderr))
            self.assertEqual(json.loads(r.stdout), {"content": "hello from upstream", "model": "served-model"})


class ContainerEscapes(ContainerNode):
    """Root of container A's user namespace (CAP_NET_ADMIN and CAP_NET_RAW in
    its network namespace) tries to get out. Each attempt runs in the cgroup
    (the attached sandbox) and, as a control, from the same namespaces outside
    the cgroup, where only the agent's own checks stand."""

    TAG = "ctresc"

    def agent_ports(self):
        ports = self.agent.status()["agent"]
        return [ports["terminator_port"], ports["relay_port"], ports["plain_http_port"]]

    def refused_records(self, since):
        return self.agent.wait_audit(lambda r: r.get("event") == "redirect" and r.get("verdict") == "refused",
                                     since=since)

    def test_escape_raw_and_packet_sockets_from_the_namespace_root(self):
        """Raw inet sockets: refused by cgroup/sock_create in every namespace."""
        kinds = ["socket AF_INET SOCK_RAW 6", "socket AF_INET SOCK_RAW 17", "socket AF_INET SOCK_RAW 1",
                 "socket AF_INET6 SOCK_RAW 58", "socket AF_INET6 SOCK_RAW 6"]
        since = len(self.agent.audit_records())
        self.assertEqual(self.a.probe(*kinds), ["EPERM"] * len(kinds))
        recs = self.agent.wait_audit(lambda r: r.get("event") == "socket" and r.get("cgroup_id") == self.a.cgroup_id,
                                     since=since, count=len(kinds))
        self.assertEqual(len(recs), len(kinds), recs)
        # The control: the capability is there, the refusal is the sandbox's hook.
        self.assertEqual(self.a.probe(*kinds, in_cgroup=False), ["OK"] * len(kinds))

    def test_escape_packet_socket_from_the_namespace_root_is_refused(self):
        """Packet sockets are not inet sockets: lsm_cgroup refuses them where the
        kernel runs it. Elsewhere a namespace root's hand-built datagram leaves
        the container through the link, and the node-side guard on A's bridge
        judges it with A's policy: the one to the denied server is dropped and
        audited, the same kind of datagram to an allowed address is forwarded
        (so the path, the masquerade and the hand-built packet all work: only
        the policy stops the first)."""
        mac = sh(IP, "-o", "link", "show", "brA").split("link/ether ")[1].split()[0]
        denied = "packet-udp eth0 %s %s %s %d" % (mac, INSIDE, DENIED, self.denied_udp.port)
        allowed = "packet-udp eth0 %s %s %s %d" % (mac, INSIDE, WEB, self.web_udp.port)
        lsm = self.agent.status()["agent"].get("packet_socket_refusal")
        since = len(self.agent.audit_records())
        out = self.a.probe(allowed, denied)
        if lsm:
            self.assertEqual(out, ["EPERM", "EPERM"])
            self.assertEqual(self.denied_udp.received, [])
            return
        self.assertEqual(out, ["SENT", "SENT"])
        self.assertTrue(harness.wait_until(lambda: list(self.web_udp.received), timeout=5),
                        "the allowed hand-built datagram never reached %s: the guard (or the path) drops allowed "
                        "traffic, so the refusal below would prove nothing" % WEB)
        recs = self.agent.wait_audit(lambda r: r.get("event") == "forwarded" and r.get("cgroup_id") == self.a.cgroup_id
                                     and r.get("dst") == DENIED and r.get("port") == self.denied_udp.port,
                                     since=since)
        self.assertTrue(recs, "no audit record names %s's dropped datagram to %s" % (self.a.cg.path, DENIED))
        self.assertEqual((recs[0]["verdict"], recs[0]["protocol"]), ("deny", "udp"), recs[0])
        self.assertEqual(self.denied_udp.received, [], "a packet-socket datagram reached the denied server")

    def test_escape_straight_to_the_agents_listeners_and_responders(self):
        dns_a, dns_b = self.dns_port(self.a), self.dns_port(self.b)
        steps = ["connect %s %d tcp" % (GATEWAY, p) for p in self.agent_ports()]
        steps += ["connect %s %d udp" % (GATEWAY, dns_a), "connect %s %d udp" % (GATEWAY, dns_b)]
        self.assertEqual(self.a.probe(*steps), ["EPERM"] * len(steps))
        since = len(self.agent.audit_records())
        out = self.a.probe(*steps, in_cgroup=False)
        # No original-destination record: the listeners close at once (and say so) ...
        for port, got in zip(self.agent_ports(), out):
            self.assertNotIn("HTTP", got, port)
        self.assertGreaterEqual(len(self.refused_records(since)), 1, out)
        # ... and B's responder is bound to B's bridge: A's datagram never reaches it.
        self.assertIn(out[-1], ("TIMEOUT", "ECONNREFUSED"))

    def test_escape_spoofing_a_neighbours_and_the_agents_address(self):
        """A takes 10.88.0.3 (a neighbour on a shared bridge) and forges the
        agent's own 10.88.0.1 as source (IP_FREEBIND) to reach the agent's
        listeners and B's DNS responder without a redirect. (B's address is
        A's own: the identical addresses are ContainerEgress.)"""
        dns_b = self.dns_port(self.b)
        term = self.agent_ports()[0]
        tries = ["connect %s %d tcp %s" % (GATEWAY, term, NEIGHBOUR),
                 "connect %s %d udp %s" % (GATEWAY, dns_b, NEIGHBOUR),
                 "connect %s %d tcp %s" % (GATEWAY, term, GATEWAY), "connect %s %d udp %s" % (GATEWAY, dns_b, GATEWAY)]
        try:
            out = self.a.probe("ip addr add %s/24 dev eth0" % NEIGHBOUR, *tries)
            self.assertEqual(out, ["OK"] + ["EPERM"] * 4)
            since = len(self.agent.audit_records())
            out = self.a.probe(*tries, in_cgroup=False)
            self.assertNotIn("HTTP", out[0])
            self.assertIn(out[1], ("TIMEOUT", "ECONNREFUSED"), out)
            # The agent's own address as source: unroutable in A, a martian at the bridge.
            for got in out[2:]:
                self.assertIn(got, ("TIMEOUT", "ENETUNREACH", "EINVAL"), out)
            if out[0].startswith("OK"):
                self.assertTrue(self.refused_records(since), "the listener served a spoofed, unredirected connection")
        finally:
            self.a.admin("addr", "del", NEIGHBOUR + "/24", "dev", "eth0", check=False)

    def test_escape_adding_routes(self):
        """New routes change where packets go, not what the hooks decide: a
        route to the node's own addresses or a direct route to the denied
        server still ends in EPERM, and neither listener sees a thing."""
        node_service = CountingListener(harness.FAKE_RESOLVER)
        self.addCleanup(node_service.close)
        routes = ["%s/32 via %s" % (harness.FAKE_RESOLVER, GATEWAY), "192.0.2.128/30 via %s" % GATEWAY,
                  "%s/32 dev eth0" % DENIED]
        try:
            out = self.a.probe(*["ip route add " + r for r in routes],
                               "connect %s %d tcp" % (harness.FAKE_RESOLVER, node_service.port),
                               "connect %s %d tcp" % (UPLINK, node_service.port),
                               "connect %s %d tcp" % (DENIED, self.denied.port))
            self.assertEqual(out, ["OK"] * 3 + ["EPERM"] * 3)
        finally:
            for r in routes:
                self.a.admin("route", "del", *r.split(), check=False)
        self.assertEqual(node_service.accepted, [])
        self.assertEqual(self.denied.accepted, [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
