"""scripts/demo.sh, the end of the README's set-up command: its transcript
shows a sandboxed command reaching inference.local with the model rewritten and
the provider's credential injected (named in the audit record, its value
nowhere), an allowed name, EPERM for a denied address and NXDOMAIN for a denied name,
the agent's audit records of each, and how to rerun it."""
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


class DemoTranscript(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.require_root(cls)
        # The demo makes its own network namespaces; nothing of ours is shared.
        r = subprocess.run([os.path.join(REPO, "scripts", "demo.sh")], capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, REDIR_BUILD=harness.BUILD))
        cls.rc, cls.out = r.returncode, r.stdout + r.stderr

    def test_demo_succeeds_and_says_how_to_rerun(self):
        self.assertEqual(self.rc, 0, self.out)
        self.assertIn("Rerun this demo: sudo scripts/demo.sh", self.out)
        self.assertIn("no packet leaves the machine", self.out)

    def test_sandbox_has_its_own_network_namespace(self):
        m = re.search(r"network namespace: (net:\[\d+\]), address (192\.0\.2\.\d+/30)", self.out)
        self.assertTrue(m, self.out)
        self.assertNotEqual(m.group(1), os.readlink("/proc/self/ns/net"))
        self.assertIn("redirctl run --netns", self.out)

    def test_inference_local_answers_with_the_rewritten_model(self):
        self.assertIn("hello from the stand-in provider", self.out)
        self.assertIn('"model": "demo-model"', self.out)
        self.assertRegex(self.out, r"inference +POST /v1/chat/completions +model 'gpt-4o' -> 'demo-model'")

    def test_credential_injected_by_the_agent_and_its_value_shown_nowhere(self):
        self.assertRegex(self.out, r"inference +POST /v1/chat/completions .*status 200 +credential: injected "
                                   r"\(authorization header, key OPENAI_API_KEY\)")
        self.assertIn("the provider received the agent's key in its authorization header: yes", self.out)
        self.assertIn("the key in the sandbox's output: 0 times; in the agent's audit log: 0 times", self.out)
        self.assertNotIn("sk-demo-", self.out)

    def test_allowed_name_reached(self):
        self.assertIn("hello from api.allowed.example (192.0.2.200)", self.out)

    def test_denied_address_eperm_and_recorded(self):
        self.assertIn("PermissionError: [Errno 1] Operation not permitted", self.out)
        self.assertRegex(self.out, r"connect +192\.0\.2\.201:80/tcp +deny")

    def test_denied_name_nxdomain_and_recorded(self):
        self.assertRegex(self.out, r"\$ getent hosts blocked\.example\n\(exit 2\)")
        self.assertRegex(self.out, r"dns +blocked\.example +denied")


if __name__ == "__main__":
    unittest.main(verbosity=2)
