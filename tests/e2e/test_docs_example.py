"""Issue #13's documentation cannot rot: docs/examples/run.sh runs
docs/examples/inference.sh (routes, usage, limits, provider-side fetches,
revocation on reload, mock provider) against an agent of its own in a private
network namespace it creates (fake servers on that namespace's loopback), and
this test checks what it prints; every shell block of README.md and docs/
marked <!-- example: docs/examples/inference.sh --> must consist of commands
the script runs, so the documented commands are the ones that are run."""
import json
import os
import re
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(REPO, "docs", "examples", "inference.sh")
MARKER = "<!-- example: docs/examples/inference.sh -->"


def commands(text):
    """Shell text as its command lines: continuations joined, comments and
    blank lines dropped, whitespace collapsed."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s{2,}#.*$", "", line).strip()
        if line and not line.startswith("#"):
            out.append(" ".join(line.split()))
    return out


def marked_blocks(path):
    """The ```sh blocks of PATH that follow MARKER: [(line number, text)]."""
    lines = open(path).read().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() == MARKER:
            j = i + 1
            assert lines[j].startswith("```"), "%s:%d: the marker must stand right above a ```sh block" % (path, i + 1)
            end = lines.index("```", j + 1)
            blocks.append((j + 1, "\n".join(lines[j + 1:end])))
    return blocks


class DocsCommandsAreTheExample(unittest.TestCase):
    def test_every_marked_block_is_run_by_the_example(self):
        ran = set(commands(open(SCRIPT).read()))
        docs = [os.path.join(REPO, "README.md")] + [os.path.join(REPO, "docs", f)
                                                    for f in sorted(os.listdir(os.path.join(REPO, "docs")))
                                                    if f.endswith(".md")]
        found = 0
        for path in docs:
            for line, block in marked_blocks(path):
                found += 1
                for cmd in commands(block):
                    self.assertTrue(cmd in ran, "%s:%d: documented but not run by %s: %s" % (
                        os.path.relpath(path, REPO), line, os.path.relpath(SCRIPT, REPO), cmd))
        # README: routes, usage, limits, provider_fetch, revocation; docs/terminator.md: limits.
        self.assertGreaterEqual(found, 6)


class DocsExampleRuns(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.require_root(cls)
        # run.sh makes its own network namespace (unshare --net): nothing of ours is shared.
        r = subprocess.run([os.path.join(REPO, "docs", "examples", "run.sh")], capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, REDIR_BUILD=harness.BUILD))
        cls.rc, cls.out, cls.err = r.returncode, r.stdout, r.stderr
        cls.sections = dict(re.findall(r"^== ([a-z-]+)[^\n]*\n(.*?)(?=^== |\Z)", r.stdout, re.S | re.M))

    def section(self, name):
        self.assertEqual(self.rc, 0, self.out + self.err)
        self.assertIn(name, self.sections, self.out)
        return self.sections[name]

    def test_routes_each_sandbox_gets_its_policys_route(self):
        text = self.section("routes")
        answers = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
        # default, then route big, then big after `inference update`: only its sandboxes see the new model.
        self.assertEqual([a["model"] for a in answers], ["demo-model", "demo-model-large", "demo-model-xl"], text)
        self.assertRegex(text, r"route big\tprovider demo\tmodel demo-model-large.*\n +used by policy big-model")

    def test_usage_counts_each_sandbox_and_route(self):
        text = self.section("usage")
        rows = json.loads([l for l in text.splitlines() if l.startswith("[")][0])
        # One row per sandbox (each `redirctl run` is one) and route; the streamed answer counted too.
        self.assertEqual(sorted((r["route"], r["requests"]) for r in rows),
                         [("big", 1), ("big", 1), ("default", 1), ("default", 1)], rows)
        self.assertTrue(all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in rows), rows)
        # Each names its sandbox's path, though every `redirctl run` was gone within a second.
        self.assertTrue(all(r["cgroup"].startswith("/sys/fs/cgroup/") for r in rows), rows)
        metrics = sum(int(l.split()[-1]) for l in text.splitlines()
                      if l.startswith("redir_inference_requests_total{"))
        self.assertEqual(metrics, 4, text)

    def test_limits_third_request_of_the_minute_is_a_429_with_retry_after(self):
        lines = self.section("limits").split()
        self.assertEqual(lines[:4], ["200", "retry-after=", "200", "retry-after="], lines)
        self.assertEqual(lines[4], "429", lines)
        self.assertRegex(lines[5], r"^retry-after=(59|60|61)$")

    def test_provider_fetch_refused_then_allowed_by_policy(self):
        text = self.section("provider-side")
        refusal = json.loads(text.splitlines()[0])
        self.assertEqual(refusal["error"]["type"], "invalid_request_error", text)
        self.assertIn('tools[0].type "mcp"', refusal["error"]["message"])
        self.assertIn('"provider_fetch": true', refusal["error"]["message"])
        self.assertEqual(text.splitlines()[1], "200", text)

    def test_revocation_resets_a_and_b_keeps_flowing(self):
        text = self.section("revocation")
        self.assertIn("1 connection(s) it no longer allows reset", text)
        self.assertIn("A reset: Software caused connection abort", text)
        self.assertNotIn("B reset", text)
        m = re.search(r"bytes after the reset: A (\d+), B (\d+)", text)
        self.assertTrue(m, text)
        self.assertEqual(int(m.group(1)), 0, text)
        self.assertGreater(int(m.group(2)), 0, text)
        revoked = [json.loads(l) for l in text.splitlines() if '"event":"revoked"' in l]
        self.assertEqual([(r["policy"], r["dst"]) for r in revoked], [("egress", "203.0.113.10:8080")], text)


if __name__ == "__main__":
    unittest.main()
