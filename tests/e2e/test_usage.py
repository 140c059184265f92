"""Issue #13 (accounting): inference usage per sandbox and route, as the
provider reported it (streams included), read with `redirctl usage` and the
Prometheus counters, kept across a kill -9 of the agent; and a sandbox cannot
forge the usage it is charged: only the provider's framing counts.

The fake provider is a local TLS server at a fake address in this test's own
network namespace (certificate from a test CA given as --ca-file); it reports
distinct token counts per answer kind (fake_provider.USAGE) and can echo the
prompt ("ECHO:" prefix), i.e. say whatever the sandbox asked it to.
"""
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
from fake_provider import USAGE, FakeProvider, make_test_ca, sandbox_trust_files  # noqa: E402
from harness import Agent, Cgroup, wait_until, write_policy  # noqa: E402

VIP = "198.18.0.1"
PROVIDER_IP = "203.0.113.100"
NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
ZERO = {"requests": 0, "input_tokens": 0, "output_tokens": 0, "requests_without_usage": 0}


class UsageE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.require_root(cls)
        harness.enter_netns()
        cls.tmp = tempfile.mkdtemp(prefix="redir-e2e-usage-")
        os.chmod(cls.tmp, 0o755)
        ca, cert, key = make_test_ca(cls.tmp, PROVIDER_IP)
        cls.fake = FakeProvider(PROVIDER_IP, 8443, cert, key, name="fake")
        cls.fake.rec.stream_usage = True
        cls.fake.rec.stream_gap = 0.01
        cls.metrics_port = harness.free_port()
        cls.agent = Agent("usage", extra_args=["--metrics", "127.0.0.1:%d" % cls.metrics_port]).start()
        a = cls.agent
        a.ctl("provider", "create", "--name", "pa", "--type", "openai-compatible", "--base-url",
              "https://%s:8443/v1" % PROVIDER_IP, "--ca-file", ca, "--credential", "OPENAI_API_KEY=k")
        a.ctl("provider", "create", "--name", "pant", "--type", "anthropic", "--base-url",
              "https://%s:8443" % PROVIDER_IP, "--ca-file", ca, "--credential", "ANTHROPIC_API_KEY=k")
        a.ctl("inference", "set", "--provider", "pa", "--model", "served-model")
        policy = write_policy(cls.tmp, "inference-only", {"inference": {"enabled": True}})
        cls.cg = Cgroup("usage-a")
        cls.other = Cgroup("usage-b")
        for cg in (cls.cg, cls.other):
            a.ctl("attach", "--cgroup", cg.path, "--policy", policy)
        cls.ca_local, cls.bundle, cls.hosts = sandbox_trust_files(a, cls.tmp, VIP)

    @classmethod
    def tearDownClass(cls):
        cls.fake.close()
        cls.agent.cleanup([cls.cg, cls.other])

    def setUp(self):
        self.agent.ctl("inference", "set", "--provider", "pa", "--model", "served-model")
        self.fake.rec.stream_usage = True

    # -- helpers -------------------------------------------------------------

    def sandboxed(self, argv, cg=None, timeout=60):
        """ARGV in sandbox CG (default: self.cg) with inference.local in /etc/hosts
        and the environment `redirctl run` provides."""
        env = dict(os.environ)
        env.update({
            "SSL_CERT_FILE": self.bundle, "CURL_CA_BUNDLE": self.bundle, "NODE_EXTRA_CA_CERTS": self.ca_local,
            "OPENAI_BASE_URL": "https://inference.local/v1", "ANTHROPIC_BASE_URL": "https://inference.local",
            "NODE_PATH": os.path.join(NODE_DIR, "node_modules"),
        })
        script = 'mount --bind "$1" /etc/hosts && echo $$ > "$2/cgroup.procs" && shift 2 && exec "$@"'
        return subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", self.hosts, (cg or self.cg).path] +
                              list(argv), capture_output=True, text=True, timeout=timeout, env=env)

    def post(self, path, body, cg=None, headers=()):
        """curl POST from the sandbox; returns its stdout (the answer as received)."""
        argv = ["curl", "-sS", "-N", "https://inference.local" + path, "-H", "content-type: application/json",
                "-d", json.dumps(body)]
        for h in headers:
            argv += ["-H", h]
        r = self.sandboxed(argv, cg)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def counters(self, cg=None):
        rows = json.loads(self.agent.ctl("usage", "--json", "--cgroup", (cg or self.cg).path).stdout)
        rows = [r for r in rows if r["route"] == "default"]
        return rows[0] if rows else dict(ZERO, errors=[])

    def charged(self, action, requests=1, cg=None):
        """What ACTION added to sandbox CG's counters once REQUESTS more requests were recorded."""
        before = self.counters(cg)
        action()
        after = wait_until(lambda: (lambda c: c if c["requests"] >= before["requests"] + requests else None)(
            self.counters(cg)), timeout=10) or self.counters(cg)
        return {k: after[k] - before[k] for k in ZERO}

    def expect(self, *kinds, without_usage=0):
        ins = sum(USAGE[k][0] for k in kinds)
        outs = sum(USAGE[k][1] for k in kinds)
        return {"requests": len(kinds) + without_usage, "input_tokens": ins, "output_tokens": outs,
                "requests_without_usage": without_usage}

    # -- counting ------------------------------------------------------------

    def test_openai_sdk_plain_stream_and_stream_helper_are_counted(self):
        def sdk(mode):
            r = self.sandboxed(["node", os.path.join(NODE_DIR, "usage_client.js"), mode])
            self.assertEqual(r.returncode, 0, r.stderr)
            return json.loads(r.stdout)

        out = {}
        got = self.charged(lambda: out.update(sdk("plain")))
        self.assertEqual(got, self.expect("chat"))
        self.assertEqual(out["text"], "hello from fake")

        got = self.charged(lambda: out.update(sdk("stream")))
        self.assertEqual(got, self.expect("chat_stream"))
        self.assertEqual(out["text"], "tok0 tok1 tok2 tok3 tok4 ")
        # The usage chunk the terminator asked for reaches the SDK: one chunk with
        # empty choices, iterated without error.
        self.assertEqual(out["empty_choices"], 1, out)
        self.assertEqual(out["usage"]["prompt_tokens"], USAGE["chat_stream"][0])
        self.assertIs(self.fake.rec.last()["body"]["stream_options"]["include_usage"], True)

        got = self.charged(lambda: out.update(sdk("helper")))
        self.assertEqual(got, self.expect("chat_stream"))
        self.assertEqual(out["final_text"], "tok0 tok1 tok2 tok3 tok4 ")

    def test_anthropic_sdk_plain_stream_and_stream_helper_are_counted(self):
        """The official Anthropic SDK (Node): its answer's usage, and for streams
        input_tokens from message_start plus the final output_tokens of
        message_delta (cumulative: message_start's output count is not added)."""
        self.agent.ctl("inference", "set", "--provider", "pant", "--model", "served-model")

        def sdk(mode):
            r = self.sandboxed(["node", os.path.join(NODE_DIR, "usage_client.js"), mode])
            self.assertEqual(r.returncode, 0, r.stderr)
            return json.loads(r.stdout)

        for mode, kind, text in (("anthropic-plain", "anthropic", "hello from fake"),
                                 ("anthropic-stream", "anthropic_stream", "tok0 tok1 tok2 "),
                                 ("anthropic-helper", "anthropic_stream", "tok0 tok1 tok2 ")):
            out = {}
            got = self.charged(lambda: out.update(sdk(mode)))
            self.assertEqual(got, self.expect(kind), mode)
            self.assertEqual(out["text"], text, out)
            # What the SDK saw is what the sandbox was charged.
            self.assertEqual((out["usage"]["input_tokens"], out["usage"]["output_tokens"]), USAGE[kind], out)
            self.assertEqual(self.fake.rec.last()["path"], "/v1/messages")

    def test_sandbox_cannot_opt_out_of_stream_usage(self):
        body = {"stream": True, "stream_options": {"include_usage": False}, "messages": [{"role": "user", "content": "x"}]}
        got = self.charged(lambda: self.post("/v1/chat/completions", body))
        self.assertEqual(got, self.expect("chat_stream"))
        self.assertEqual(self.fake.rec.last()["body"]["stream_options"], {"include_usage": True})

    def test_responses_and_anthropic_bodies_and_streams_are_counted(self):
        got = self.charged(lambda: self.post("/v1/responses", {"input": "hi"}))
        self.assertEqual(got, self.expect("responses"))
        got = self.charged(lambda: self.post("/v1/responses", {"input": "hi", "stream": True}))
        self.assertEqual(got, self.expect("responses_stream"))
        self.agent.ctl("inference", "set", "--provider", "pant", "--model", "served-model")
        msg = {"max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        got = self.charged(lambda: self.post("/v1/messages", msg, headers=["anthropic-version: 2023-06-01"]))
        self.assertEqual(got, self.expect("anthropic"))
        got = self.charged(lambda: self.post("/v1/messages", dict(msg, stream=True),
                                             headers=["anthropic-version: 2023-06-01"]))
        self.assertEqual(got, self.expect("anthropic_stream"))

    def test_provider_without_stream_usage_counts_the_request_with_tokens_unknown(self):
        self.fake.rec.stream_usage = False
        body = {"stream": True, "messages": [{"role": "user", "content": "x"}]}
        got = self.charged(lambda: self.post("/v1/chat/completions", body))
        self.assertEqual(got, self.expect(without_usage=1))

    def test_errors_are_counted_by_status(self):
        before = {e["status"]: e["requests"] for e in self.counters()["errors"]}
        got = self.charged(lambda: self.post("/v1/chat/completions", "not an object"))
        self.assertEqual(got, self.expect(without_usage=1))
        after = {e["status"]: e["requests"] for e in self.counters()["errors"]}
        self.assertEqual(after.get(400, 0), before.get(400, 0) + 1, after)
        self.assertGreater(self.counters()["last_request_ms"], (time.time() - 60) * 1000)

    # -- escape attempts -------------------------------------------------------

    def test_sandbox_cannot_forge_the_usage_it_is_charged(self):
        """The sandbox writes usage into its request and makes the model say
        usage-like SSE lines and JSON (to inflate, or to zero what the provider
        reported first); only the provider's framing is counted, and the other
        sandbox's counters do not move."""
        other_before = self.counters(self.other)
        inflate = '\n\ndata: {"choices":[],"usage":{"prompt_tokens":1000000,"completion_tokens":1000000}}\n\n'
        zero = ('\n\nevent: message_start\ndata: {"type":"message_start","message":{"usage":'
                '{"input_tokens":0,"output_tokens":0}}}\n\nevent: message_delta\ndata: {"type":"message_delta",'
                '"usage":{"output_tokens":0}}\n\n')
        close_string = '"},"usage":{"prompt_tokens":0,"completion_tokens":0}}'
        forged_body = {"usage": {"prompt_tokens": 0, "completion_tokens": 0, "input_tokens": 0},
                       "stream_options": {"include_usage": True}}

        answers = []
        got = self.charged(lambda: answers.append(self.post("/v1/chat/completions", dict(
            forged_body, stream=True, messages=[{"role": "user", "content": "ECHO:" + inflate}]))))
        self.assertEqual(got, self.expect("chat_stream"))
        got = self.charged(lambda: answers.append(self.post("/v1/chat/completions", dict(
            forged_body, messages=[{"role": "user", "content": "ECHO:" + close_string}]))))
        self.assertEqual(got, self.expect("chat"))
        got = self.charged(lambda: answers.append(self.post("/v1/responses", dict(
            forged_body, stream=True, input="ECHO:" + inflate))))
        self.assertEqual(got, self.expect("responses_stream"))
        self.agent.ctl("inference", "set", "--provider", "pant", "--model", "served-model")
        got = self.charged(lambda: answers.append(self.post("/v1/messages", dict(
            forged_body, max_tokens=5, stream=True, messages=[{"role": "user", "content": "ECHO:" + zero}]),
            headers=["anthropic-version: 2023-06-01"])))
        self.assertEqual(got, self.expect("anthropic_stream"))

        # The forgeries did reach the sandbox, as text of the model's answer.
        self.assertIn("1000000", answers[0])
        self.assertIn('\\"usage\\":{\\"prompt_tokens\\":0', answers[1])
        self.assertIn("1000000", answers[2])
        self.assertIn('\\"input_tokens\\":0', answers[3])
        self.assertEqual(self.counters(self.other), other_before)

    # -- reading it ------------------------------------------------------------

    def test_human_output_and_metrics_agree_with_the_ledger(self):
        self.charged(lambda: self.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}))
        c = self.counters()
        text = self.agent.ctl("usage", "--cgroup", self.cg.path).stdout
        self.assertIn(self.cg.path, text)
        self.assertIn("input_tokens %d" % c["input_tokens"], text)
        everyone = self.agent.ctl("usage").stdout
        self.assertIn(self.cg.path, everyone)
        cg_id = os.stat(self.cg.path).st_ino
        self.assertEqual(c["cgroup_id"], cg_id)
        body = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port, timeout=10).read().decode()
        labels = '{cgroup_id="%d",route="default"}' % cg_id
        self.assertIn("redir_inference_input_tokens_total%s %d\n" % (labels, c["input_tokens"]), body)
        self.assertIn("redir_inference_output_tokens_total%s %d\n" % (labels, c["output_tokens"]), body)
        self.assertIn("redir_inference_requests_total%s %d\n" % (labels, c["requests"]), body)

    def test_kill9_restart_keeps_counters_lost_window_at_most_a_second(self):
        """Counters reach the disk within about a second of the request (a flush
        timer, not a write per request), and a kill -9 then a restart keeps them."""
        self.charged(lambda: self.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}))
        done = time.time()
        want = self.counters()
        ledger = os.path.join(self.agent.state, "usage.json")

        def on_disk():
            try:
                with open(ledger) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                return None
            for sb in doc["sandboxes"]:
                for r in sb["routes"]:
                    if sb["cgroup_id"] == want["cgroup_id"] and r["route"] == "default" and \
                            r["requests"] == want["requests"]:
                        return time.time()
            return None
        seen = wait_until(on_disk, timeout=10)
        self.assertTrue(seen, "the ledger file never showed the request")
        self.assertLess(seen - done, 2.5, "flushed %.2fs after the request: more than a second may be lost" %
                        (seen - done))
        self.agent.kill9()
        self.agent.start()
        self.assertEqual(self.counters(), want)
        # And counting goes on from there.
        got = self.charged(lambda: self.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "y"}]}))
        self.assertEqual(got, self.expect("chat"))


if __name__ == "__main__":
    unittest.main()
