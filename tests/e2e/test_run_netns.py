"""`redirctl run --netns`: the command gets its own network namespace, joined
to the agent's (this test's namespace) by a veth pair; allowed egress is
forwarded and masqueraded to an "internet" namespace beyond; nothing of the
host but the agent's address is reachable; every piece (veth, namespace,
nftables table) is gone when run ends — after SIGINT and SIGKILL too.

Layout (all namespaces made here, fake addresses only):
  sandbox ns  eth0 192.0.2.64/26 pool ── redirN ── this test's ns (agent)
  this ns     inetN 192.0.2.129/30 ── eth0 192.0.2.130 ── internet ns (192.0.2.200 on lo)
"""
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_dns import A, FakeDns  # noqa: E402
from harness import Agent, write_policy  # noqa: E402
from test_run import NODE_DIR, PY, CountingListener  # noqa: E402

POOL = "192.0.2.64/26"
INTERNET = "192.0.2.200"
UPLINK = "192.0.2.129"
IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)

# What the sandboxed command reports: its namespace, eth0's address, and the
# outcome of each "connect ADDR PORT" or "ip ARGS..." step (run in order).
PROBE = r"""
import errno, json, os, socket, subprocess, sys
out = {"netns": os.readlink("/proc/self/ns/net"), "steps": []}
r = subprocess.run([sys.argv[1], "-4", "-o", "addr", "show", "dev", "eth0"], capture_output=True, text=True)
out["eth0"] = [w for w in r.stdout.split() if "/" in w and "." in w]
for step in sys.argv[2:]:
    kind, _, rest = step.partition(" ")
    if kind == "connect":
        a, p = rest.split()
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((a, int(p))); res = "OK"
        except socket.timeout:
            res = "TIMEOUT"
        except OSError as e:
            res = errno.errorcode.get(e.errno, str(e))
        s.close()
    else:
        r = subprocess.run([sys.argv[1]] + rest.split(), capture_output=True, text=True)
        res = "OK" if r.returncode == 0 else r.stderr.strip()
    out["steps"].append(res)
r = subprocess.run([sys.argv[1], "-4", "-o", "addr", "show"], capture_output=True, text=True)
out["addrs_after"] = sorted(w for w in r.stdout.split() if "/" in w and "." in w)
r = subprocess.run([sys.argv[1], "-4", "route", "show"], capture_output=True, text=True)
out["routes_after"] = r.stdout.strip()
print(json.dumps(out))
"""

# Prints its namespace and eth0 address, then waits for a line on stdin.
HOLD = r"""
import os, subprocess, sys
r = subprocess.run([sys.argv[1], "-4", "-o", "addr", "show", "dev", "eth0"], capture_output=True, text=True)
addr = [w for w in r.stdout.split() if "/" in w and "." in w]
print(os.readlink("/proc/self/ns/net"), addr[0] if addr else "-", flush=True)
try:
    sys.stdin.readline()
except KeyboardInterrupt:
    sys.exit(130)
"""


def sh(*argv):
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError("%s failed: %s" % (" ".join(argv), r.stderr))
    return r.stdout


def in_netns(path, fn):
    """FN() called on a thread inside the namespace at PATH; sockets it opens stay there."""
    box = {}

    def body():
        fd = os.open(path, os.O_RDONLY)
        try:
            if _libc.setns(fd, CLONE_NEWNET) != 0:
                box["error"] = OSError(ctypes.get_errno(), "setns " + path)
                return
            box["value"] = fn()
        except Exception as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e
        finally:
            os.close(fd)
    t = threading.Thread(target=body)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def nft(commands):
    """Runs COMMANDS (nft syntax) in this namespace through libnftables; returns
    their output, raises with nftables' message when it refuses them."""
    lib = ctypes.CDLL("libnftables.so.1")
    lib.nft_ctx_new.restype = ctypes.c_void_p
    for f in ("nft_ctx_buffer_output", "nft_ctx_buffer_error", "nft_ctx_free"):
        getattr(lib, f).argtypes = [ctypes.c_void_p]
    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    for f in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
        getattr(lib, f).argtypes = [ctypes.c_void_p]
        getattr(lib, f).restype = ctypes.c_char_p
    ctx = lib.nft_ctx_new(0)
    lib.nft_ctx_buffer_output(ctx)
    lib.nft_ctx_buffer_error(ctx)
    rc = lib.nft_run_cmd_from_buffer(ctx, commands.encode())
    out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode()
    err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode()
    lib.nft_ctx_free(ctx)
    if rc != 0:
        raise AssertionError("nftables refused %r: %s" % (commands[:60], err))
    return out


def nft_tables():
    """`nft list tables` of this namespace."""
    return nft("list tables")


def redir_links():
    return sorted(l.split(":")[1].strip().split("@")[0] for l in sh(IP, "-o", "link", "show").splitlines()
                  if l.split(":")[1].strip().startswith("redir"))


def holders_of(ns_ident):
    """Pids whose namespace, or one of whose descriptors, is NS_IDENT ("net:[N]")."""
    out = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            links = [os.readlink("/proc/%s/task/%s/ns/net" % (pid, t)) for t in os.listdir("/proc/%s/task" % pid)]
            fds = "/proc/%s/fd" % pid
            links += [os.readlink(os.path.join(fds, fd)) for fd in os.listdir(fds)]
        except OSError:
            continue
        if ns_ident in links:
            out.add(int(pid))
    return out


class NetnsWorld(unittest.TestCase):
    """This namespace as the agent's, an internet namespace beyond it, one agent."""

    TAG = "runnetns"
    ZONE = {}

    @classmethod
    def setUpClass(cls):
        harness.enter_netns()
        cls.tmp = tempfile.mkdtemp(prefix="redir-e2e-%s-" % cls.TAG)
        os.chmod(cls.tmp, 0o755)
        cls.inet = "redir-e2e-inet-%d" % os.getpid()
        cls.uplink = "inet%d" % (os.getpid() % 100000)
        sh(IP, "netns", "add", cls.inet)
        sh(IP, "link", "add", cls.uplink, "type", "veth", "peer", "name", "eth0", "netns", cls.inet)
        sh(IP, "addr", "add", UPLINK + "/30", "dev", cls.uplink)
        sh(IP, "link", "set", cls.uplink, "up")
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", INTERNET + "/32", "dev", "lo"],
                    ["addr", "add", "192.0.2.130/30", "dev", "eth0"], ["link", "set", "eth0", "up"],
                    ["route", "add", "default", "via", UPLINK]):
            sh(IP, "-n", cls.inet, *cmd)
        sh(IP, "route", "add", "default", "via", "192.0.2.130")
        cls.server = in_netns("/run/netns/" + cls.inet, lambda: CountingListener(INTERNET))
        cls.fake_dns = FakeDns(harness.FAKE_RESOLVER, cls.ZONE)
        cls.agent = Agent(cls.TAG).start()
        cls.env = dict(os.environ, REDIR_SOCKET=cls.agent.socket, REDIR_NETNS_POOL=POOL)

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls.fake_dns.close()
        cls.agent.cleanup()
        subprocess.run([IP, "netns", "del", cls.inet], capture_output=True)

    def run_netns(self, policy, argv, timeout=60, extra=(), env_extra=None):
        args = [harness.REDIRCTL, "run", "--netns"] + list(extra) + (["--policy", policy] if policy else [])
        return subprocess.run(args + ["--"] + argv, capture_output=True, text=True,
                              env=dict(self.env, **(env_extra or {})), timeout=timeout)

    def probe(self, policy, *steps, extra=()):
        r = self.run_netns(policy, [PY, "-c", PROBE, IP] + list(steps), extra=extra)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        return json.loads(r.stdout.strip().splitlines()[-1])

    def assert_nothing_left(self, ns_ident):
        self.assertTrue(harness.wait_until(lambda: not redir_links(), 10), "veth left: %s" % redir_links())
        self.assertTrue(harness.wait_until(lambda: "redir_run_" not in nft_tables(), 10),
                        "nftables table left: %s" % nft_tables())
        self.assertTrue(harness.wait_until(lambda: not holders_of(ns_ident), 10),
                        "namespace %s still held by %s" % (ns_ident, holders_of(ns_ident)))


class RunNetnsLifecycle(NetnsWorld):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.policy = write_policy(cls.tmp, "netns-egress", {"allow": [
            {"cidr": INTERNET + "/32", "ports": [cls.server.port]},
            {"cidr": "203.0.113.0/24"}, {"cidr": POOL}]})

    def test_own_namespace_address_and_masqueraded_egress(self):
        before = len(self.server.accepted)
        out = self.probe(self.policy, "connect %s %d" % (INTERNET, self.server.port))
        self.assertNotEqual(out["netns"], os.readlink("/proc/self/ns/net"))
        self.assertEqual(len(out["eth0"]), 1, out)
        addr = out["eth0"][0]
        self.assertTrue(addr.startswith("192.0.2.") and addr.endswith("/30") and 64 <= int(addr.split(".")[3][:-3]) < 128,
                        "sandbox address %s is not from pool %s" % (addr, POOL))
        self.assertEqual(out["steps"], ["OK"])
        # The internet saw this namespace's uplink address, not the sandbox's.
        peers = [p[0] for p in self.server.accepted[before:]]
        self.assertEqual(peers, [UPLINK], peers)

    def test_denied_address_eperm_with_audit_event(self):
        before = len(self.agent.audit_records())
        out = self.probe(None, "connect %s %d" % (INTERNET, self.server.port))
        self.assertEqual(out["steps"], ["EPERM"])
        recs = self.agent.wait_audit(lambda r: r.get("event") == "connect" and r.get("verdict") == "deny"
                                     and r.get("port") == self.server.port, since=before)
        self.assertTrue(recs, self.agent.audit_records()[before:])

    def test_no_cap_net_admin_inside(self):
        """Root of a user namespace or not, the command cannot change its own network."""
        mutations = ["ip addr add 192.0.2.99/32 dev eth0", "ip route replace default via 192.0.2.65",
                     "ip link set eth0 down", "ip link add dummy9 type dummy", "ip addr flush dev eth0",
                     "ip link set eth0 address 02:00:00:00:00:99"]
        for extra in ((), ("--user", "root")):
            out = self.probe(None, *mutations, extra=extra)
            for m, res in zip(mutations, out["steps"]):
                self.assertIn("Operation not permitted", res, "%s %s inside run --netns: %s" % (extra, m, res))
            self.assertEqual(len(out["addrs_after"]), 2, out)  # 127.0.0.1/8 and eth0's, unchanged
            self.assertIn("default via", out["routes_after"])

    def test_host_side_other_addresses_unreachable(self):
        """Policy allows them; the host still answers nothing but the agent's address."""
        host_lo = CountingListener("203.0.113.1")
        try:
            out = self.probe(self.policy, "connect 203.0.113.1 %d" % host_lo.port,
                             "connect %s %d" % (UPLINK, self.server.port))
            self.assertEqual(out["steps"][0], "TIMEOUT", out)
            self.assertEqual(host_lo.accepted, [])
            # Not allowed by policy at all: refused in the kernel before any packet.
            self.assertEqual(out["steps"][1], "EPERM", out)
        finally:
            host_lo.close()

    def test_concurrent_runs_get_distinct_subnets(self):
        procs = [subprocess.Popen([harness.REDIRCTL, "run", "--netns", "--", PY, "-c", HOLD, IP],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=self.env) for _ in range(3)]
        try:
            lines = [p.stdout.readline().split() for p in procs]
            self.assertTrue(all(len(l) == 2 for l in lines), lines)
            self.assertEqual(len({l[0] for l in lines}), 3, "namespaces shared: %s" % lines)
            self.assertEqual(len({l[1] for l in lines}), 3, "subnets shared: %s" % lines)
            self.assertEqual(len(redir_links()), 3, redir_links())
        finally:
            for p in procs:
                p.communicate("\n", timeout=30)
        self.assertEqual([p.returncode for p in procs], [0, 0, 0])
        for l in lines:
            self.assert_nothing_left(l[0])

    def start_holding(self):
        p = subprocess.Popen([harness.REDIRCTL, "run", "--netns", "--", PY, "-c", HOLD, IP],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.env)
        line = p.stdout.readline().split()
        self.assertEqual(len(line), 2, line + [p.stderr.read() if p.poll() is not None else ""])
        self.assertTrue(redir_links())
        self.assertIn("redir_run_", nft_tables())
        return p, line[0]

    def test_normal_exit_leaves_nothing(self):
        p, ns = self.start_holding()
        p.communicate("\n", timeout=30)
        self.assertEqual(p.returncode, 0)
        self.assert_nothing_left(ns)

    def test_sigint_to_run_leaves_nothing(self):
        p, ns = self.start_holding()
        p.send_signal(signal.SIGINT)
        p.wait(timeout=30)
        self.assert_nothing_left(ns)

    def test_sigkill_of_run_leaves_nothing(self):
        """run gets no chance to clean up: the kernel must take everything away,
        and the next run sweeps the (empty, still enforced) sandbox cgroup."""
        p, ns = self.start_holding()
        cgroup = os.path.join(harness.cgroup2_mount(), "redir-run-%d" % p.pid)
        p.kill()
        p.wait(timeout=30)
        try:
            self.assert_nothing_left(ns)
            self.assertTrue(os.path.isdir(cgroup), "the sandbox vanished before it was empty-checked")
            self.assertTrue(harness.wait_until(
                lambda: "populated 0" in open(os.path.join(cgroup, "cgroup.events")).read(), 10))
            self.assertIn(cgroup, [a["cgroup"] for a in self.agent.status().get("attachments", [])])
            r = self.run_netns(None, ["true"])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertFalse(os.path.exists(cgroup), "the next run did not sweep the abandoned sandbox")
            self.assertNotIn(cgroup, [a["cgroup"] for a in self.agent.status().get("attachments", [])])
        finally:
            if os.path.isdir(cgroup):
                self.agent.ctl("detach", "--cgroup", cgroup, check=False)
                harness.Cgroup.remove(type("C", (), {"path": cgroup})())


class RunNetnsRedirects(NetnsWorld):
    """What needs the agent to redirect into a sandbox's own namespace (attach --netns)."""

    TAG = "runnetnsredir"
    ZONE = {"allowed.example": [(A, INTERNET, 300)], "denied.example": [(A, INTERNET, 300)]}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.agent.ctl("provider", "create", "--name", "demo", "--type", "mock")
        cls.agent.ctl("inference", "set", "--provider", "demo", "--model", "demo-model")
        cls.policy = write_policy(cls.tmp, "netns-names", {"allow": [
            {"host": "allowed.example", "ports": [cls.server.port]}]})

    def test_curl_reaches_inference_local_with_audit_record(self):
        before = len(self.agent.audit_records())
        body = json.dumps({"model": "gpt-whatever", "messages": [{"role": "user", "content": "hi"}]})
        script = ("import os,subprocess,sys;print(os.stat(os.environ['REDIR_SANDBOX']).st_ino, flush=True);"
                  "sys.exit(subprocess.call(['curl','-sS','-m','20','https://inference.local/v1/chat/completions',"
                  "'-H','content-type: application/json','-d',sys.argv[1]]))")
        r = self.run_netns(None, [PY, "-c", script, body])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        cgid, answer = r.stdout.split("\n", 1)
        self.assertIn("mock response", answer)
        recs = self.agent.wait_audit(lambda x: x.get("event") == "inference" and x.get("cgroup_id") == int(cgid),
                                     since=before)
        self.assertTrue(recs, self.agent.audit_records()[before:])
        self.assertEqual((recs[-1]["model_requested"], recs[-1]["model_used"]), ("gpt-whatever", "demo-model"))

    def test_openai_node_sdk_with_only_what_run_sets(self):
        """The official OpenAI Node SDK: base URL, CA and placeholder key all
        come from the environment run sets."""
        for mode in ("plain", "stream"):
            r = self.run_netns(None, ["node", os.path.join(NODE_DIR, "openai_client.js"), mode],
                               env_extra={"NODE_PATH": os.path.join(NODE_DIR, "node_modules")})
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            out = json.loads(r.stdout)
            text = out["content"] if mode == "plain" else "".join(e["text"] for e in out["events"])
            self.assertIn("mock response", text, out)

    def test_openai_python_sdk_with_only_what_run_sets(self):
        if subprocess.run([PY, "-c", "import openai"], capture_output=True).returncode != 0:
            self.skipTest("the official OpenAI Python SDK (`openai`) is not installed: Debian 12 does not package "
                          "it and PyPI is not reachable from this machine (scripts/install-deps.sh installs "
                          "python3-openai where Debian has it); test_openai_node_sdk_with_only_what_run_sets "
                          "covers the same path")
        code = ("import json, openai\nr = openai.OpenAI().chat.completions.create(model='client-model', "
                "messages=[{'role': 'user', 'content': 'hi'}])\nprint(json.dumps([r.model, r.choices[0].message.content]))")
        r = self.run_netns(None, [PY, "-c", code])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        model, content = json.loads(r.stdout)
        self.assertEqual(model, "demo-model")
        self.assertIn("mock response", content)

    def test_allowed_name_resolves_and_connects_denied_name_nxdomain(self):
        before = len(self.agent.audit_records())
        script = (
            "import os,socket,sys\n"
            "print(os.stat(os.environ['REDIR_SANDBOX']).st_ino)\n"
            "for n in ('allowed.example','denied.example'):\n"
            "    try:\n"
            "        a=socket.gethostbyname(n); s=socket.create_connection((a,int(sys.argv[1])),3); print(n,a,'OK')\n"
            "    except socket.gaierror as e: print(n,'NXDOMAIN' if e.errno==socket.EAI_NONAME else e)\n"
            "    except OSError as e: print(n,a,e)\n")
        r = self.run_netns(self.policy, [PY, "-c", script, str(self.server.port)])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        lines = r.stdout.splitlines()
        self.assertEqual(lines[1], "allowed.example %s OK" % INTERNET, r.stdout)
        self.assertEqual(lines[2], "denied.example NXDOMAIN", r.stdout)
        recs = self.agent.wait_audit(lambda x: x.get("event") == "dns" and x.get("name") == "denied.example",
                                     since=before)
        self.assertTrue(recs and recs[-1].get("cgroup_id") == int(lines[0]), recs)


if __name__ == "__main__":
    unittest.main(verbosity=2)
