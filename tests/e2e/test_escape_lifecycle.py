"""Escape corpus, lifecycle: processes that try to outlive `redirctl run` (fork,
double fork, setsid, daemon(), ignored signals, a fork storm, a child cgroup)
or survive `run` being signalled, then reach a denied address from a sandbox
that would no longer be enforced. Each orphan reports over a unix socket; a
killed orphan shows as EOF, and the witness on the denied address must have
seen nothing either way."""
import os
import signal
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from escape_support import PYTHON, EscapeCase  # noqa: E402


class OrphanCatcher:
    """A unix socket the orphan reports to: "armed PID STAGE", then "result JSON"."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o777)
        self.sock.listen(4)
        self.sock.settimeout(10)
        self.conn = None
        self.pid = None

    def wait_armed(self):
        self.conn, _ = self.sock.accept()
        self.conn.settimeout(10)
        line = b""
        while not line.endswith(b"\n"):
            chunk = self.conn.recv(256)
            if not chunk:
                break
            line += chunk
        words = line.decode().split()
        if len(words) < 2 or words[0] != "armed":
            raise AssertionError("the orphan never armed itself: %r" % line)
        # The orphan may live in a private pid namespace: its pid as we see it.
        import struct
        cred = self.conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        self.pid = struct.unpack("3i", cred)[0]
        return self.pid

    def go(self):
        """Tells the orphan to attempt; returns its result line, or None if it is dead."""
        try:
            self.conn.sendall(b"go\n")
        except OSError:
            return None
        data = b""
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                chunk = self.conn.recv(4096)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            data += chunk
        text = data.decode().strip()
        return text[len("result "):] if text.startswith("result ") else None

    def close(self):
        for s in (self.conn, self.sock):
            if s:
                s.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class EscapeOrphans(EscapeCase):
    """Orphans after the command exits, and `run` being signalled."""

    TAG = "esc-orphan"
    TARGET = "203.0.113.140"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.n = 0

    def catcher(self):
        type(self).n += 1
        c = OrphanCatcher(os.path.join(self.tmp, "orphan-%d.sock" % self.n))
        self.addCleanup(c.close)
        return c

    def armed(self, catcher):
        """Waits for the orphan; registers the removal of whatever it leaves behind."""
        pid = catcher.wait_armed()
        cg = None
        try:
            rel = [ln for ln in open("/proc/%d/cgroup" % pid).read().splitlines() if ln.startswith("0::")][0][3:]
            cg = harness.cgroup2_mount() + rel
        except (OSError, IndexError):
            pass
        if cg and os.path.basename(cg).startswith("escape-orphan"):
            cg = os.path.dirname(cg)
        self.addCleanup(self.reap, pid, cg)
        return pid

    def reap(self, pid, cg):
        """Leaves nothing behind if an orphan got away (the test has already failed then)."""
        if harness.pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if cg and os.path.basename(cg).startswith("redir-run-") and os.path.isdir(cg):
            self._empty_and_remove(cg)

    def _empty_and_remove(self, cg):
        for _ in range(3):
            for dirpath, _, _ in os.walk(cg, topdown=False):
                try:
                    for p in open(os.path.join(dirpath, "cgroup.procs")).read().split():
                        os.kill(int(p), signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.1)
        self.agent.ctl("detach", "--cgroup", cg, check=False)
        for dirpath, _, _ in os.walk(cg, topdown=False):
            try:
                os.rmdir(dirpath)
            except OSError:
                pass

    def assert_orphan_contained(self, mode):
        c = self.catcher()
        r = self.run_cmd([PYTHON, self.probe, "orphan", mode, c.path, self.target.addr, self.target.port])
        self.assertIn('"parent_exits": true', r.stdout, "the command did not run: " + r.stderr)
        pid = self.armed(c)
        result = c.go()
        self.assertIsNone(result, "a %s orphan outlived `redirctl run` and tried the network: %s" % (mode, result))
        self.assertFalse(harness.pid_alive(pid),
                         "the %s orphan (pid %d) is still alive after run returned" % (mode, pid))
        self.assert_untouched(self.target)

    def test_orphan_fork(self):
        self.assert_orphan_contained("fork")

    def test_orphan_double_fork(self):
        self.assert_orphan_contained("double-fork")

    def test_orphan_setsid(self):
        self.assert_orphan_contained("setsid")

    def test_orphan_daemon(self):
        self.assert_orphan_contained("daemon")

    def test_orphan_ignoring_every_catchable_signal(self):
        self.assert_orphan_contained("ignore-signals")

    def test_orphan_fork_storm(self):
        self.assert_orphan_contained("fork-storm")

    def test_orphan_in_a_child_cgroup(self):
        self.assert_orphan_contained("child-cgroup")

    def assert_signal_contains(self, sig):
        """`run` itself receives SIG while its command and an orphan are alive."""
        c = self.catcher()
        env = dict(os.environ, REDIR_SOCKET=self.agent.socket, ESCAPE_PARENT_STAYS="1")
        p = subprocess.Popen([harness.REDIRCTL, "run", "--", PYTHON, self.probe, "orphan", "fork", c.path,
                              self.target.addr, str(self.target.port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                             start_new_session=True)
        self.addCleanup(lambda: p.poll() is None and p.kill())
        pid = self.armed(c)
        os.kill(p.pid, sig)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.fail("`redirctl run` did not finish within 20 s of %s" % signal.Signals(sig).name)
        result = c.go()
        self.assertIsNone(result, "an orphan survived %s to `run` and tried the network: %s" %
                          (signal.Signals(sig).name, result))
        self.assertFalse(harness.pid_alive(pid))
        self.assert_untouched(self.target)

    def test_run_receives_sigterm(self):
        self.assert_signal_contains(signal.SIGTERM)

    def test_run_receives_sighup(self):
        self.assert_signal_contains(signal.SIGHUP)

    def test_run_receives_sigint(self):
        self.assert_signal_contains(signal.SIGINT)

    def test_run_killed_outright_leaves_sandbox_enforced(self):
        """SIGKILL gives `run` no chance to clean up: what is left must stay enforced."""
        c = self.catcher()
        env = dict(os.environ, REDIR_SOCKET=self.agent.socket, ESCAPE_PARENT_STAYS="1")
        p = subprocess.Popen([harness.REDIRCTL, "run", "--", PYTHON, self.probe, "orphan", "fork", c.path,
                              self.target.addr, str(self.target.port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        pid = self.armed(c)
        p.kill()
        p.wait(timeout=20)
        result = c.go()
        if result is not None:
            self.assertNotIn('"connect": "OK"', result, "after `run` was SIGKILLed its sandbox stopped enforcing")
            self.assertNotIn('"sendto": "OK"', result)
        self.assert_untouched(self.target)


if __name__ == "__main__":
    unittest.main(verbosity=2)
