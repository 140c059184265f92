"""`redirctl run`: a transient sandbox in which tools reach inference.local with
no configuration of their own (DNS through the agent, CA and base URLs from
the environment run sets), and nothing else."""
import json
import os
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Agent, TcpServer  # noqa: E402

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")


class RunE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        harness.enter_netns()
        cls.tmp = tempfile.mkdtemp(prefix="redir-e2e-run-")
        os.chmod(cls.tmp, 0o755)
        cls.resolv = os.path.join(cls.tmp, "resolv.conf")
        with open(cls.resolv, "w") as f:
            f.write("nameserver 192.0.2.99\noptions attempts:1 timeout:2\n")
        cls.agent = Agent("run").start()
        cls.agent.ctl("provider", "create", "--name", "m", "--type", "mock")
        cls.agent.ctl("inference", "set", "--provider", "m", "--model", "mock-served")
        cls.srv = TcpServer("203.0.113.9", 80)

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.agent.cleanup()

    def run_cmd(self, argv, env_extra=None):
        env = dict(os.environ)
        env["REDIR_SOCKET"] = self.agent.socket
        env.update(env_extra or {})
        script = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
        return subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", self.resolv, harness.REDIRCTL, "run",
                               "--"] + argv, capture_output=True, text=True, timeout=60, env=env)

    def test_curl_reaches_inference_with_no_flags(self):
        r = self.run_cmd(["curl", "-sS", "https://inference.local/v1/chat/completions", "-H",
                          "content-type: application/json", "-d", '{"messages":[{"role":"user","content":"hi"}]}'])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["model"], "mock-served")

    def test_node_sdk_uses_environment(self):
        r = self.run_cmd(["node", os.path.join(NODE_DIR, "openai_client.js"), "plain"],
                         {"NODE_PATH": os.path.join(NODE_DIR, "node_modules")})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("mock", json.loads(r.stdout)["content"])

    def test_everything_else_denied_and_exit_code_kept(self):
        code = ("import socket,sys\ntry:\n    socket.create_connection(('203.0.113.9',80),3)\n    sys.exit(0)\n"
                "except PermissionError:\n    sys.exit(7)\n")
        r = self.run_cmd([sys.executable, "-c", code])
        self.assertEqual(r.returncode, 7, r.stderr)

    def test_root_in_run_sandbox_cannot_open_packet_or_raw_sockets(self):
        code = ("import socket,os\nres=[]\n"
                "for a in [(socket.AF_PACKET,socket.SOCK_RAW,768),(socket.AF_PACKET,socket.SOCK_DGRAM,768),"
                "(socket.AF_INET,socket.SOCK_RAW,1)]:\n"
                "    try:\n        socket.socket(*a).close(); res.append('created')\n"
                "    except PermissionError: res.append('EPERM')\n"
                "print(os.geteuid(), ' '.join(res))\n")
        r = self.run_cmd([sys.executable, "-c", code])
        self.assertEqual(r.stdout.split(), ["0", "EPERM", "EPERM", "EPERM"], r.stderr)

    def test_environment_and_cleanup(self):
        r = self.run_cmd([sys.executable, "-c", "import os,json; print(json.dumps(dict(os.environ)))"])
        env = json.loads(r.stdout)
        self.assertEqual(env["OPENAI_BASE_URL"], "https://inference.local/v1")
        self.assertEqual(env["ANTHROPIC_BASE_URL"], "https://inference.local")
        for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS"):
            self.assertIn(k, env)
        # The transient cgroup is detached and removed afterwards.
        self.assertEqual(self.agent.status()["attachments"], [])
        mnt = harness.cgroup2_mount()
        self.assertFalse([d for d in os.listdir(mnt) if d.startswith("redir-run-")])


if __name__ == "__main__":
    unittest.main(verbosity=2)
