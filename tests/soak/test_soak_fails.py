"""The soak can fail: a short soak.mixed_traffic (test_soak.py) against the
sanitized redird with a deliberate leak switched on (REDIR_LEAK_MUTANT,
userspace/control/leak_mutant.*, compiled in only in the sanitized tree) must
fail, and say why. "heap" loses 64 bytes per control request: too little for
the RSS bound, so only LeakSanitizer's report at redird's exit can catch it.
"fd" keeps 4 descriptors per control request: the soak's fd bound must.
"""
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SECONDS = os.environ.get("REDIR_MUTANT_SOAK_SECONDS", "30")


def soak_with(mutant):
    env = dict(os.environ, REDIR_LEAK_MUTANT=mutant, REDIR_SOAK_SECONDS=SECONDS)
    env.pop("REDIR_SOAK_RESULT", None)  # the real soak's figures stay the real soak's
    r = subprocess.run([sys.executable, "-m", "unittest", "-v", "test_soak"], cwd=HERE, env=env,
                       capture_output=True, text=True, timeout=600)
    return r.returncode, r.stdout + r.stderr


class SoakFailsOnLeaks(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("the soak needs root")

    def test_a_heap_leak_per_control_request_fails_the_soak(self):
        rc, out = soak_with("heap")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("sanitizer reports", out)
        self.assertIn("LeakSanitizer: detected memory leaks", out)
        self.assertIn("leak_mutant_on_request", out, "the report names the leaking call")
        self.assertNotIn("RSS growth", out, "the leak is meant to be too small for the RSS bound")

    def test_an_fd_leak_per_control_request_fails_the_soak(self):
        rc, out = soak_with("fd")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("fd growth", out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
