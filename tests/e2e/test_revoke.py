"""Issue #13: live connections on policy change. `policy load` resets the
established connections of attached sandboxes whose destination the new
policy no longer allows (SOCK_DESTROY through sock_diag), withdraws the DNS
admissions it does not cover, leaves what is still allowed untouched, and
`--keep-established` opts out. The attacker keeps its connection to A through
a v4-mapped IPv6 socket, a connected UDP socket, a socket inherited by a
forked process (the dialler closed its copy), and a name resolved before the
reload. Servers listen in this test's own network namespace.
"""
import json
import os
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_dns import A as RR_A, FakeDns  # noqa: E402
from harness import Agent, Cgroup, TcpServer, write_policy  # noqa: E402

ADDR_A, ADDR_B = "203.0.113.10", "203.0.113.20"
NAMED_A, NAMED_B = "198.51.100.10", "198.51.100.20"  # what a.example.test / b.example.test resolve to
ZONE = {"a.example.test": [(RR_A, NAMED_A, 300)], "b.example.test": [(RR_A, NAMED_B, 300)]}
RUN_SECONDS = 4.0

# Inside the sandbox: dials every connection, prints READY, then sends a byte
# on each every 50 ms and reads the echo until RUN_SECONDS have passed; prints
# per connection the first error (errno name, time) and the last echo's time.
# "a_forked" is exercised by a forked child only: the parent closed its copy.
CLIENT = r"""
import errno, json, os, socket, sys, time
cfg = json.loads(sys.argv[1])
def tcp(addr, port, fam=socket.AF_INET):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect((addr, port))
    return s
def udp(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((addr, port))
    return s
def named(name, port):
    return tcp(socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0], port)
socks = {
    "a": tcp(cfg["a"], cfg["pa"]),
    "b": tcp(cfg["b"], cfg["pb"]),
    "a_mapped": tcp("::ffff:" + cfg["a"], cfg["pa"], socket.AF_INET6),
    "a_udp": udp(cfg["a"], cfg["pu"]),
    "named_a": named("a.example.test", cfg["pna"]),
    "named_b": named("b.example.test", cfg["pnb"]),
}
forked = tcp(cfg["a"], cfg["pa"])
def run(conns, until):
    res = {k: {"error": None, "error_at": None, "last_ok": None} for k in conns}
    for s in conns.values():
        s.settimeout(0.5)
    while time.time() < until:
        for k, s in conns.items():
            if res[k]["error"]:
                continue
            try:
                s.send(b"x")
                if not s.recv(16):
                    raise OSError(0, "EOF")
                res[k]["last_ok"] = time.time()
            except OSError as e:
                res[k]["error"] = errno.errorcode.get(e.errno, str(e))
                res[k]["error_at"] = time.time()
        time.sleep(0.05)
    return res
until = time.time() + cfg["seconds"]
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(r)
    for s in socks.values():
        s.close()
    # A cgroup of its own below the sandbox, and a connection dialled from there.
    os.mkdir(cfg["sub"])
    with open(cfg["sub"] + "/cgroup.procs", "w") as f:
        f.write(str(os.getpid()))
    sub = tcp(cfg["a"], cfg["pa"])
    os.write(w, b"C")  # connected: only now may the test reload
    os.write(w, json.dumps(run({"a_forked": forked, "a_subcgroup": sub}, until)).encode())
    os._exit(0)
os.close(w)  # a child that fails ends in EOF here, not a hang
forked.close()
if os.read(r, 1) != b"C":
    sys.exit("the sub-cgroup child did not connect")
print("READY", flush=True)
out = run(socks, until)
os.waitpid(pid, 0)
out.update(json.loads(os.read(r, 65536)))
print(json.dumps(out), flush=True)
"""


class UdpEcho:
    def __init__(self, addr):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 0))
        self.port = self.sock.getsockname()[1]
        harness.serve_each(lambda: self.sock.recvfrom(2048), self.sock.sendto)

    def close(self):
        self.sock.close()


class RevokeE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, _ = harness.isolated(cls, "revoke")
        cls.dns = FakeDns(harness.FAKE_RESOLVER, ZONE)
        cls.resolv = harness.write_resolv_conf(cls.tmp)
        cls.servers = [TcpServer(a, 0, echo=True) for a in (ADDR_A, ADDR_B, NAMED_A, NAMED_B)]
        cls.udp = UdpEcho(ADDR_A)
        cls.ports = {"a": ADDR_A, "b": ADDR_B, "pa": cls.servers[0].port, "pb": cls.servers[1].port,
                     "pna": cls.servers[2].port, "pnb": cls.servers[3].port, "pu": cls.udp.port,
                     "seconds": RUN_SECONDS}
        cls.agent = Agent("revoke").start()
        cls.cgroups = []

    @classmethod
    def tearDownClass(cls):
        harness.close_all(cls.udp, *cls.servers)
        cls.agent.cleanup(cls.cgroups)

    def policy(self, name, with_a):
        p = self.ports
        allow = [{"cidr": ADDR_B + "/32", "ports": [p["pb"]]},
                 {"host": "b.example.test", "ports": [p["pnb"]]}]
        if with_a:
            allow += [{"cidr": ADDR_A + "/32", "ports": [p["pa"]]},
                      {"cidr": ADDR_A + "/32", "ports": [p["pu"]], "protocol": "udp"},
                      {"host": "a.example.test", "ports": [p["pna"]]}]
        return write_policy(self.tmp, "%s-%s" % (name, "with-a" if with_a else "without-a"),
                            {"name": name, "allow": allow})

    def sandbox(self, name):
        cg = Cgroup(name)
        self.cgroups.append(cg)
        self.agent.ctl("policy", "load", self.policy(name, True))
        self.agent.ctl("attach", "--cgroup", cg.path, "--policy", name)
        return cg

    def start_client(self, cg):
        cfg = dict(self.ports, sub=os.path.join(cg.path, "sub"))
        self.addCleanup(lambda: os.path.isdir(cfg["sub"]) and os.rmdir(cfg["sub"]))  # before the sandbox's own
        proc = cg.popen([sys.executable, "-c", CLIENT, json.dumps(cfg)], binds={"/etc/resolv.conf": self.resolv},
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = proc.stdout.readline()
        if line.strip() != "READY":
            proc.kill()
            self.fail("sandbox client did not connect: %s %s" % (line, proc.stderr.read()))
        return proc

    def finish(self, proc):
        out, err = proc.communicate(timeout=RUN_SECONDS + 20)
        self.assertEqual(proc.returncode, 0, err)
        return json.loads(out)

    def test_reload_resets_what_is_no_longer_allowed(self):
        cg = self.sandbox("rv")
        proc = self.start_client(cg)
        t0 = time.time()
        r = self.agent.ctl("policy", "load", self.policy("rv", False), "--json")
        t1 = time.time()
        reply = json.loads(r.stdout)
        if reply.get("revocation_unsupported"):
            proc.kill()
            self.skipTest("this kernel cannot revoke: " + reply["revocation_unsupported"])
        res = self.finish(proc)
        for k in ("a", "a_mapped", "a_forked", "a_subcgroup", "named_a"):
            self.assertIn(res[k]["error"], ("ECONNABORTED", "ECONNRESET"), (k, res))
            self.assertLess(res[k]["error_at"] - t0, 1.0, (k, res))
        # UDP: the connected socket is aborted (ECONNABORTED once, then unconnected:
        # a send without an address fails, one with an address meets the hook).
        self.assertIn(res["a_udp"]["error"], ("ECONNABORTED", "EDESTADDRREQ"), res)
        self.assertLess(res["a_udp"]["error_at"] - t0, 1.0, res)
        for k in ("b", "named_b"):
            self.assertIsNone(res[k]["error"], (k, res))
            self.assertGreater(res[k]["last_ok"], t1 + RUN_SECONDS / 2, (k, res))
        self.assertEqual(reply["revoked"], 6, reply)
        recs = self.agent.wait_audit(lambda x: x.get("event") == "revoked" and x.get("cgroup") == cg.path, count=6)
        self.assertEqual(sorted({x["dst"] for x in recs}),
                         sorted({"%s:%d" % (ADDR_A, self.ports["pa"]), "%s:%d" % (ADDR_A, self.ports["pu"]),
                                 "%s:%d" % (NAMED_A, self.ports["pna"])}))
        # The admission for a.example.test is gone, b.example.test's is kept
        # (the sandbox does not resolve again).
        self.assertEqual(harness.connect_errno(cg, NAMED_A, self.ports["pna"]), "EPERM")
        self.assertEqual(harness.connect_errno(cg, NAMED_B, self.ports["pnb"]), "OK")
        self.assertEqual(harness.connect_errno(cg, ADDR_A, self.ports["pa"]), "EPERM")

    def test_keep_established_leaves_them_up(self):
        cg = self.sandbox("rv-keep")
        proc = self.start_client(cg)
        t1 = time.time()
        reply = json.loads(self.agent.ctl("policy", "load", self.policy("rv-keep", False), "--keep-established",
                                          "--json").stdout)
        self.assertNotIn("revoked", reply)
        res = self.finish(proc)
        for k, v in res.items():
            self.assertIsNone(v["error"], (k, res))
            self.assertGreater(v["last_ok"], t1 + RUN_SECONDS / 2, (k, res))
        # ...while new connections to A are refused by the new policy.
        self.assertEqual(harness.connect_errno(cg, ADDR_A, self.ports["pa"]), "EPERM")

    def test_reload_that_still_allows_everything_resets_nothing(self):
        cg = self.sandbox("rv-same")
        proc = self.start_client(cg)
        reply = json.loads(self.agent.ctl("policy", "load", self.policy("rv-same", True), "--json").stdout)
        res = self.finish(proc)
        for k, v in res.items():
            self.assertIsNone(v["error"], (k, res))
        self.assertEqual(reply.get("revoked"), 0, reply)


if __name__ == "__main__":
    unittest.main()
