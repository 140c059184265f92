"""IPv6 for sandboxes in their own network namespace (#10): `run --netns`
gives the sandbox a ULA /64 with a default route through the agent, forwards
and masquerades its allowed IPv6 egress; `attach --netns` finds the agent's
IPv6 address on the sandbox's veth and its redirects (inference.local, DNS,
inspect) land there. Escapes from the namespace: v4-mapped addresses, the
agent's link-local address, forged IPv6 source addresses.

Layout (all namespaces made here, fake addresses only):
  run sandbox ns   eth0 fd00:7e57:0:N::2/64 (+ 192.0.2.64/26 pool) ── redirN ── this ns (agent)
  containers       eth0 fd00:c0::2/64 (identical) ── rk6a / rk6b fd00:c0::1/64 (identical) ── this ns
  this ns          inet6N 2001:db8:1::1/64 ── eth0 2001:db8:1::2 ── internet ns (2001:db8:ff::/64 on lo)
                   inet6N 192.0.2.129/30 ── eth0 192.0.2.130 ── internet ns (192.0.2.200 on lo)
"""
import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_dns import A, AAAA, FakeDns  # noqa: E402
from harness import Agent, Cgroup, write_policy  # noqa: E402
from test_run import PY  # noqa: E402
from test_run_netns import IP, in_netns, nft_tables, redir_links, sh  # noqa: E402

POOL4 = "192.0.2.64/26"
POOL6 = "fd00:7e57::/48"
VIP6 = "2001:db8:5eed::1"        # inference.local's AAAA (redird --inference-vip6)
UPLINK6, INET_END6 = "2001:db8:1::1", "2001:db8:1::2"
SERVER6 = "2001:db8:ff::80"      # allowed upstream, on the internet namespace's lo
DENIED6 = "2001:db8:ff::81"      # a real listener the policy does not allow
SPOOF6 = "2001:db8:ff::99"       # a source address no sandbox owns
SERVER4 = "192.0.2.200"          # IPv4 upstream, for the v4-mapped escape
RESOLVER6 = "2001:db8:53::53"    # what the sandboxes' resolv.conf names (never a real server)
AGENT6 = "fd00:c0::1"            # the host side of every container's veth (identical)
INSIDE6 = "fd00:c0::2"           # every container's own address (identical)
ZONE = {
    "v6.allowed.example": [(AAAA, SERVER6, 300)],
    "v6.denied.example": [(AAAA, DENIED6, 300)],
}

# The sandboxed side: prints READY {...}, then runs one JSON step per stdin
# line and prints its JSON result, until EOF.
PROBE = r"""
import errno, json, os, socket, ssl, struct, subprocess, sys
IPV6_FREEBIND = 78

def sockaddr(addr, port):
    # (addr, port, flow, scope): "fe80::1%eth0" gets its interface.
    return socket.getaddrinfo(addr, port, socket.AF_INET6, socket.SOCK_DGRAM)[0][4]

def outcome(step):
    # What a client sees: "OK"/"SENT", TIMEOUT, or the errno's name.
    try:
        return step()
    except socket.timeout:
        return "TIMEOUT"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))

def open6(kind, src):
    # SRC: a source address this host need not have (IPV6_FREEBIND needs no privilege).
    s = socket.socket(socket.AF_INET6, kind)
    s.settimeout(2)
    if src:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        s.bind((src, 0))
    return s

def tcp6(addr, port, src=None):
    def step():
        with open6(socket.SOCK_STREAM, src) as s:
            s.connect(sockaddr(addr, port))
        return "OK"
    return outcome(step)

def udp6(addr, port, src=None):
    def step():
        with open6(socket.SOCK_DGRAM, src) as s:
            s.sendto(b"probe", sockaddr(addr, port))
        return "SENT"
    return outcome(step)

def query(name, qtype):
    q = struct.pack("!HHHHHH", 0x5a5a, 0x0100, 1, 0, 0, 0)
    for l in name.split("."):
        q += bytes([len(l)]) + l.encode()
    return q + b"\0" + struct.pack("!HH", qtype, 1)

def dns6(resolver, name, qtype):
    # A raw question: the reply's source and its AAAA records.
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.sendto(query(name, qtype), (resolver, 53))
        data, src = s.recvfrom(4096)
    except socket.timeout:
        return {"error": "TIMEOUT"}
    except OSError as e:
        return {"error": errno.errorcode.get(e.errno, str(e))}
    rcode = data[3] & 15
    an = struct.unpack("!H", data[6:8])[0]
    off = 12
    while data[off]:
        off += data[off] + 1
    off += 5
    out = []
    for _ in range(an):
        if data[off] & 0xc0 == 0xc0:
            off += 2
        else:
            while data[off]:
                off += data[off] + 1
            off += 1
        t, _c, _ttl, n = struct.unpack("!HHIH", data[off:off + 10])
        rd = data[off + 10:off + 10 + n]
        off += 10 + n
        if t == 28:
            out.append(socket.inet_ntop(socket.AF_INET6, rd))
        elif t == 1:
            out.append(socket.inet_ntop(socket.AF_INET, rd))
    return {"from": [src[0], src[1]], "rcode": rcode, "answers": out}

def gai6(name):
    try:
        return sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET6, socket.SOCK_STREAM)})
    except socket.gaierror as e:
        return "error %d" % e.errno

def https6(name, path, body):
    # Python's own TLS over IPv6 only, to the AAAA of NAME.
    addr = socket.getaddrinfo(name, 443, socket.AF_INET6, socket.SOCK_STREAM)[0][4][0]
    ctx = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") or None)
    raw = socket.create_connection((addr, 443), timeout=10)
    peer = raw.getpeername()[0]
    s = ctx.wrap_socket(raw, server_hostname=name)
    req = ("POST %s HTTP/1.1\r\nHost: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
           "connection: close\r\n\r\n%s" % (path, name, len(body), body))
    s.sendall(req.encode())
    got = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        got += d
    return {"addr": addr, "peer": peer, "reply": got.decode(errors="replace")}

def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return {"rc": r.returncode, "out": r.stdout, "err": r.stderr}

def read(path):
    with open(path) as f:
        return f.read().strip()

ready = {"netns": os.readlink("/proc/self/ns/net"), "cgroup_id": os.stat(os.environ["REDIR_SANDBOX"]).st_ino}
print("READY " + json.dumps(ready), flush=True)
for line in sys.stdin:
    kind, *args = json.loads(line)
    try:
        res = globals()[kind](*args)
    except Exception as e:
        res = {"exception": repr(e)}
    print(json.dumps(res), flush=True)
"""


def ip6_addrs(dev, scope="global", netns=None):
    """IPv6 addresses (without prefix) of DEV, with "tentative" kept as a flag."""
    argv = [IP, "-6", "-o", "addr", "show", "dev", dev, "scope", scope]
    if netns:
        argv = ["nsenter", "--net=" + netns] + argv
    out = []
    for line in sh(*argv).splitlines():
        w = line.split()
        out.append((w[w.index("inet6") + 1].split("/")[0], "tentative" in w))
    return out


def member_of(ns_ident):
    """A pid whose network namespace is NS_IDENT ("net:[N]")."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink("/proc/%s/ns/net" % pid) == ns_ident:
                return int(pid)
        except OSError:
            continue
    raise AssertionError("no process is in namespace " + ns_ident)


class Listener6:
    """A TCP or UDP server on ADDR (made inside NETNS when given) that records
    who reached it; TCP ones answer with the address and port they were
    reached at, so a client can tell where it really landed."""

    def __init__(self, addr, udp=False, netns=None, port=0):
        def make():
            fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            if not udp:
                s.listen(512)
            return s
        self.sock = in_netns(netns, make) if netns else make()
        self.port = self.sock.getsockname()[1]
        self.seen = []
        threading.Thread(target=self._udp if udp else self._tcp, daemon=True).start()

    def _tcp(self):
        while True:
            try:
                c, peer = self.sock.accept()
            except OSError:
                return
            self.seen.append(peer[0])
            here = c.getsockname()
            try:
                c.sendall(("%s %d\n" % (here[0], here[1])).encode())
            except OSError:
                pass
            c.close()

    def _udp(self):
        while True:
            try:
                _, peer = self.sock.recvfrom(2048)
            except OSError:
                return
            self.seen.append(peer[0])

    def close(self):
        self.sock.close()


class V6World(unittest.TestCase):
    """This namespace as the agent's (with an IPv6 inference address), an
    internet namespace beyond it over IPv4 and IPv6, a fake upstream DNS."""

    TAG = "netv6"

    @classmethod
    def setUpClass(cls):
        cls.tmp, _ = harness.isolated(cls, cls.TAG)
        os.chmod(cls.tmp, 0o755)  # the sandboxed user reads its resolv.conf here
        cls.inet = "redir-e2e-inet6-%d" % os.getpid()
        cls.inet_path = "/run/netns/" + cls.inet
        cls.uplink = "inet6%d" % (os.getpid() % 10000)
        sh(IP, "netns", "add", cls.inet)
        sh(IP, "link", "add", cls.uplink, "type", "veth", "peer", "name", "eth0", "netns", cls.inet)
        sh(IP, "addr", "add", "192.0.2.129/30", "dev", cls.uplink)
        sh(IP, "-6", "addr", "add", UPLINK6 + "/64", "dev", cls.uplink, "nodad")
        sh(IP, "link", "set", cls.uplink, "up")
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", SERVER4 + "/32", "dev", "lo"],
                    ["-6", "addr", "add", SERVER6 + "/128", "dev", "lo", "nodad"],
                    ["-6", "addr", "add", DENIED6 + "/128", "dev", "lo", "nodad"],
                    ["addr", "add", "192.0.2.130/30", "dev", "eth0"],
                    ["-6", "addr", "add", INET_END6 + "/64", "dev", "eth0", "nodad"], ["link", "set", "eth0", "up"],
                    ["route", "add", "default", "via", "192.0.2.129"],
                    ["-6", "route", "add", "default", "via", UPLINK6]):
            sh(IP, "-n", cls.inet, *cmd)
        sh(IP, "route", "add", "default", "via", "192.0.2.130")
        sh(IP, "-6", "route", "add", "2001:db8:ff::/64", "via", INET_END6)
        sh(IP, "-6", "route", "add", "default", "via", INET_END6)
        cls.fake_dns = FakeDns(harness.FAKE_RESOLVER, ZONE)
        cls.agent = Agent(cls.TAG, extra_args=["--inference-vip6", VIP6]).start()
        cls.agent.ctl("provider", "create", "--name", "demo", "--type", "mock")
        cls.agent.ctl("inference", "set", "--provider", "demo", "--model", "demo-model")
        cls.ca = os.path.join(cls.tmp, "ca.pem")
        cls.agent.ctl("ca", "export", "--out", cls.ca)
        cls.resolv = harness.write_resolv_conf(cls.tmp, nameserver=RESOLVER6)

    @classmethod
    def tearDownClass(cls):
        cls.fake_dns.close()
        cls.agent.cleanup()
        subprocess.run([IP, "netns", "del", cls.inet], capture_output=True)

    def inference_audit(self, cgroup_id, since):
        recs = self.agent.wait_audit(lambda x: x.get("event") == "inference" and x.get("cgroup_id") == cgroup_id,
                                     since=since)
        self.assertTrue(recs, self.agent.audit_records()[since:])
        self.assertEqual((recs[-1]["model_requested"], recs[-1]["model_used"]), ("gpt-v6", "demo-model"))


CHAT = json.dumps({"model": "gpt-v6", "messages": [{"role": "user", "content": "hi"}]})


class RunSandbox:
    """`redirctl run --netns` holding PROBE, with RESOLV over /etc/resolv.conf."""

    def __init__(self, env, resolv, policy=None):
        script = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
        argv = [harness.REDIRCTL, "run", "--netns"] + (["--policy", policy] if policy else []) + ["--", PY, "-c", PROBE]
        self.proc = subprocess.Popen(["unshare", "--mount", "sh", "-c", script, "sh", resolv] + argv,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            self.proc.kill()
            raise AssertionError("run --netns did not start: %r %s" % (line, self.proc.stderr.read()))
        self.ready = json.loads(line[6:])
        self.cgroup_id = self.ready["cgroup_id"]
        self.netns = "/proc/%d/ns/net" % member_of(self.ready["netns"])
        # redir<slot>, the slot numbering the /64 too: fd00:7e57:0:<slot>::2.
        self.addr6 = ip6_addrs("eth0", netns=self.netns)[0][0]
        self.host_if = "redir%d" % int.from_bytes(ipaddress.IPv6Address(self.addr6).packed[6:8], "big")

    def do(self, *step):
        self.proc.stdin.write(json.dumps(list(step)) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("the sandbox probe died: %s" % self.proc.stderr.read())
        return json.loads(line)

    def close(self):
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
        return self.proc.returncode


class RunNetnsV6(V6World):
    TAG = "runv6"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.server = Listener6(SERVER6, netns=cls.inet_path)
        cls.denied = Listener6(DENIED6, netns=cls.inet_path)
        cls.udp = Listener6(SERVER6, udp=True, netns=cls.inet_path)
        cls.server4 = Listener6(SERVER4, netns=cls.inet_path)
        cls.denied4 = Listener6(SERVER4, netns=cls.inet_path)
        cls.host_sentinel = Listener6("::")  # every address of the agent's namespace
        cls.policy = write_policy(cls.tmp, "v6-egress", {"allow": [
            {"cidr": SERVER6 + "/128", "ports": [cls.server.port]},
            {"cidr": SERVER6 + "/128", "ports": [cls.udp.port], "protocol": "udp"},
            {"host": "v6.allowed.example", "ports": [cls.server.port]},
            {"cidr": SERVER4 + "/32", "ports": [cls.server4.port]},
            {"cidr": UPLINK6 + "/128"},
            # Wide on purpose: the namespace's own walls must hold where policy would allow.
            {"cidr": "fd00::/8"}]})
        cls.env = dict(os.environ, REDIR_SOCKET=cls.agent.socket, REDIR_NETNS_POOL=POOL4, REDIR_NETNS_POOL6=POOL6)
        cls.sb = RunSandbox(cls.env, cls.resolv, cls.policy)

    @classmethod
    def tearDownClass(cls):
        rc = cls.sb.close()
        harness.close_all(cls.server, cls.denied, cls.udp, cls.server4, cls.denied4, cls.host_sentinel)
        super().tearDownClass()
        if rc != 0:
            raise AssertionError("run --netns exited %s" % rc)

    def test_sandbox_has_a_ula_64_a_v6_default_route_and_ignores_router_advertisements(self):
        addrs = [a for a, _ in ip6_addrs("eth0", netns=self.sb.netns)]
        self.assertEqual(len(addrs), 1, addrs)
        a = ipaddress.IPv6Address(addrs[0])
        self.assertTrue(a in ipaddress.IPv6Network(POOL6) and a.packed[8:] == bytes(7) + b"\2", addrs)
        gw = str(a - 1)
        self.assertEqual([a for a, _ in ip6_addrs(self.sb.host_if)], [gw])
        routes = sh("nsenter", "--net=" + self.sb.netns, IP, "-6", "route", "show", "default")
        self.assertIn("default via %s dev eth0" % gw, routes)
        for knob in ("accept_ra",):
            self.assertEqual(self.sb.do("read", "/proc/sys/net/ipv6/conf/eth0/" + knob), "0")
            with open("/proc/sys/net/ipv6/conf/%s/%s" % (self.sb.host_if, knob)) as f:
                self.assertEqual(f.read().strip(), "0", "the agent's side would learn routes from the sandbox")
        # No duplicate address detection wait: usable at once, never tentative.
        self.assertFalse(any(t for _, t in ip6_addrs("eth0", netns=self.sb.netns)))

    def test_inference_local_over_v6_with_curl_and_python(self):
        before = len(self.agent.audit_records())
        r = self.sb.do("run", ["curl", "-6", "-sS", "--fail-with-body", "-m", "20",
                               "https://inference.local/v1/chat/completions",
                               "-H", "content-type: application/json", "-d", CHAT])
        self.assertEqual(r["rc"], 0, r)
        self.assertIn("mock response", r["out"])
        self.inference_audit(self.sb.cgroup_id, before)
        before = len(self.agent.audit_records())
        r = self.sb.do("https6", "inference.local", "/v1/chat/completions", CHAT)
        self.assertEqual(r.get("addr"), VIP6, r)
        self.assertEqual(r["peer"], VIP6, "getpeername must show the address dialled")
        self.assertIn("mock response", r["reply"])
        self.inference_audit(self.sb.cgroup_id, before)

    def test_dns_over_v6_answers_aaaa_from_the_address_asked(self):
        r = self.sb.do("dns6", RESOLVER6, "v6.allowed.example", 28)
        self.assertEqual(r.get("from"), [RESOLVER6, 53], r)
        self.assertEqual(r["answers"], [SERVER6])
        r = self.sb.do("dns6", RESOLVER6, "inference.local", 28)
        self.assertEqual(r.get("answers"), [VIP6], r)
        before = len(self.agent.audit_records())
        self.assertEqual(self.sb.do("dns6", RESOLVER6, "v6.denied.example", 28).get("rcode"), 3)  # NXDOMAIN
        recs = self.agent.wait_audit(lambda x: x.get("event") == "dns" and x.get("name") == "v6.denied.example",
                                     since=before)
        self.assertTrue(recs and recs[-1]["cgroup_id"] == self.sb.cgroup_id, recs)
        # glibc with `nameserver <IPv6>` in resolv.conf checks the answer's source itself.
        self.assertEqual(self.sb.do("gai6", "v6.allowed.example"), [SERVER6])
        self.assertTrue(str(self.sb.do("gai6", "v6.denied.example")).startswith("error"))
        self.assertEqual(self.sb.do("tcp6", SERVER6, self.server.port), "OK")

    def test_allowed_v6_egress_is_forwarded_and_masqueraded(self):
        before = len(self.server.seen)
        self.assertEqual(self.sb.do("tcp6", SERVER6, self.server.port), "OK")
        self.assertTrue(harness.wait_until(lambda: self.server.seen[before:], 3))
        self.assertEqual(self.server.seen[before:], [UPLINK6], "the internet must see the agent's uplink only")
        before = len(self.udp.seen)
        self.assertEqual(self.sb.do("udp6", SERVER6, self.udp.port), "SENT")
        self.assertTrue(harness.wait_until(lambda: self.udp.seen[before:] == [UPLINK6], 3), self.udp.seen)

    def test_denied_v6_address_is_eperm_with_an_audit_event_naming_the_sandbox(self):
        before = len(self.agent.audit_records())
        self.assertEqual(self.sb.do("tcp6", DENIED6, self.denied.port), "EPERM")
        self.assertEqual(self.denied.seen, [])
        recs = self.agent.wait_audit(lambda r: r.get("event") == "connect" and r.get("dst") == DENIED6, since=before)
        self.assertTrue(recs, self.agent.audit_records()[before:])
        self.assertEqual((recs[-1]["cgroup_id"], recs[-1]["verdict"]), (self.sb.cgroup_id, "deny"))

    def test_escape_v4_mapped_v6_address_to_a_denied_v4_address(self):
        # The same IPv4 host, through an AF_INET6 socket: the allowed port works...
        self.assertEqual(self.sb.do("tcp6", "::ffff:" + SERVER4, self.server4.port), "OK")
        # ...the port the policy does not name does not, and no packet left.
        self.assertEqual(self.sb.do("tcp6", "::ffff:" + SERVER4, self.denied4.port), "EPERM")
        self.assertEqual(self.sb.do("udp6", "::ffff:" + SERVER4, self.denied4.port), "EPERM")
        self.assertEqual(self.denied4.seen, [])

    def test_escape_link_local_address_of_the_agents_veth(self):
        self.assertTrue(harness.wait_until(lambda: not any(t for _, t in ip6_addrs(self.sb.host_if, "link")), 5))
        ll = ip6_addrs(self.sb.host_if, "link")[0][0]
        port = self.agent.status()["agent"]["terminator_port"]
        for p in (port, self.host_sentinel.port):
            self.assertEqual(self.sb.do("tcp6", ll + "%eth0", p), "EPERM", p)
        # Outside the cgroup's hooks but in its namespace (a process the
        # kernel programs never judge): the nftables table still drops it.
        probe = ("import socket,sys;s=socket.socket(socket.AF_INET6);s.settimeout(2)\n"
                 "a=socket.getaddrinfo(sys.argv[1],int(sys.argv[2]),socket.AF_INET6,socket.SOCK_STREAM)[0][4]\n"
                 "try: s.connect(a); print('OK')\nexcept OSError as e: print(type(e).__name__, e)\n")
        r = subprocess.run(["nsenter", "--net=" + self.sb.netns, PY, "-c", probe, ll + "%eth0",
                            str(self.host_sentinel.port)], capture_output=True, text=True)
        self.assertEqual(r.stdout.strip(), "TimeoutError timed out", r.stdout + r.stderr)
        self.assertEqual(self.host_sentinel.seen, [])

    def test_escape_the_hosts_other_v6_address_allowed_by_policy(self):
        """Policy names it; the host still answers nothing but the agent's address."""
        self.assertEqual(self.sb.do("tcp6", UPLINK6, self.host_sentinel.port), "TIMEOUT")
        self.assertEqual(self.host_sentinel.seen, [])

    def test_escape_forged_v6_source_address(self):
        other_sandbox = str(ipaddress.IPv6Network(POOL6)[(0x3f << 64) + 2])
        for src in (SPOOF6, other_sandbox):
            before = len(self.udp.seen)
            self.assertEqual(self.sb.do("udp6", SERVER6, self.udp.port, src), "SENT", src)
            self.assertEqual(self.sb.do("tcp6", SERVER6, self.server.port, src), "TIMEOUT", src)
            # Then an honest datagram: when it has arrived the forged one had its chance.
            self.assertEqual(self.sb.do("udp6", SERVER6, self.udp.port), "SENT")
            self.assertTrue(harness.wait_until(lambda: UPLINK6 in self.udp.seen[before:], 3))
            self.assertEqual(self.udp.seen[before:], [UPLINK6], "a forged source left the sandbox: %s" % src)


class RunNetnsV6Lifecycle(V6World):
    TAG = "runv6life"

    def setUp(self):
        self.env = dict(os.environ, REDIR_SOCKET=self.agent.socket, REDIR_NETNS_POOL=POOL4, REDIR_NETNS_POOL6=POOL6)

    def test_concurrent_runs_get_distinct_v6_prefixes_and_leave_nothing(self):
        boxes = [RunSandbox(self.env, self.resolv) for _ in range(3)]
        try:
            prefixes = {ip6_addrs("eth0", netns=b.netns)[0][0] for b in boxes}
            self.assertEqual(len(prefixes), 3, prefixes)
        finally:
            rcs = [b.close() for b in boxes]
        self.assertEqual(rcs, [0, 0, 0])
        self.assertTrue(harness.wait_until(lambda: not redir_links(), 10), redir_links())
        self.assertTrue(harness.wait_until(lambda: "redir_run_" not in nft_tables(), 10), nft_tables())

    def test_sigkill_of_run_leaves_no_v6_route_or_address(self):
        b = RunSandbox(self.env, self.resolv)
        prefix = ip6_addrs(b.host_if)[0][0].rsplit("::", 1)[0]
        b.proc.kill()
        b.proc.wait(timeout=30)
        self.assertTrue(harness.wait_until(lambda: not redir_links(), 10), redir_links())
        self.assertTrue(harness.wait_until(lambda: "redir_run_" not in nft_tables(), 10), nft_tables())
        self.assertNotIn(prefix, sh(IP, "-6", "route", "show"))
        self.assertNotIn(prefix, sh(IP, "-6", "addr", "show"))
        cgroup = os.path.join(harness.cgroup2_mount(), "redir-run-%d" % b.proc.pid)
        # The next run sweeps the abandoned (still enforced) sandbox.
        r = subprocess.run([harness.REDIRCTL, "run", "--netns", "--", "true"], capture_output=True, text=True,
                           env=self.env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.exists(cgroup))


class Container6:
    """A container as CNI plugins build one, IPv6 only: a child cgroup, a
    named namespace (/run/netns/NAME), a veth HOST_IF <-> eth0 with AGENT6
    here and INSIDE6 there (both identical for every container), a default
    route through AGENT6."""

    def __init__(self, tag, host_if):
        self.cg = Cgroup(tag)
        self.host_if = host_if
        self.name = "redir-e2e-%s-%d" % (tag, os.getpid())
        self.netns = "/run/netns/" + self.name
        sh(IP, "netns", "add", self.name)
        sh(IP, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", self.name)
        # What a careful runtime does: the container cannot route the host.
        with open("/proc/sys/net/ipv6/conf/%s/accept_ra" % host_if, "w") as f:
            f.write("0")
        sh(IP, "-6", "addr", "add", AGENT6 + "/64", "dev", host_if, "nodad")
        sh(IP, "link", "set", host_if, "up")
        for cmd in (["link", "set", "lo", "up"], ["-6", "addr", "add", INSIDE6 + "/64", "dev", "eth0", "nodad"],
                    ["link", "set", "eth0", "up"], ["-6", "route", "add", "default", "via", AGENT6, "dev", "eth0"]):
            sh(IP, "-n", self.name, *cmd)

    def popen(self, argv, resolv_conf, in_cgroup=True, **kw):
        """ARGV in the container's namespace (and cgroup, unless IN_CGROUP is
        false: a process the kernel programs never judge) with RESOLV_CONF."""
        join = 'echo $$ > "$2/cgroup.procs" && ' if in_cgroup else ""
        script = 'mount --bind "$1" /etc/resolv.conf && ' + join + 'shift 2 && exec "$@"'
        return subprocess.Popen(["nsenter", "--net=" + self.netns, "unshare", "--mount", "sh", "-c", script, "sh",
                                 resolv_conf, self.cg.path] + list(argv), text=True, **kw)

    def run(self, argv, resolv_conf, timeout=60, in_cgroup=True):
        p = self.popen(argv, resolv_conf, in_cgroup, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err

    def close(self):
        subprocess.run([IP, "link", "del", self.host_if], capture_output=True)
        subprocess.run([IP, "netns", "del", self.name], capture_output=True)
        self.cg.remove()


# N connections from fixed source ports (identical in both containers), all
# opened between a barrier and the answers; prints what each one reached.
SAME_TUPLES = r"""
import json, socket, sys
dst, port, base, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", base + i))
    s.settimeout(15)
    socks.append(s)
print("BOUND", flush=True)
sys.stdin.readline()
for s in socks:
    s.connect((dst, port))
print(json.dumps([s.makefile().readline().strip() for s in socks]))
"""


class AttachNetnsV6(V6World):
    TAG = "attachv6"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        sh(IP, "-n", cls.inet, "-6", "addr", "add", "2001:db8:ff::a/128", "dev", "lo", "nodad")
        sh(IP, "-n", cls.inet, "-6", "addr", "add", "2001:db8:ff::b/128", "dev", "lo", "nodad")
        cls.echo = Listener6("::", netns=cls.inet_path)
        cls.policy = write_policy(cls.tmp, "v6-attach", {
            "allow": [{"host": "v6.allowed.example", "ports": [443]}],
            "inspect": [{"cidr": "2001:db8:ff::/64", "ports": [cls.echo.port]}]})
        cls.a = Container6("ctr6-a", "rk6a%d" % (os.getpid() % 10000))
        # Only one veth holds AGENT6 yet: found from the namespace's IPv6 default route.
        cls.attach_a = cls.attach(cls.a)
        cls.b = Container6("ctr6-b", "rk6b%d" % (os.getpid() % 10000))
        # Now two do: named with its interface, the IPv6 address alone (no IPv4 anywhere).
        cls.attach(cls.b, "--redirect-via", AGENT6 + "%" + cls.b.host_if)

    @classmethod
    def attach(cls, c, *via):
        return cls.agent.ctl("attach", "--cgroup", c.cg.path, "--policy", cls.policy, "--netns", c.netns, *via).stdout

    @classmethod
    def tearDownClass(cls):
        for c in (cls.a, cls.b):
            cls.agent.ctl("detach", "--cgroup", c.cg.path, check=False)
        harness.close_all(cls.a, cls.b, cls.echo)
        super().tearDownClass()

    def test_attach_found_the_v6_gateway_with_rtnetlink(self):
        self.assertIn("redirected via %s (%s)" % (AGENT6, self.a.host_if), self.attach_a)

    def test_redirect_via_takes_one_address_per_ip_version_never_link_local(self):
        cg = Cgroup("v6-spare")
        try:
            ll = ip6_addrs(self.a.host_if, "link")[0][0]
            for via, says in ((["fe80::1%" + self.a.host_if], "link-local"),
                              ([AGENT6 + "%" + self.a.host_if, "fd00:c0::9"], "two IPv6"),
                              ([AGENT6 + "%" + self.a.host_if + "," + ll], "two IPv6")):
                args = ["attach", "--cgroup", cg.path, "--policy", self.policy, "--netns", self.a.netns]
                for v in via:
                    args += ["--redirect-via", v]
                r = self.agent.ctl(*args, check=False)
                self.assertNotEqual(r.returncode, 0, via)
                self.assertIn(says, r.stderr, via)
            self.assertNotIn(cg.path, [a["cgroup"] for a in self.agent.status().get("attachments", [])])
        finally:
            cg.remove()

    def test_inference_local_over_v6_from_both_containers(self):
        for c in (self.a, self.b):
            before = len(self.agent.audit_records())
            rc, out, err = c.run(["curl", "-6", "-sS", "--fail-with-body", "--cacert", self.ca, "-m", "20",
                                  "https://inference.local/v1/chat/completions", "-H",
                                  "content-type: application/json", "-d", CHAT], self.resolv)
            self.assertEqual(rc, 0, "%s: %s %s" % (c.cg.path, out, err))
            self.assertIn("mock response", out)
            self.inference_audit(os.stat(c.cg.path).st_ino, before)

    def test_dns_aaaa_through_a_v6_resolver(self):
        rc, out, err = self.a.run([PY, "-c", harness.GETADDRINFO, "v6.allowed.example", "v6.denied.example",
                                   "inference.local"], self.resolv)
        self.assertEqual(rc, 0, err)
        got = json.loads(out)
        self.assertEqual(got["v6.allowed.example"], [SERVER6])
        self.assertTrue(str(got["v6.denied.example"]).startswith("error"), got)
        self.assertIn(VIP6, got["inference.local"])

    def test_original_destination_right_for_identical_v6_addresses_in_two_namespaces(self):
        n = 100
        # Above the namespaces' ephemeral range (32768-60999): an earlier
        # test's connection in TIME_WAIT on one of these ports (its socket
        # without SO_REUSEADDR) would make the bind fail (a flake seen once).
        base = 61000
        procs = []
        for c, dst in ((self.a, "2001:db8:ff::a"), (self.b, "2001:db8:ff::b")):
            procs.append((c, dst, c.popen([PY, "-c", SAME_TUPLES, dst, str(self.echo.port), str(base), str(n)],
                                          self.resolv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE)))
        for _, _, p in procs:
            line = p.stdout.readline().strip()
            if line != "BOUND":  # it ended: wait for it, so its error is there to show
                p.wait(timeout=10)
            self.assertEqual(line, "BOUND", p.stderr.read() if p.poll() is not None else "")
        for _, _, p in procs:
            p.stdin.write("\n")
            p.stdin.flush()
        for c, dst, p in procs:
            out, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, err)
            got = json.loads(out)
            self.assertEqual(got, ["%s %d" % (dst, self.echo.port)] * n, "%s reached the other's destination" % c.cg.path)

    def test_escape_link_local_of_the_agents_veth_and_the_agent_address_directly(self):
        self.assertTrue(harness.wait_until(lambda: not any(t for _, t in ip6_addrs(self.a.host_if, "link")), 5))
        ll = ip6_addrs(self.a.host_if, "link")[0][0]
        port = self.agent.status()["agent"]["terminator_port"]
        probe = ("import errno,socket,sys;s=socket.socket(socket.AF_INET6);s.settimeout(2)\n"
                 "a=socket.getaddrinfo(sys.argv[1],int(sys.argv[2]),socket.AF_INET6,socket.SOCK_STREAM)[0][4]\n"
                 "try: s.connect(a); print('OK')\n"
                 "except OSError as e: print(errno.errorcode.get(e.errno, type(e).__name__))\n")
        for addr in (ll + "%eth0", AGENT6):
            rc, out, err = self.a.run([PY, "-c", probe, addr, str(port)], self.resolv)
            self.assertEqual(out.strip(), "EPERM", "%s: %s %s" % (addr, out, err))

    def test_escape_dns_to_the_other_containers_v6_responder(self):
        b_port = [a for a in self.agent.status()["attachments"] if a["cgroup"] == self.b.cg.path][0]["dns_port"]
        probe = ("import errno,socket,sys;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);s.settimeout(2)\n"
                 "q=b'\\x12\\x34\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x07example\\x00\\x00\\x1c\\x00\\x01'\n"
                 "try: s.sendto(q,(sys.argv[1],int(sys.argv[2]))); s.recvfrom(512); print('ANSWERED')\n"
                 "except socket.timeout: print('TIMEOUT')\n"
                 "except OSError as e: print(errno.errorcode.get(e.errno, str(e)))\n")
        rc, out, err = self.a.run([PY, "-c", probe, AGENT6, str(b_port)], self.resolv)
        self.assertEqual(out.strip(), "EPERM", err)
        # Outside the cgroup: B's responder is bound to B's veth, A's datagram never reaches it.
        rc, out, err = self.a.run([PY, "-c", probe, AGENT6, str(b_port)], self.resolv, in_cgroup=False)
        self.assertIn(out.strip(), ("TIMEOUT", "ECONNREFUSED"), err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
