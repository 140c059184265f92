"""Issue 9: a restart changes no verdict. DNS admissions a sandbox earned
before `kill -9` of the agent stay valid after the new agent re-installs every
policy under fresh ids (re-keyed under the new id with their expiry), expired
ones stay denied, and no entry of an old id is left behind in redir_dns_allow.
Real glibc/Python clients, a fake upstream resolver in this test's own
network namespace, the real kernel programs.
"""
import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_dns import A, FakeDns  # noqa: E402
from harness import Agent, Cgroup, TcpServer, connect_errno, write_policy  # noqa: E402

ZONE = {
    "keep.example": [(A, "203.0.113.90", 600)],
    "short.example": [(A, "203.0.113.91", 1)],  # raised to the 5 s floor
    "other.example": [(A, "203.0.113.92", 600)],
}


def dns_allow_entries(agent):
    """(cgroup_id, last 4 address bytes as a dotted string, policy_id) of every redir_dns_allow entry."""
    path = os.path.join(agent.bpffs, "maps", "dns_allow")
    r = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", path], capture_output=True, text=True)
    if r.returncode != 0:
        raise AssertionError("bpftool map dump %s: %s" % (path, r.stderr))
    out = []
    for e in json.loads(r.stdout or "[]"):
        key = bytes(int(b, 16) for b in e["key"])
        val = bytes(int(b, 16) for b in e["value"])
        cg = int.from_bytes(key[0:8], "little")
        addr = ".".join(str(b) for b in key[20:24])
        out.append((cg, addr, int.from_bytes(val[0:4], "little")))
    return out


class RestartKeepsDnsAdmissions(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, _ = harness.isolated(cls, "restart")
        cls.fake_dns = FakeDns(harness.FAKE_RESOLVER, ZONE)
        cls.resolv = harness.write_resolv_conf(cls.tmp)
        cls.servers = [TcpServer(ip, 80) for ip in ("203.0.113.90", "203.0.113.91", "203.0.113.92")]

    @classmethod
    def tearDownClass(cls):
        for s in cls.servers:
            s.close()
        cls.fake_dns.close()

    def resolve(self, cg, *names):
        return cg.getaddrinfo(self.resolv, *names)

    def test_kill9_restart_keeps_live_admissions_and_drops_expired_ones(self):
        agent = Agent("restart-dns").start()
        cg, gone = Cgroup("restart-dns"), Cgroup("restart-dns-gone")
        policy = {"allow": [{"host": "keep.example", "ports": [80]}, {"host": "short.example", "ports": [80]},
                            {"host": "other.example", "ports": [80]}]}
        pol = write_policy(self.tmp, "restart-dns", policy)
        try:
            agent.ctl("attach", "--cgroup", cg.path, "--policy", pol)
            agent.ctl("attach", "--cgroup", gone.path, "--policy", pol)
            out = self.resolve(cg, "keep.example", "short.example", "other.example")
            self.assertEqual(out, {"keep.example": ["203.0.113.90"], "short.example": ["203.0.113.91"],
                                   "other.example": ["203.0.113.92"]})
            self.assertEqual(self.resolve(gone, "keep.example"), {"keep.example": ["203.0.113.90"]})
            for ip in ("203.0.113.90", "203.0.113.91", "203.0.113.92"):
                self.assertEqual(connect_errno(cg, ip, 80), "OK", ip)
            old_id = next(a["policy_id"] for a in agent.status()["attachments"] if a["cgroup"] == cg.path)

            agent.kill9()
            # While no agent runs, one sandbox disappears: its admissions must not leak.
            gone.remove()
            # The short admission (TTL 1 s, floor 5 s) expires while the agent is down.
            time.sleep(6)
            self.assertEqual(connect_errno(cg, "203.0.113.91", 80), "EPERM")
            agent.start()

            new_id = next(a["policy_id"] for a in agent.status()["attachments"] if a["cgroup"] == cg.path)
            self.assertNotEqual(new_id, old_id, "a restart installs policies under fresh ids")
            # Resolved before the restart (TTL 600 s): still allowed, without resolving again.
            self.assertEqual(connect_errno(cg, "203.0.113.90", 80), "OK")
            self.assertEqual(connect_errno(cg, "203.0.113.92", 80), "OK")
            # Expired before the restart: still denied.
            self.assertEqual(connect_errno(cg, "203.0.113.91", 80), "EPERM")
            # Nothing of the old id or of the vanished sandbox is left in the kernel map.
            entries = dns_allow_entries(agent)
            cg_id = next(a["cgroup_id"] for a in agent.status()["attachments"] if a["cgroup"] == cg.path)
            self.assertEqual(sorted((a, p) for c, a, p in entries if c == cg_id),
                             [("203.0.113.90", new_id), ("203.0.113.92", new_id)], entries)
            self.assertEqual([e for e in entries if e[0] != cg_id], [], "entries of a vanished sandbox leaked")

            # The names came back too: a reload that drops one host rule withdraws exactly its address.
            policy2 = {"allow": [{"host": "keep.example", "ports": [80]}]}
            agent.ctl("policy", "load", write_policy(self.tmp, "restart-dns", policy2))
            self.assertEqual(connect_errno(cg, "203.0.113.90", 80), "OK")
            self.assertEqual(connect_errno(cg, "203.0.113.92", 80), "EPERM")

            # A second restart, this time after SIGTERM, keeps it as well.
            agent.stop()
            agent.start()
            self.assertEqual(connect_errno(cg, "203.0.113.90", 80), "OK")
            self.assertEqual(connect_errno(cg, "203.0.113.92", 80), "EPERM")
        finally:
            agent.cleanup([cg, gone])

    def test_admission_of_a_name_the_restarted_policy_no_longer_allows_is_withdrawn(self):
        agent = Agent("restart-dns-chg").start()
        cg = Cgroup("restart-dns-chg")
        pol = write_policy(self.tmp, "restart-dns-chg", {"allow": [{"host": "keep.example", "ports": [80]},
                                                                   {"host": "other.example", "ports": [80]}]})
        try:
            agent.ctl("attach", "--cgroup", cg.path, "--policy", pol)
            self.resolve(cg, "keep.example", "other.example")
            self.assertEqual(connect_errno(cg, "203.0.113.92", 80), "OK")
            agent.kill9()
            # The stored policy changes while the agent is down (as if it died mid-load):
            # the restart re-decides each admission by name under the policy it installs.
            stored = os.path.join(agent.state, "policies")
            changed = False
            for fn in os.listdir(stored):
                p = os.path.join(stored, fn)
                with open(p) as f:
                    text = f.read()
                if "other.example" in text:
                    with open(p, "w") as f:
                        f.write(text.replace("other.example", "elsewhere.example"))
                    changed = True
            self.assertTrue(changed, "stored policy not found under %s (%s)" % (agent.state, stored))
            agent.start()
            self.assertEqual(connect_errno(cg, "203.0.113.90", 80), "OK")
            self.assertEqual(connect_errno(cg, "203.0.113.92", 80), "EPERM")
        finally:
            agent.cleanup([cg])


if __name__ == "__main__":
    unittest.main(verbosity=2)
