"""Issue #13: per-sandbox inference limits (policy "inference.limits":
requests_per_minute, tokens_per_day). Counted per attached cgroup before the
provider is called; over a limit the sandbox gets 429 in the API's own error
shape with retry-after. The sandbox cannot reset or dodge its counters (new
connections, other API paths, a sub-cgroup, an Anthropic path); the counters
survive an agent restart. The official OpenAI and Anthropic SDKs (Node) show
what they do with the 429: their retries are counted at the terminator.
Mock provider, clients inside sandbox cgroups, this test's own network
namespace.
"""
import json
import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_provider import FakeProvider, make_test_ca, sandbox_trust_files  # noqa: E402
from harness import Agent, Cgroup, write_policy  # noqa: E402

VIP = "198.18.0.1"
PROVIDER_IP = "203.0.113.100"  # on this test's namespace's lo (harness.FAKE_V4)
NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")

# Requests over the VIP, each on a new TLS connection; prints one JSON line
# per request: status, retry-after, x-should-retry, body.
CALLS = harness.client_script(r"""
ctx = inference_context(sys.argv[1])
out = []
for spec in json.loads(sys.argv[2]):
    s = tls_connect(ctx)
    body = json.dumps(spec.get("body", {"model": "m", "messages": [{"role": "user", "content": "hi"}]})).encode()
    head = "%s %s HTTP/1.1\r\nHost: inference.local\r\nContent-Type: application/json\r\nConnection: close\r\n" % (
        spec.get("method", "POST"), spec["path"])
    for k, v in spec.get("headers", {}).items():
        head += "%s: %s\r\n" % (k, v)
    s.sendall(head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    data = s.makefile("rb").read()  # Connection: close: the answer ends at EOF
    s.close()
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    lines = raw_head.decode().split("\r\n")
    hdrs = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    try:
        parsed = json.loads(rest)
    except ValueError:
        parsed = rest.decode(errors="replace")
    out.append({"status": int(lines[0].split(" ")[1]), "retry_after": hdrs.get("retry-after"),
                "should_retry": hdrs.get("x-should-retry"), "body": parsed})
print(json.dumps(out))
""")

CHAT = {"path": "/v1/chat/completions"}
MESSAGES = {"path": "/v1/messages", "headers": {"anthropic-version": "2023-06-01"},
            "body": {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}}


class LimitsBase(unittest.TestCase):
    tag = "limits"

    @classmethod
    def setUpClass(cls):
        cls.tmp, _ = harness.isolated(cls, cls.tag)
        cls.agent = Agent(cls.tag).start()
        cls.agent.ctl("provider", "create", "--name", "mock", "--type", "mock")
        cls.agent.ctl("inference", "set", "--provider", "mock", "--model", "mock-model")
        cls.ca, _, cls.hosts = sandbox_trust_files(cls.agent, cls.tmp, VIP)
        cls.cgroups = []

    @classmethod
    def tearDownClass(cls):
        cls.agent.cleanup(cls.cgroups)

    @classmethod
    def sandbox(cls, tag, limits, parent=None, route="default"):
        cg = Cgroup(tag, parent)
        cls.cgroups.insert(0, cg)  # children removed before their parents
        if parent is None:
            policy = write_policy(cls.tmp, "p-" + tag, {"inference": {"limits": limits, "route": route}})
            cls.agent.ctl("attach", "--cgroup", cg.path, "--policy", policy)
        return cg

    def calls(self, cg, specs):
        r = cg.run([sys.executable, "-c", CALLS, self.ca, json.dumps(specs)], timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def node(self, cg, sdk, max_retries, timeout=120, after_one=False):
        """An official SDK client in CG: (its report, every attempt the terminator
        logged for CG). AFTER_ONE: the client first makes one call of its own
        (reported apart, in "first"), right before the one measured."""
        since = len(self.agent.audit_records())
        env = dict(os.environ, NODE_EXTRA_CA_CERTS=self.ca, OPENAI_BASE_URL="https://inference.local/v1",
                   ANTHROPIC_BASE_URL="https://inference.local", NODE_PATH=os.path.join(NODE_DIR, "node_modules"))
        argv = ["node", os.path.join(NODE_DIR, "limits_client.js"), sdk, str(max_retries)] + (
            ["after-one"] if after_one else [])
        r = subprocess.run(harness.sandbox_argv(argv, cgroup=cg.path, binds={"/etc/hosts": self.hosts}),
                           capture_output=True, text=True, timeout=timeout, env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        seen = self.agent.wait_audit(lambda x: x.get("event") == "inference" and x.get("cgroup_id") == cg_id(cg),
                                     since=since, count=len(report["attempts"]) + len(report.get("first", [])))
        return report, seen[len(report.get("first", [])):]

    def assert_429(self, r, shape, limit):
        self.assertEqual(r["status"], 429, r)
        self.assertTrue(r["retry_after"] and r["retry_after"].isdigit() and int(r["retry_after"]) >= 1, r)
        if shape == "anthropic":
            self.assertEqual(r["body"]["type"], "error", r)
            err = r["body"]["error"]
        else:
            self.assertEqual(set(r["body"]), {"error"}, r)
            err = r["body"]["error"]
        self.assertEqual(err["type"], "rate_limit_error", r)
        self.assertIn(limit, err["message"])


def cg_id(cg):
    return os.stat(cg.path).st_ino


class RequestsPerMinuteE2E(LimitsBase):
    tag = "limits-rpm"

    def test_over_the_limit_is_a_429_in_each_apis_shape_and_no_path_dodges_it(self):
        cg = self.sandbox("rpm", {"requests_per_minute": 2})
        first = self.calls(cg, [CHAT, MESSAGES])
        self.assertEqual([r["status"] for r in first], [200, 200], first)
        # Escape attempts: every provider-bound path, new connections and TLS
        # sessions each time, an Anthropic path after OpenAI ones: one counter.
        paths = [CHAT, MESSAGES, {"path": "/v1/completions", "body": {"model": "m", "prompt": "hi"}},
                 {"path": "/v1/embeddings", "body": {"model": "m", "input": "hi"}},
                 {"path": "/v1/responses", "body": {"model": "m", "input": "hi"}},
                 {"path": "/v1/chat/completions?x=1"}, {"path": "/v1//chat/completions"}]
        out = self.calls(cg, paths)
        for spec, r in zip(paths, out):
            if spec["path"] == "/v1//chat/completions" and r["status"] in (400, 404):
                continue  # not a path the terminator serves at all: never reaches the provider
            self.assert_429(r, "anthropic" if spec is MESSAGES else "openai", "requests per minute")
            self.assertLessEqual(int(r["retry_after"]), 61)
        # The models list is answered by the terminator itself: not a provider call, not limited.
        models = self.calls(cg, [{"path": "/v1/models", "method": "GET", "body": {}}])
        self.assertEqual(models[0]["status"], 200, models)

    def test_requests_refused_before_the_provider_do_not_use_up_the_minute(self):
        """A malformed body and a provider-side fetch are refused with 400 before
        the limit is consulted: they reach no provider and are not counted."""
        cg = self.sandbox("rpm-400", {"requests_per_minute": 1})
        fetch = {"path": "/v1/responses", "body": {"model": "m", "input": "hi", "tools": [
            {"type": "mcp", "server_label": "x", "server_url": "https://example.com/mcp"}]}}
        out = self.calls(cg, [{"path": "/v1/chat/completions", "body": "not an object"}, fetch, CHAT, CHAT])
        self.assertEqual([r["status"] for r in out], [400, 400, 200, 429], out)

    def test_a_sub_cgroup_shares_its_sandboxs_counter_and_another_sandbox_has_its_own(self):
        cg = self.sandbox("rpm-sub", {"requests_per_minute": 1})
        child = self.sandbox("rpm-sub-child", None, parent=cg)
        other = self.sandbox("rpm-other", {"requests_per_minute": 1})
        self.assertEqual(self.calls(cg, [CHAT])[0]["status"], 200)
        # A process that moves itself into a new sub-cgroup is still the same sandbox.
        self.assert_429(self.calls(child, [CHAT])[0], "openai", "requests per minute")
        self.assertEqual(self.calls(other, [CHAT])[0]["status"], 200)

    def test_a_burst_from_many_processes_at_once_gets_exactly_the_cap(self):
        cg = self.sandbox("rpm-burst", {"requests_per_minute": 5})
        procs = [cg.popen([sys.executable, "-c", CALLS, self.ca, json.dumps([CHAT] * 5)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) for _ in range(4)]
        statuses = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            self.assertEqual(p.returncode, 0, err)
            statuses += [r["status"] for r in json.loads(out)]
        self.assertEqual(sorted(statuses), [200] * 5 + [429] * 15, statuses)

    def test_sdks_make_one_attempt_when_the_wait_is_a_minute_or_more(self):
        """Right after the minute's only request the wait is 60-61 s: beyond what
        the SDKs honour (they would retry at once, 0.5-8 s apart, into the same
        refusal); x-should-retry: false makes their default client stop at one."""
        for sdk in ("openai", "anthropic"):
            cg = self.sandbox("rpm-sdk-" + sdk, {"requests_per_minute": 1})
            report, seen = self.node(cg, sdk, max_retries=2, after_one=True)
            self.assertEqual([a["status"] for a in report["first"]], [200], report)
            self.assertFalse(report["ok"], report)
            self.assertEqual(report["error"]["status"], 429, report)
            self.assertEqual([(a["status"], a["should_retry"]) for a in report["attempts"]], [(429, "false")], report)
            self.assertGreaterEqual(int(report["attempts"][0]["retry_after"]), 60, report)
            self.assertEqual([r["status"] for r in seen], [429], seen)

    def test_counters_survive_an_agent_restart_and_a_kill(self):
        # SIGTERM right after the request: the counters are written at exit.
        stopped = self.sandbox("rpm-stop", {"requests_per_minute": 1})
        self.assertEqual(self.calls(stopped, [CHAT])[0]["status"], 200)
        self.agent.stop()
        self.agent.start()
        self.assert_429(self.calls(stopped, [CHAT])[0], "openai", "requests per minute")
        # kill -9: the counters reach the disk within about a second of a change.
        killed = self.sandbox("rpm-kill", {"requests_per_minute": 1})
        self.assertEqual(self.calls(killed, [CHAT])[0]["status"], 200)
        done = time.monotonic()
        state = os.path.join(self.agent.state, "inference-limits.json")

        def on_disk():
            try:
                with open(state) as f:
                    return str(cg_id(killed)) in json.load(f)["sandboxes"]
            except (OSError, ValueError, KeyError):
                return False
        self.assertTrue(harness.wait_until(on_disk, timeout=10), "the counters never reached " + state)
        self.assertLess(time.monotonic() - done, 2.5, "written more than a second after the request")
        self.agent.kill9()
        self.agent.start()
        self.assert_429(self.calls(killed, [CHAT])[0], "openai", "requests per minute")
        self.assert_429(self.calls(stopped, [CHAT])[0], "openai", "requests per minute")


class FakeProviderE2E(LimitsBase):
    """A real (fake) provider at a fake address, route "ext": it counts what it
    receives and can answer streams without usage."""
    tag = "limits-provider"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        ca, cert, key = make_test_ca(cls.tmp, PROVIDER_IP)
        cls.fake = FakeProvider(PROVIDER_IP, 8443, cert, key, name="fake")
        cls.fake.rec.stream_gap = 0.01
        cls.agent.ctl("provider", "create", "--name", "ext", "--type", "openai-compatible", "--base-url",
                      "https://%s:8443/v1" % PROVIDER_IP, "--ca-file", ca, "--credential", "OPENAI_API_KEY=k")
        cls.agent.ctl("inference", "set", "--route", "ext", "--provider", "ext", "--model", "served-model")

    @classmethod
    def tearDownClass(cls):
        cls.fake.close()
        super().tearDownClass()

    def test_a_refused_request_never_reaches_the_provider(self):
        cg = self.sandbox("provider", {"requests_per_minute": 2}, route="ext")
        before = len(self.fake.rec.requests)
        paths = [CHAT, CHAT, CHAT, {"path": "/v1/responses", "body": {"model": "m", "input": "hi"}},
                 {"path": "/v1/embeddings", "body": {"model": "m", "input": "hi"}}]
        out = self.calls(cg, paths)
        self.assertEqual([r["status"] for r in out], [200, 200, 429, 429, 429], out)
        self.assertEqual([r["path"] for r in self.fake.rec.requests[before:]], ["/v1/chat/completions"] * 2)

    def test_an_answer_without_usage_is_charged_an_estimate(self):
        """A stream whose provider reports no usage is not free: it is charged
        ~1 token per 4 bytes, so a day of 100 tokens is spent by a long answer."""
        self.fake.rec.stream_usage = False
        cg = self.sandbox("no-usage", {"tokens_per_day": 100}, route="ext")
        stream = {"path": "/v1/chat/completions", "body": {"model": "m", "stream": True, "messages": [
            {"role": "user", "content": "x" * 400}]}}
        out = self.calls(cg, [stream, CHAT])
        self.assertEqual(out[0]["status"], 200, out)
        self.assertNotIn("usage", out[0]["body"])  # the stream carried no usage
        self.assert_429(out[1], "openai", "tokens per day")


class TokensPerDayE2E(LimitsBase):
    tag = "limits-tpd"

    def test_tokens_the_provider_reports_are_counted_until_the_day_is_spent(self):
        cg = self.sandbox("tpd", {"tokens_per_day": 40})
        out = []
        for _ in range(20):
            r = self.calls(cg, [CHAT])[0]
            out.append(r)
            if r["status"] != 200:
                break
        self.assertEqual(out[0]["status"], 200, out)
        used = [r["body"]["usage"]["prompt_tokens"] + r["body"]["usage"]["completion_tokens"]
                for r in out if r["status"] == 200]
        # Admitted while the day's total was below the cap, refused from the first request at or above it.
        self.assertGreaterEqual(sum(used), 40, out)
        self.assertLess(sum(used[:-1]), 40, out)
        self.assert_429(out[-1], "openai", "tokens per day")
        self.assertGreater(int(out[-1]["retry_after"]), 86000)
        # No SDK waits a day: the answer says not to retry.
        self.assertEqual(out[-1]["should_retry"], "false")
        self.assert_429(self.calls(cg, [MESSAGES])[0], "anthropic", "tokens per day")

    def test_sdks_do_not_retry_a_spent_day(self):
        cg = self.sandbox("tpd-sdk", {"tokens_per_day": 1})
        self.assertEqual(self.calls(cg, [CHAT])[0]["status"], 200)
        for sdk in ("openai", "anthropic"):
            report, seen = self.node(cg, sdk, max_retries=3)
            self.assertFalse(report["ok"], report)
            self.assertEqual(report["error"]["status"], 429, report)
            self.assertEqual(len(report["attempts"]), 1, report)
            self.assertEqual([r["status"] for r in seen], [429], seen)


class SdkRetryAfterE2E(LimitsBase):
    """What the SDKs do with a retry-after they can wait for. Takes a minute:
    the window of requests_per_minute must be almost over."""
    tag = "limits-sdk"

    def test_sdks_wait_the_retry_after_once_then_succeed(self):
        cgs = {sdk: self.sandbox("sdk-" + sdk, {"requests_per_minute": 1}) for sdk in ("openai", "anthropic")}
        started = time.time()
        for cg in cgs.values():
            self.assertEqual(self.calls(cg, [CHAT])[0]["status"], 200)
        # Near the end of the window the retry-after is a few seconds, which the SDKs honour.
        time.sleep(max(0.0, started + 53 - time.time()))
        results = {}
        threads = []
        for sdk, cg in cgs.items():
            t = threading.Thread(target=lambda s=sdk, c=cg: results.__setitem__(s, self.node(c, s, max_retries=3)))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(120)
        for sdk in cgs:
            report, seen = results[sdk]
            self.assertTrue(report["ok"], report)
            att = report["attempts"]
            self.assertEqual([a["status"] for a in att], [429, 200], report)
            self.assertEqual([r["status"] for r in seen], [429, 200], seen)
            wait = int(att[0]["retry_after"])
            self.assertLess(wait, 60, report)
            gap = att[1]["at"] - att[0]["at"]
            self.assertGreaterEqual(gap, wait - 0.5, report)
            self.assertLess(gap, wait + 5, report)


if __name__ == "__main__":
    unittest.main()
