"""Shared pieces of the escape corpus (test_escape_*.py): witnesses that listen
on the denied addresses, the probe every attempt runs inside a sandbox, and a
base class holding one agent per test class.

"Blocked" is proven twice: the probe reports the errno it got, and the witness
listening on the denied address saw nothing. The witness check is made
deterministic with a sentinel: after the attempt, the test itself (outside any
sandbox) reaches the witness; accept and receive queues are FIFO, so once the
sentinel has arrived anything the sandbox managed to send would already have
been seen.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Agent, Cgroup, write_policy  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE_SRC = os.path.join(HERE, "escape_probe.py")
ESCAPE_PROBE_BIN = os.path.abspath(os.path.join(harness.BUILD, "tests", "e2e", "helpers", "escape_probe"))
NOBODY = 65534
# The system interpreter: readable by the unprivileged users the sandboxes run as.
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def add_lo_addrs(addrs):
    """Puts ADDRS on this namespace's lo (idempotent: several classes may share a process)."""
    for a in addrs:
        plen = "/128" if ":" in a else "/32"
        subprocess.run(["ip", "addr", "replace", a + plen, "dev", "lo"] + (["nodad"] if ":" in a else []),
                       check=True, capture_output=True)


def sa(addr, port):
    """Socket address tuple; "fe80::1%lo" carries its scope as an interface index."""
    if "%" in addr:
        a, scope = addr.split("%", 1)
        return (a, port, 0, socket.if_nametoindex(scope))
    return (addr, port)


class Witness:
    """A real TCP listener and UDP socket on ADDR:PORT that record every
    connection and datagram they get."""

    def __init__(self, addr, port=0, tcp=True, udp=True, udp_proto=0):
        self.addr = addr
        self.udp_proto = udp_proto  # 136 (UDP-Lite) to witness UDP-Lite datagrams
        self.fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.events = []
        self.lock = threading.Lock()
        self.tcp = self.udp = None
        for _ in range(20):
            try:
                self._bind(port, tcp, udp)
                break
            except OSError:
                self.close()
                if port:
                    raise
        else:
            raise RuntimeError("no free port for a witness on %s" % addr)

    def _bind(self, port, tcp, udp):
        if tcp:
            self.tcp = socket.socket(self.fam, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.tcp.bind(sa(self.addr, port))
            self.tcp.listen(64)
            port = self.tcp.getsockname()[1]
        if udp:
            self.udp = socket.socket(self.fam, socket.SOCK_DGRAM, self.udp_proto)
            self.udp.bind(sa(self.addr, port))
            port = self.udp.getsockname()[1]
        self.port = port
        if self.tcp:
            harness.serve_each(self.tcp.accept, self._accepted)
        if self.udp:
            harness.serve_each(lambda: self.udp.recvfrom(65536), lambda data, peer: self._record("udp", peer, data))

    def _record(self, kind, peer, data=b""):
        with self.lock:
            self.events.append((kind, peer[:2], data))

    def _accepted(self, c, peer):
        self._record("tcp", peer)
        c.close()

    def intrusions(self):
        """Every event except our own sentinels, after a sentinel has passed
        through each listener (so nothing sent earlier is still in flight)."""
        sentinels = set()
        if self.tcp:
            s = socket.socket(self.fam, socket.SOCK_STREAM)
            s.settimeout(5)
            s.connect(sa(self.addr, self.port))
            sentinels.add(("tcp", s.getsockname()[:2]))
            s.close()
        if self.udp:
            s = socket.socket(self.fam, socket.SOCK_DGRAM, self.udp_proto)
            s.connect(sa(self.addr, self.port))  # fixes the source address we match on
            s.send(b"sentinel")
            sentinels.add(("udp", s.getsockname()[:2]))
            s.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.lock:
                seen = {(k, p) for k, p, _ in self.events}
            if sentinels <= seen:
                break
            time.sleep(0.01)
        else:
            raise AssertionError("witness on %s:%d never saw its own sentinel %s (saw %s): the listener is broken" %
                                 (self.addr, self.port, sentinels, self.events))
        with self.lock:
            out = [e for e in self.events if (e[0], e[1]) not in sentinels]
            self.events = []
        return out

    def close(self):
        for s in (self.tcp, self.udp):
            if s:
                s.close()


class UnixWitness:
    """A host service on an abstract unix socket (as X11, containerd shims or
    local proxies offer): records every connection it gets."""

    def __init__(self, name):
        self.name = name
        self.events = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind("\0" + name)
        self.sock.listen(16)
        harness.serve_each(self.sock.accept, self._accepted)

    def _accepted(self, c, _peer):
        c.settimeout(2)
        try:
            self.events.append(c.recv(256))
        except OSError:
            self.events.append(b"")
        c.close()

    def intrusions(self):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect("\0" + self.name)
        c.sendall(b"sentinel")
        c.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and b"sentinel" not in self.events:
            time.sleep(0.01)
        out = [e for e in self.events if e != b"sentinel"]
        self.events = []
        return out

    def close(self):
        self.sock.close()


class PacketWitness:
    """Every IP packet on this namespace's lo addressed to ADDR (v4 or v6),
    captured below IP (an AF_PACKET socket of the test, outside any sandbox):
    proves what was put on the wire toward ADDR even when no socket there
    would accept it."""

    def __init__(self, addr):
        self.addr = addr
        self.v6 = ":" in addr
        self.fam = socket.AF_INET6 if self.v6 else socket.AF_INET
        self.packets = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x86DD if self.v6 else 0x0800))
        self.sock.bind(("lo", 0))
        harness.serve_each(lambda: self.sock.recvfrom(65535), self._captured)

    def _dst(self, pkt):
        if self.v6:
            return socket.inet_ntop(socket.AF_INET6, pkt[24:40]) if len(pkt) >= 40 else None
        return socket.inet_ntoa(pkt[16:20]) if len(pkt) >= 20 else None

    def _captured(self, pkt, info):
        # Loopback shows each packet once as outgoing and once as incoming; keep one.
        if info[2] != socket.PACKET_OUTGOING and self._dst(pkt) == self.addr:
            with self.lock:
                self.packets.append(pkt)

    def intrusions(self):
        nonce = os.urandom(8).hex().encode()
        s = socket.socket(self.fam, socket.SOCK_DGRAM)
        s.sendto(b"sentinel " + nonce, (self.addr, 9))
        s.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.lock:
                if any(nonce in p for p in self.packets):
                    out = [p for p in self.packets if nonce not in p]
                    self.packets = []
                    return out
            time.sleep(0.01)
        raise AssertionError("the packet capture on lo never saw its own sentinel to %s" % self.addr)

    def close(self):
        self.sock.close()


class EscapeCase(unittest.TestCase):
    """One agent per class; subclasses name their addresses and policies."""

    TAG = "escape"
    LO_ADDRS = ()
    # An address of its own with a witness (cls.target) that no attempt may reach.
    TARGET = None

    @classmethod
    def setUpClass(cls):
        harness.require_root(cls)
        harness.enter_netns()
        add_lo_addrs(cls.LO_ADDRS + ((cls.TARGET,) if cls.TARGET else ()))
        cls.tmp = tempfile.mkdtemp(prefix="redir-e2e-%s-" % cls.TAG)
        cls.witnesses = []
        cls.cgroups = []
        cls.agent = None
        # Class cleanups run even when setUpClass fails half-way (tearDownClass does not).
        cls.addClassCleanup(cls._release)
        os.chmod(cls.tmp, 0o755)
        cls.probe = os.path.join(cls.tmp, "escape_probe.py")
        with open(PROBE_SRC) as src, open(cls.probe, "w") as dst:
            dst.write(src.read())
        os.chmod(cls.probe, 0o644)
        cls.agent = Agent(cls.TAG)
        cls.agent.start()
        # The agent's own directories must protect themselves: open the
        # temporary parent the way /var/lib and /run are open on a host.
        os.chmod(cls.agent.tmp, 0o755)
        if cls.TARGET:
            cls.target = cls.witness(cls.TARGET)

    @classmethod
    def _release(cls):
        for w in cls.witnesses:
            w.close()
        if cls.agent:
            cls.agent.cleanup(cls.cgroups)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        # A test that failed early leaves its intrusions behind: start clean.
        for w in self.witnesses:
            w.intrusions()

    @classmethod
    def witness(cls, addr, port=0, tcp=True, udp=True, udp_proto=0):
        w = Witness(addr, port, tcp, udp, udp_proto)
        cls.witnesses.append(w)
        return w

    @classmethod
    def attached(cls, tag, policy):
        """A cgroup attached with POLICY (a dict)."""
        path = write_policy(cls.tmp, "%s-%s" % (cls.TAG, tag), policy)
        cg = Cgroup("%s-%s" % (cls.TAG, tag))
        cls.cgroups.append(cg)
        cls.agent.ctl("attach", "--cgroup", cg.path, "--policy", path)
        return cg

    def probe_in(self, cg, *args, timeout=30):
        """Runs the probe inside attached cgroup CG (as root); returns its JSON answer."""
        r = cg.run([PYTHON, self.probe] + [str(a) for a in args], timeout=timeout)
        return self._answer(r)

    def run_cmd(self, argv, user=None, policy=None, timeout=60, env_extra=None):
        """`redirctl run [--user USER] [--policy P] -- ARGV`; the CompletedProcess."""
        env = dict(os.environ)
        env["REDIR_SOCKET"] = self.agent.socket
        env.update(env_extra or {})
        cmd = [harness.REDIRCTL, "run"]
        if user:
            cmd += ["--user", user]
        if policy:
            cmd += ["--policy", policy]
        return subprocess.run(cmd + ["--"] + [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env)

    def probe_run(self, *args, user=None, policy=None, timeout=60):
        """Runs the probe under `redirctl run`; returns its JSON answer."""
        r = self.run_cmd([PYTHON, self.probe] + [str(a) for a in args], user=user, policy=policy,
                         timeout=timeout)
        return self._answer(r)

    def _answer(self, r):
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        if not lines:
            self.fail("the probe gave no answer (exit %d): stdout=%r stderr=%r" % (r.returncode, r.stdout, r.stderr))
        return json.loads(lines[-1])

    def helper_in(self, cg, *args, timeout=30):
        """Runs the C helper inside CG; returns its `key=value` answer as a dict."""
        if not os.path.exists(ESCAPE_PROBE_BIN):
            self.fail("%s is missing: build the escape_probe target" % ESCAPE_PROBE_BIN)
        r = cg.run([ESCAPE_PROBE_BIN] + [str(a) for a in args], timeout=timeout)
        return parse_kv(r, self)

    def blocked(self, addr, witness, tcp6=False):
        """TCP connect and UDP sendto to ADDR from self.cg: both refused, WITNESS untouched."""
        res = self.probe_in(self.cg, "tcp6" if tcp6 else "tcp", addr, witness.port)
        self.assertEqual(res["connect"], "EPERM", "connect to %s: %s" % (addr, res))
        res = self.probe_in(self.cg, "udp6-sendto" if tcp6 else "udp-sendto", addr, witness.port)
        self.assertEqual(res["sendto"], "EPERM", "sendto %s: %s" % (addr, res))
        self.assert_untouched(witness)

    def assert_untouched(self, *witnesses):
        for w in witnesses:
            got = w.intrusions()
            self.assertEqual(got, [], "the sandbox reached the denied address %s:%d" % (w.addr, w.port))


def parse_kv(r, testcase):
    words = {}
    for ln in r.stdout.splitlines():
        for w in ln.split():
            if "=" in w:
                k, v = w.split("=", 1)
                words[k] = v
    if not words:
        testcase.fail("escape_probe gave no answer (exit %d): %r %r" % (r.returncode, r.stdout, r.stderr))
    return words
