"""Issue #13: per-sandbox inference routes. A policy names its route
(`"inference": {"route": R}`, "default" when unnamed); `redirctl inference
set/update --route` changes the next request of exactly the sandboxes whose
policy names that route; `inference list` shows who uses what; deleting a
provider or a route still in use is refused naming the users. Mock provider
(its answer names the model it served), clients inside sandbox cgroups.
"""
import json
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Agent, Cgroup, write_policy  # noqa: E402

# One chat call over the inference VIP; prints status and the model served.
CALL = harness.client_script(r"""
s = tls_connect(inference_context(sys.argv[1]))
send_chat(s, chat_body(False, model="whatever-the-agent-asks"), close=True)
status, body = read_response(s)
d = json.loads(body)
print(json.dumps({"status": status, "model": d.get("model"), "error": d.get("error")}))
""")


class RoutesE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, _ = harness.isolated(cls, "routes")
        cls.agent = Agent("routes").start()
        a = cls.agent
        a.ctl("provider", "create", "--name", "mock-a", "--type", "mock")
        a.ctl("provider", "create", "--name", "mock-b", "--type", "mock")
        a.ctl("inference", "set", "--provider", "mock-a", "--model", "default-model")
        a.ctl("inference", "set", "--route", "fast", "--provider", "mock-b", "--model", "fast-model")
        cls.ca = os.path.join(cls.tmp, "inference-ca.pem")
        a.ctl("ca", "export", "--out", cls.ca)
        cls.cg_default, cls.cg_fast, cls.cg_other = Cgroup("rt-default"), Cgroup("rt-fast"), Cgroup("rt-other")
        a.ctl("attach", "--cgroup", cls.cg_default.path, "--policy",
              write_policy(cls.tmp, "uses-default", {"inference": {"enabled": True}}))
        a.ctl("attach", "--cgroup", cls.cg_fast.path, "--policy",
              write_policy(cls.tmp, "uses-fast", {"inference": {"route": "fast"}}))
        a.ctl("attach", "--cgroup", cls.cg_other.path, "--policy",
              write_policy(cls.tmp, "uses-unset", {"inference": {"route": "not-set-yet"}}))

    @classmethod
    def tearDownClass(cls):
        cls.agent.cleanup([cls.cg_default, cls.cg_fast, cls.cg_other])

    def call(self, cg):
        r = cg.run([sys.executable, "-c", CALL, self.ca], timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def test_each_sandbox_gets_its_route_and_a_change_reaches_only_its_users(self):
        self.assertEqual(self.call(self.cg_default)["model"], "default-model")
        self.assertEqual(self.call(self.cg_fast)["model"], "fast-model")
        self.agent.ctl("inference", "update", "--route", "fast", "--model", "fast-model-2")
        try:
            self.assertEqual(self.call(self.cg_fast)["model"], "fast-model-2")
            self.assertEqual(self.call(self.cg_default)["model"], "default-model")
        finally:
            self.agent.ctl("inference", "update", "--route", "fast", "--model", "fast-model")

    def test_a_route_nobody_configured_is_a_503_naming_it(self):
        out = self.call(self.cg_other)
        self.assertEqual(out["status"], 503, out)
        self.assertIn("redirctl inference set --route not-set-yet", out["error"]["message"])

    def test_list_shows_users_and_deletions_in_use_are_refused(self):
        routes = {r["route"]: r for r in json.loads(self.agent.ctl("inference", "list", "--json").stdout)}
        self.assertEqual(routes["fast"]["model"], "fast-model")
        self.assertEqual(routes["fast"]["users"], ["policy uses-fast (sandboxes %s)" % self.cg_fast.path])
        r = self.agent.ctl("provider", "delete", "mock-b", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("fast (model fast-model)", r.stderr)
        r = self.agent.ctl("inference", "delete", "--route", "fast", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("policy uses-fast", r.stderr)
        self.assertIn(self.cg_fast.path, r.stderr)
        # A route nobody names can go; its provider then can too.
        self.agent.ctl("inference", "set", "--route", "spare", "--provider", "mock-a", "--model", "x")
        self.agent.ctl("inference", "delete", "--route", "spare")
        self.assertNotIn("spare", self.agent.ctl("inference", "list").stdout)

    def test_routes_survive_a_restart(self):
        self.agent.stop()
        self.agent.start()
        self.assertEqual(self.call(self.cg_fast)["model"], "fast-model")
        self.assertEqual(self.call(self.cg_default)["model"], "default-model")


if __name__ == "__main__":
    unittest.main()
