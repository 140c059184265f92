"""packaging/systemd/redird.service names the capabilities redird needs: an
agent bounded to exactly that set (setpriv, as systemd's
CapabilityBoundingSet= does for a root service) starts, enforces and serves a
`redirctl run` sandbox — and one bounded to less does not start, so the set
is not decorative."""
import os
import re
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Agent  # noqa: E402

UNIT = os.path.join(os.path.dirname(__file__), "..", "..", "packaging", "systemd", "redird.service")


def unit_capabilities():
    with open(UNIT) as f:
        m = re.search(r"^CapabilityBoundingSet=(.*)$", f.read(), re.M)
    return [c.lower().replace("cap_", "") for c in m.group(1).split()]


class BoundedAgent(Agent):
    """An Agent whose redird runs with its capability bounding set cut to CAPS."""

    def __init__(self, tag, caps):
        super().__init__(tag)
        self.caps = caps

    def start(self, timeout=15):
        real = harness.REDIRD
        wrapper = os.path.join(self.tmp, "redird-bounded")
        with open(wrapper, "w") as f:
            f.write("#!/bin/sh\nexec setpriv --inh-caps=-all --bounding-set=-all,%s -- %s \"$@\"\n"
                    % (",".join("+" + c for c in self.caps), real))
        os.chmod(wrapper, 0o755)
        harness.REDIRD = wrapper
        try:
            return super().start(timeout)
        finally:
            harness.REDIRD = real


class ServiceCapabilities(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.require_root(cls)
        if not shutil.which("setpriv"):
            raise unittest.SkipTest("setpriv (util-linux) is not installed")
        harness.enter_netns()

    def test_unit_capabilities_suffice(self):
        agent = BoundedAgent("svccaps", unit_capabilities()).start()
        try:
            with open("/proc/%d/status" % agent.proc.pid) as f:
                bnd = int(re.search(r"CapBnd:\s*([0-9a-f]+)", f.read()).group(1), 16)
            self.assertEqual(bin(bnd).count("1"), len(unit_capabilities()), "the bound did not take")
            agent.ctl("provider", "create", "--name", "m", "--type", "mock")
            agent.ctl("inference", "set", "--provider", "m", "--model", "bounded-model")
            script = ("curl -sS -m 10 https://inference.local/v1/models; echo; "
                      "python3 -c 'import socket; socket.socket().connect((\"203.0.113.9\", 80))' 2>&1 | tail -1")
            r = subprocess.run([harness.REDIRCTL, "run", "--", "sh", "-c", script], capture_output=True, text=True,
                               env=dict(os.environ, REDIR_SOCKET=agent.socket), timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
            self.assertIn('"bounded-model"', r.stdout)
            self.assertIn("Operation not permitted", r.stdout)
        finally:
            agent.cleanup()

    def test_less_than_that_does_not_start(self):
        caps = [c for c in unit_capabilities() if c not in ("perfmon", "sys_admin")]
        agent = BoundedAgent("svccapsless", caps)
        try:
            with self.assertRaises(RuntimeError):
                agent.start(timeout=10)
        finally:
            agent.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
