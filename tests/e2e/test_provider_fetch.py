"""Issue #13: inference.local is not an egress channel. With the policy's
inference.provider_fetch false (the default), requests that ask the provider
to reach the network (Responses MCP and web search tools, images by URL) are
refused with 400 before they leave; a policy with provider_fetch true lets
them through; the billed organisation and project are the provider's
configuration whatever the sandbox sends. Driven by the official OpenAI SDK
(Node) from inside sandbox cgroups, against a fake provider in this test's
own network namespace.
"""
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_provider import serve_inference  # noqa: E402
from harness import Agent, Cgroup, write_policy  # noqa: E402

VIP = "198.18.0.1"
PROVIDER_IP = "203.0.113.100"
NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
FETCHES = ("mcp", "web_search", "input_image_url", "chat_image_url")


class ProviderFetchE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, _ = harness.isolated(cls, "fetch")
        # inference.local through a private /etc/hosts: this test does not depend on the DNS responder.
        cls.hosts = os.path.join(cls.tmp, "hosts")
        with open(cls.hosts, "w") as f:
            f.write("127.0.0.1 localhost\n%s inference.local\n" % VIP)
        cls.agent = Agent("fetch").start()
        cls.fake, cls.ca_local = serve_inference(cls.agent, cls.tmp, PROVIDER_IP)
        # The operator bills one organisation and project, whatever the sandbox asks for.
        cls.agent.ctl("provider", "update", "fake", "--credential", "OPENAI_ORG_ID=org-operator",
                      "--credential", "OPENAI_PROJECT_ID=proj-operator")
        a = cls.agent
        cls.closed_policy = write_policy(cls.tmp, "fetch-closed", {"inference": {"enabled": True}})
        cls.open_policy = write_policy(cls.tmp, "fetch-open", {"inference": {"provider_fetch": True}})
        cls.closed = Cgroup("fetch-closed")
        cls.open = Cgroup("fetch-open")
        a.ctl("attach", "--cgroup", cls.closed.path, "--policy", cls.closed_policy)
        a.ctl("attach", "--cgroup", cls.open.path, "--policy", cls.open_policy)

    @classmethod
    def tearDownClass(cls):
        cls.fake.close()
        cls.agent.cleanup([cls.closed, cls.open])

    def sdk(self, cg, mode):
        """The SDK client in CG's sandbox; its printed outcome."""
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=self.ca_local, OPENAI_BASE_URL="https://inference.local/v1",
                   NODE_PATH=os.path.join(NODE_DIR, "node_modules"))
        r = cg.run(["node", os.path.join(NODE_DIR, "openai_fetch_client.js"), mode], binds={"/etc/hosts": self.hosts},
                   timeout=60, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def forwarded(self):
        return len(self.fake.rec.requests)

    def test_fetches_refused_before_the_provider(self):
        for mode in FETCHES:
            before = self.forwarded()
            out = self.sdk(self.closed, mode)
            self.assertFalse(out["ok"], mode)
            self.assertEqual(out["status"], 400, (mode, out))
            self.assertIn('"provider_fetch": true', out["message"], mode)
            self.assertEqual(self.forwarded(), before, "%s reached the provider" % mode)

    def test_inline_image_and_plain_chat_pass(self):
        for mode in ("chat_image_data", "chat"):
            before = self.forwarded()
            out = self.sdk(self.closed, mode)
            self.assertTrue(out["ok"], (mode, out))
            self.assertEqual(self.forwarded(), before + 1, mode)

    def test_policy_switch_lets_fetches_through(self):
        out = self.sdk(self.open, "mcp")
        self.assertTrue(out["ok"], out)
        rec = self.fake.rec.last()
        self.assertEqual(rec["path"], "/v1/responses")
        self.assertEqual(rec["body"]["tools"][0]["type"], "mcp")

    def test_reload_applies_to_the_next_request(self):
        pol = write_policy(self.tmp, "fetch-closed-opened",
                           {"name": "fetch-closed", "inference": {"provider_fetch": True}})
        self.agent.ctl("policy", "load", pol)
        try:
            self.assertTrue(self.sdk(self.closed, "web_search")["ok"])
        finally:
            self.agent.ctl("policy", "load", self.closed_policy)
        self.assertEqual(self.sdk(self.closed, "web_search")["status"], 400)

    def test_org_and_project_are_the_providers(self):
        for cg in (self.closed, self.open):
            out = self.sdk(cg, "chat")
            self.assertTrue(out["ok"], out)
            h = self.fake.rec.last()["headers"]
            self.assertEqual(h.get("openai-organization"), "org-operator")
            self.assertEqual(h.get("openai-project"), "proj-operator")


if __name__ == "__main__":
    unittest.main()
