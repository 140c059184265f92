"""Issue 9: one hostile sandbox degrades only itself. Sandbox A attacks the
agent's DNS responder and audit log the way arbitrary code inside it could: a
DNS-over-TCP client that pipelines and never reads, a wildcard rule driving
DNS admissions past its quota, a refusal flood, a denied-connect flood, file
descriptor exhaustion, and an audit log on a full disk. Sandbox B, attached
to the same agent, keeps resolving and connecting within a stated latency.
Everything runs in this test's own network namespace (fake resolver at
192.0.2.53, servers on 203.0.113.0/24) and, for the full disk, a private
mount namespace with a tiny tmpfs.
"""
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_dns import A, FakeDns  # noqa: E402
from harness import Agent, Cgroup, TcpServer, connect_errno, free_port, write_policy  # noqa: E402

QUOTA = 20
ZONE = {"b.example": [(A, "203.0.113.70", 600)]}
ZONE.update({"n%d.flood.example" % i: [(A, "203.0.113.%d" % (100 + i), 600)] for i in range(40)})

# A sandbox process: pipelines DNS-over-TCP queries and never reads. Prints
# how long until the agent cut it off, or "ALIVE" after the deadline.
NEVER_READ = r"""
import socket, struct, sys, time
q = struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x09inference\x05local\x00" + struct.pack("!HH", 1, 1)
frame = struct.pack("!H", len(q)) + q
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("192.0.2.99", 53))
s.setblocking(False)
t0 = time.time()
while time.time() - t0 < float(sys.argv[1]):
    try:
        s.send(frame * 64)
    except BlockingIOError:
        time.sleep(0.01)
    except OSError:
        print("CUT %.2f" % (time.time() - t0)); sys.exit(0)
print("ALIVE")
"""

# Queries NAME over UDP N times; prints JSON {ok, fail, max_ms}.
LOOKUP_LOOP = r"""
import json, random, socket, struct, sys, time
name, n = sys.argv[1], int(sys.argv[2])
qn = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00"
ok = fail = 0; worst = 0.0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
for i in range(n):
    qid = random.randrange(65536)
    t = time.time()
    s.sendto(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qn + struct.pack("!HH", 1, 1), ("192.0.2.99", 53))
    try:
        while True:
            d, _ = s.recvfrom(4096)
            if struct.unpack("!H", d[:2])[0] == qid: break
        ok += (d[3] & 15) == 0
        fail += (d[3] & 15) != 0
    except socket.timeout:
        fail += 1
    worst = max(worst, time.time() - t)
    time.sleep(0.02)
print(json.dumps({"ok": ok, "fail": fail, "max_ms": int(worst * 1000)}))
"""

# Queries each name of argv once over UDP; prints JSON {ok, fail}.
LOOKUP_NAMES = r"""
import json, random, socket, struct, sys
ok = fail = 0
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
for name in sys.argv[1:]:
    qid = random.randrange(65536)
    qn = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00"
    s.sendto(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qn + struct.pack("!HH", 1, 1), ("192.0.2.99", 53))
    try:
        while True:
            d, _ = s.recvfrom(4096)
            if struct.unpack("!H", d[:2])[0] == qid: break
        ok += (d[3] & 15) == 0 and struct.unpack("!H", d[6:8])[0] > 0
        fail += not ((d[3] & 15) == 0 and struct.unpack("!H", d[6:8])[0] > 0)
    except socket.timeout:
        fail += 1
print(json.dumps({"ok": ok, "fail": fail}))
"""

# Floods the responder with queries for distinct denied names for SECONDS.
REFUSAL_FLOOD = r"""
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setblocking(False)
t0 = time.time(); i = 0
while time.time() - t0 < float(sys.argv[1]):
    name = b"\x06x%05d\x06denied\x07example\x00" % (i % 100000)
    try:
        s.sendto(struct.pack("!HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1), ("192.0.2.99", 53))
    except BlockingIOError:
        time.sleep(0.001)
    try:
        while True: s.recv(4096)
    except BlockingIOError:
        pass
    i += 1
print(i)
"""

# Denied connect() N times (distinct ports when DISTINCT).
CONNECT_FLOOD = r"""
import socket, sys
n, distinct = int(sys.argv[1]), sys.argv[2] == "1"
refused = 0
for i in range(n):
    s = socket.socket()
    try:
        s.connect(("203.0.113.66", 1000 + (i % 50000) if distinct else 80))
    except PermissionError:
        refused += 1
    except OSError:
        pass
    s.close()
print(refused)
"""

# Holds N DNS-over-TCP connections open for SECONDS.
HOLD_CONNS = r"""
import socket, sys, time
n, secs = int(sys.argv[1]), float(sys.argv[2])
held = []
for i in range(n):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("192.0.2.99", 53)); held.append(s)
    except OSError:
        break
print(len(held), flush=True)
time.sleep(secs)
"""

RESOLVE_TCP = r"""
import socket, struct, sys
q = struct.pack("!HHHHHH", 9, 0x0100, 1, 0, 0, 0) + b"\x09inference\x05local\x00" + struct.pack("!HH", 1, 1)
s = socket.create_connection(("192.0.2.99", 53), 3)
s.sendall(struct.pack("!H", len(q)) + q)
n = struct.unpack("!H", s.recv(2))[0]
print("OK" if n > 12 else "SHORT")
"""


_fake_dns = None


def fake_dns():
    """The fake upstream resolver, one per process (it binds 192.0.2.53:53)."""
    global _fake_dns
    if _fake_dns is None:
        _fake_dns = FakeDns(harness.FAKE_RESOLVER, ZONE)
    return _fake_dns


def metrics(port):
    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out waiting for " + what)


class HostileSandbox(unittest.TestCase):
    """One agent, two sandboxes: A attacks, B must not notice."""

    @classmethod
    def setUpClass(cls):
        cls.tmp, _ = harness.isolated(cls, "hostile")
        fake_dns()
        cls.server = TcpServer("203.0.113.70", 80)
        cls.mport = free_port()
        cls.agent = Agent("hostile", ["--dns-admissions-per-sandbox", str(QUOTA), "--dns-tcp-idle-timeout-ms", "1000",
                                      "--dns-tcp-queue-bytes", "4096", "--audit-window-ms", "2000",
                                      "--metrics", "127.0.0.1:%d" % cls.mport]).start()
        cls.cg_a, cls.cg_b = Cgroup("hostile-a"), Cgroup("hostile-b")
        cls.agent.ctl("attach", "--cgroup", cls.cg_a.path, "--policy",
                      write_policy(cls.tmp, "hostile-a", {"allow": [{"host": "*.flood.example", "ports": [80]}]}))
        cls.agent.ctl("attach", "--cgroup", cls.cg_b.path, "--policy",
                      write_policy(cls.tmp, "hostile-b", {"allow": [{"host": "b.example", "ports": [80]}]}))

    @classmethod
    def tearDownClass(cls):
        cls.server.close()
        cls.agent.cleanup([cls.cg_a, cls.cg_b])

    def b_lookups(self, n=30):
        r = self.cg_b.run([sys.executable, "-c", LOOKUP_LOOP, "b.example", str(n)], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def test_never_reading_tcp_client_is_cut_off(self):
        r = self.cg_a.run([sys.executable, "-c", NEVER_READ, "20"], timeout=60)
        self.assertTrue(r.stdout.startswith("CUT"), r.stdout + r.stderr)
        self.assertLess(float(r.stdout.split()[1]), 15.0)
        self.assertGreaterEqual(metrics(self.mport)["redir_dns_tcp_cut_total"], 1)
        # The agent's own TCP service is intact for everyone else.
        self.assertEqual(self.cg_b.run([sys.executable, "-c", RESOLVE_TCP]).stdout.strip(), "OK")

    def test_wildcard_sandbox_stops_at_its_quota_and_cannot_starve_another(self):
        names = ["n%d.flood.example" % i for i in range(40)]
        out = self.cg_a.run([sys.executable, "-c", LOOKUP_NAMES] + names, timeout=120)
        res = json.loads(out.stdout)
        self.assertEqual(res["ok"], QUOTA, res)  # the first QUOTA names admitted, the rest SERVFAIL
        self.assertEqual(res["fail"], 40 - QUOTA, res)
        # Admitted: the kernel lets it through (nobody listens there: refused by the stack, not EPERM).
        self.assertEqual(connect_errno(self.cg_a, "203.0.113.%d" % (100 + QUOTA - 1), 80), "ECONNREFUSED")
        self.assertEqual(connect_errno(self.cg_a, "203.0.113.%d" % (100 + QUOTA + 5), 80), "EPERM")
        recs = wait_for(lambda: [r for r in self.agent.audit_records()
                                 if r.get("verdict") == "quota" and r.get("name", "").endswith(".flood.example")],
                        10, "a quota record")
        self.assertTrue(recs)
        # B's host rule still resolves and admits.
        res_b = self.b_lookups(5)
        self.assertEqual(res_b["fail"], 0, res_b)
        self.assertEqual(connect_errno(self.cg_b, "203.0.113.70", 80), "OK")
        self.assertGreaterEqual(metrics(self.mport)["redir_dns_quota_refusals_total"], 40 - QUOTA)

    def test_refusal_flood_does_not_slow_the_other_sandbox(self):
        # Its own flooding sandbox: the flood's thousands of distinct names fill
        # that sandbox's audit rate-limit table, which the other tests here read.
        cg = Cgroup("hostile-flood")
        self.agent.ctl("attach", "--cgroup", cg.path, "--policy", "hostile-a")
        flood = cg.popen([sys.executable, "-c", REFUSAL_FLOOD, "8"], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(1)
            res = self.b_lookups(60)
        finally:
            sent = int(flood.communicate(timeout=60)[0] or 0)
            self.agent.ctl("detach", "--cgroup", cg.path)
            cg.remove()
        self.assertGreater(sent, 1000, "the flood did not run")
        self.assertEqual(res["fail"], 0, res)
        # Stated bound: every lookup of B answered within 1 s during the flood.
        self.assertLess(res["max_ms"], 1000, res)
        m = metrics(self.mport)
        self.assertGreater(m["redir_dns_refused_total"], 1000)

    def test_denied_connect_flood_is_summarised_not_written_one_by_one(self):
        r = self.cg_a.run([sys.executable, "-c", CONNECT_FLOOD, "3000", "0"], timeout=120)
        self.assertEqual(r.stdout.strip(), "3000", r.stderr)

        def summary():
            return [x for x in self.agent.audit_records() if x.get("event") == "suppressed"
                    and "203.0.113.66 port 80" in x.get("key", "")]
        sums = wait_for(summary, 15, "a suppressed summary")
        written = [x for x in self.agent.audit_records() if x.get("event") == "connect" and x.get("dst") == "203.0.113.66"]
        # At most the burst (5) per 2 s window were written; the rest were counted.
        self.assertLess(len(written), 100, len(written))
        self.assertGreater(sum(s["count"] for s in sums), 2000)
        self.assertEqual(connect_errno(self.cg_b, "203.0.113.66", 80), "EPERM")
        m = metrics(self.mport)
        self.assertGreater(m["redir_audit_suppressed_total"], 2000)
        # Ring-buffer losses are counted per sandbox (and audited when they happen).
        cg_id = next(a["cgroup_id"] for a in self.agent.status()["attachments"] if a["cgroup"] == self.cg_a.path)
        self.assertIn('redir_sandbox_events_dropped_total{cgroup_id="%d"}' % cg_id, m)


class FdExhaustion(unittest.TestCase):
    """A sandbox makes the agent use every descriptor: no busy loop, the
    operator still gets in, and service resumes when the sandbox lets go."""

    def test_emfile_backs_off_and_the_control_socket_still_answers(self):
        harness.require_root(self)
        harness.enter_netns()
        tmp = tempfile.mkdtemp(prefix="redir-e2e-fd-")
        os.chmod(tmp, 0o755)
        fake_dns()
        mport = free_port()
        probe = Agent("fd-probe").start()
        cg = Cgroup("fd")
        pol = write_policy(tmp, "fd", {"allow": [{"host": "b.example", "ports": [80]}]})
        agent = None
        try:
            probe.ctl("attach", "--cgroup", cg.path, "--policy", pol)
            baseline = len(os.listdir("/proc/%d/fd" % probe.proc.pid))
            probe.cleanup([])
            limit = baseline + 40
            agent = Agent("fd", ["--max-open-files", str(limit), "--dns-tcp-per-sandbox", "1000",
                                 "--dns-tcp-total", "1000", "--metrics", "127.0.0.1:%d" % mport]).start()
            agent.ctl("attach", "--cgroup", cg.path, "--policy", pol)
            holder = cg.popen([sys.executable, "-c", HOLD_CONNS, "300", "8"], stdout=subprocess.PIPE, text=True)
            held = int(holder.stdout.readline())
            self.assertGreater(held, 60, "the sandbox could not open its connections")
            # (Metrics cannot be scraped now: their listener is out of descriptors too.)
            wait_for(lambda: len(os.listdir("/proc/%d/fd" % agent.proc.pid)) >= limit - 1, 10,
                     "the agent to run out of descriptors")
            # The operator gets in although every descriptor is taken.
            t0 = time.time()
            self.assertEqual(agent.ctl("status", "--json").returncode, 0)
            self.assertLess(time.time() - t0, 5)
            # No busy loop: the agent idles while the backlog waits.
            c0, t0 = cpu_seconds(agent.proc.pid), time.time()
            time.sleep(3)
            busy = (cpu_seconds(agent.proc.pid) - c0) / (time.time() - t0)
            self.assertLess(busy, 0.3, "redird used %.0f%% CPU while out of descriptors" % (busy * 100))
            self.assertEqual(agent.ctl("status", "--json").returncode, 0)
            holder.communicate(timeout=30)
            # Service resumes once the sandbox lets go.
            wait_for(lambda: cg.run([sys.executable, "-c", RESOLVE_TCP]).stdout.strip() == "OK", 20,
                     "DNS over TCP to work again")
            self.assertGreater(metrics(mport)["redir_accept_backoffs_total{listener=\"dns\"}"], 0)
        finally:
            if agent:
                agent.cleanup([cg])
            else:
                cg.remove()


CLONE_NEWNS = 0x00020000


class AuditDisk(unittest.TestCase):
    """The audit log rotates, and a full audit disk blocks nothing."""

    @classmethod
    def setUpClass(cls):
        harness.require_root(cls)
        harness.enter_netns()
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNS) != 0:
            raise unittest.SkipTest("cannot unshare a mount namespace: errno %d" % ctypes.get_errno())
        subprocess.run(["mount", "--make-rprivate", "/"], check=True)
        cls.tmp = tempfile.mkdtemp(prefix="redir-e2e-audit-")
        os.chmod(cls.tmp, 0o755)

    def test_rotation_keeps_n_files_of_bounded_size(self):
        logdir = os.path.join(self.tmp, "rot")
        os.mkdir(logdir)
        agent = Agent("audit-rot", ["--audit-log", os.path.join(logdir, "audit.log"), "--audit-max-bytes", "4096",
                                    "--audit-keep", "2"]).start()
        cg = Cgroup("audit-rot")
        try:
            agent.ctl("attach", "--cgroup", cg.path, "--policy", write_policy(self.tmp, "rot", {}))
            cg.run([sys.executable, "-c", CONNECT_FLOOD, "300", "1"], timeout=120)
            # A rotation renames audit.1.log to audit.2.log before audit.log to
            # audit.1.log, and the event reader may still be writing after the
            # flood returns: a listing taken the moment audit.2.log appears can
            # fall between the two renames (CI saw exactly that). Wait for the
            # settled set, then check it.
            expected = ["audit.1.log", "audit.2.log", "audit.log"]
            wait_for(lambda: sorted(os.listdir(logdir)) == expected, 10, "two rotated files and the live one")
            files = sorted(os.listdir(logdir))
            self.assertEqual(files, expected)
            for f in files:
                self.assertLessEqual(os.path.getsize(os.path.join(logdir, f)), 4096, f)
        finally:
            agent.cleanup([cg])

    def test_full_audit_disk_blocks_neither_enforcement_nor_state_writes(self):
        disk = os.path.join(self.tmp, "tiny")
        os.mkdir(disk)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", disk], check=True)
        mport = free_port()
        srv = TcpServer("203.0.113.71", 80)
        agent = Agent("audit-full", ["--audit-log", os.path.join(disk, "audit.log"), "--audit-max-bytes", "1048576",
                                     "--metrics", "127.0.0.1:%d" % mport]).start()
        cg = Cgroup("audit-full")
        try:
            agent.ctl("attach", "--cgroup", cg.path, "--policy", write_policy(self.tmp, "full", {}))
            # Distinct ports defeat the rate limit: every denial is a record, until the disk is full.
            cg.run([sys.executable, "-c", CONNECT_FLOOD, "3000", "1"], timeout=120)
            wait_for(lambda: metrics(mport)["redir_audit_write_errors_total"] > 0, 15, "the audit disk to fill")
            st = os.statvfs(disk)
            self.assertLess(st.f_bavail * st.f_bsize, 4096, "the tmpfs is not full")
            # State writes (another filesystem) and enforcement carry on.
            pol = write_policy(self.tmp, "full", {"allow": [{"cidr": "203.0.113.71/32", "ports": [80]}]})
            agent.ctl("policy", "load", pol)
            self.assertEqual(connect_errno(cg, "203.0.113.71", 80), "OK")
            self.assertEqual(connect_errno(cg, "203.0.113.66", 80), "EPERM")
            ev = [json.loads(line) for line in agent.ctl("events", "--json").stdout.splitlines() if line.strip()]
            self.assertTrue(ev, "events still reach redirctl events")
            self.assertEqual(agent.proc.poll(), None)
        finally:
            srv.close()
            agent.cleanup([cg])
            subprocess.run(["umount", disk])


if __name__ == "__main__":
    unittest.main(verbosity=2)
