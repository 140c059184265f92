#!/usr/bin/env python3
"""The main job in one minute: a sandboxed command, in its own network
namespace, calls the model at https://inference.local (model rewritten and the
provider's credential injected by the agent), reaches the one name its policy
allows, and is refused a denied address (EPERM) and a denied name (NXDOMAIN) —
then the agent's audit records of it.

Everything runs inside a network namespace this script creates (with a fake
"internet" namespace beyond it), with its own redird (own state, run and
bpffs directories) whose provider is a stand-in OpenAI-compatible server in the
fake internet, holding a demo key only the agent knows: nothing leaves the
machine, and the node's agent is not touched. Run as root: scripts/demo.sh
"""
import ctypes
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
from fake_dns import A, FakeDns  # noqa: E402
from fake_provider import FakeProvider, make_test_ca  # noqa: E402
from test_run_netns import in_netns  # noqa: E402

ALLOWED, DENIED_NAME = "api.allowed.example", "blocked.example"
WEB, DENIED_ADDR, RESOLVER, PROVIDER = "192.0.2.200", "192.0.2.201", "192.0.2.53", "192.0.2.202"
POOL = "192.0.2.64/26"
IP = shutil.which("ip") or "/usr/sbin/ip"

# One HTTP server in the internet namespace: every answer names the server.
WEB_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 80))
s.listen(16)
while True:
    c, peer = s.accept()
    c.settimeout(5)
    try:
        c.recv(4096)
        body = ("hello from %s (%s), you came from %s\n" % (sys.argv[2], sys.argv[1], peer[0])).encode()
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body) + body)
    except OSError:
        pass
    c.close()
"""

# What the sandboxed command does: each step shown as typed, then its output.
STEPS = [
    "curl -sS -m 20 https://inference.local/v1/chat/completions -H 'content-type: application/json' "
    "-d '{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hello\"}]}'",
    "curl -sS -m 10 http://%s/" % ALLOWED,
    "python3 -c 'import socket; socket.socket().connect((\"%s\", 80))'" % DENIED_ADDR,
    "getent hosts %s" % DENIED_NAME,
]
RUNNER = r"""
import json, os, subprocess, sys
print("sandbox cgroup id:", os.stat(os.environ["REDIR_SANDBOX"]).st_ino)
addr = subprocess.run("ip -4 -o addr show dev eth0 2>/dev/null", shell=True, capture_output=True, text=True).stdout.split()
print("network namespace: %s%s" % (os.readlink("/proc/self/ns/net"), ", address " + addr[3] if len(addr) > 3 else ""))
for step in json.loads(os.environ["DEMO_STEPS"]):
    print("\n$ " + step, flush=True)
    rc = subprocess.run(step, shell=True, stderr=subprocess.STDOUT).returncode
    if rc:
        print("(exit %d)" % rc, flush=True)
"""


def say(text=""):
    print(text, flush=True)


def binary(name, sub):
    build = os.environ.get("REDIR_BUILD", os.path.join(REPO, "build"))
    for cand in (os.path.join(build, sub, name), shutil.which(name) or "", "/usr/local/sbin/" + name):
        if cand and os.access(cand, os.X_OK):
            return cand
    sys.exit("demo: %s not found: build first (scripts/build.sh) or install it (scripts/setup.sh)" % name)


def sh(*argv):
    subprocess.run(list(argv), check=True, capture_output=True, text=True)


class World:
    """This process's own namespace (the agent's), and an internet namespace beyond it."""

    def __init__(self, tmp):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
            sys.exit("demo: cannot create a network namespace (run as root)")
        self.inet = "redir-demo-inet-%d" % os.getpid()
        sh(IP, "link", "set", "lo", "up")
        sh(IP, "addr", "add", RESOLVER + "/32", "dev", "lo")
        sh(IP, "netns", "add", self.inet)
        sh(IP, "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", self.inet)
        sh(IP, "addr", "add", "192.0.2.129/30", "dev", "uplink")
        sh(IP, "link", "set", "uplink", "up")
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", WEB + "/32", "dev", "lo"],
                    ["addr", "add", DENIED_ADDR + "/32", "dev", "lo"], ["addr", "add", PROVIDER + "/32", "dev", "lo"],
                    ["addr", "add", "192.0.2.130/30", "dev", "eth0"],
                    ["link", "set", "eth0", "up"], ["route", "add", "default", "via", "192.0.2.129"]):
            sh(IP, "-n", self.inet, *cmd)
        sh(IP, "route", "add", "default", "via", "192.0.2.130")
        inet_fd = os.open("/run/netns/" + self.inet, os.O_RDONLY)
        into_inet = lambda: libc.setns(inet_fd, 0x40000000)  # noqa: E731 - the child joins the internet namespace
        self.web = [subprocess.Popen([sys.executable, "-c", WEB_SERVER, a, n], preexec_fn=into_inet,
                                     pass_fds=(inet_fd,))
                    for a, n in ((WEB, ALLOWED), (DENIED_ADDR, "a denied address"))]
        self.provider_ca, cert, key = make_test_ca(tmp, PROVIDER)
        self.provider = in_netns("/run/netns/" + self.inet, lambda: FakeProvider(PROVIDER, 8443, cert, key,
                                                                                   name="the stand-in provider"))
        os.close(inet_fd)
        self.dns = FakeDns(RESOLVER, {ALLOWED: [(A, WEB, 300)], DENIED_NAME: [(A, DENIED_ADDR, 300)]})
        deadline = time.monotonic() + 30
        while not all(self.listening(a) for a in (WEB, DENIED_ADDR)):
            if time.monotonic() > deadline:
                sys.exit("demo: the fake internet's web servers did not start")
            time.sleep(0.05)

    @staticmethod
    def listening(addr):
        try:
            socket.create_connection((addr, 80), 1).close()
            return True
        except OSError:
            return False

    def close(self):
        self.provider.close()
        for p in self.web:
            p.kill()
            p.wait()
        self.dns.close()
        subprocess.run([IP, "netns", "del", self.inet], capture_output=True)


class DemoAgent:
    """A redird of the demo's own: state, socket and pins in temporary places."""

    def __init__(self, tmp):
        self.redirctl = binary("redirctl", "tools/redirctl")
        self.socket = os.path.join(tmp, "run", "redird.sock")
        self.bpffs = "/sys/fs/bpf/redir-demo-%d" % os.getpid()
        self.state = os.path.join(tmp, "state")
        self.log = open(os.path.join(tmp, "redird.log"), "w")
        self.proc = subprocess.Popen([binary("redird", "userspace/agent"), "--state-dir", self.state, "--run-dir",
                                      os.path.join(tmp, "run"), "--bpffs", self.bpffs,
                                      "--dns-upstream", RESOLVER + ":53"], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 15
        while self.ctl("status", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit("demo: redird did not start: " + open(self.log.name).read())
            time.sleep(0.05)

    def ctl(self, *args, check=True):
        r = subprocess.run([self.redirctl, "--socket", self.socket] + list(args), capture_output=True, text=True)
        if check and r.returncode:
            sys.exit("demo: redirctl %s failed: %s" % (" ".join(args), r.stderr.strip()))
        return r

    def configure_provider(self, ca, key):
        """The stand-in provider in the fake internet, with KEY as its credential."""
        self.ctl("provider", "create", "--name", "demo", "--type", "openai-compatible", "--base-url",
                 "https://%s:8443/v1" % PROVIDER, "--ca-file", ca, "--credential", "OPENAI_API_KEY=" + key)
        self.ctl("inference", "set", "--provider", "demo", "--model", "demo-model")
        return ('provider "demo" (OpenAI-compatible, a stand-in at https://%s:8443 in the fake internet), '
                'model "demo-model", credential OPENAI_API_KEY held by the agent only' % PROVIDER)

    def audit_text(self):
        path = os.path.join(self.state, "audit.log")
        return open(path).read() if os.path.exists(path) else ""

    def records(self, cgroup_id):
        path = os.path.join(self.state, "audit.log")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            recs = [json.loads(l) for l in f if l.strip()]
        return [r for r in recs if r.get("cgroup_id") == cgroup_id]

    def close(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.bpffs, ignore_errors=True)


def describe(r):
    ev = r.get("event")
    if ev == "inference":
        extra = "".join("  %s: %s" % (k, r[k]) for k in ("client_auth", "credential") if k in r)
        if r.get("credential") == "injected":
            extra += " (%s header, key %s)" % (r.get("credential_header"), r.get("credential_key"))
        return "inference  %s %s  model %r -> %r  provider %s (%s)  status %s%s" % (
            r.get("method"), r.get("path"), r.get("model_requested"), r.get("model_used"), r.get("provider"),
            r.get("provider_type", "?"), r.get("status"), extra)
    if ev == "dns":
        return "dns        %-22s %s" % (r.get("name"), r.get("verdict"))
    if ev in ("connect", "sendmsg"):
        return "%-10s %s:%s/%s  %s (%s)" % (ev, r.get("dst"), r.get("port"), r.get("protocol"), r.get("verdict"),
                                          r.get("reason"))
    return json.dumps(r)


def main():
    if os.geteuid() != 0:
        sys.exit("demo: run as root (it creates network namespaces and loads BPF programs): sudo scripts/demo.sh")
    tmp = tempfile.mkdtemp(prefix="redir-demo-")
    os.chmod(tmp, 0o755)
    world = World(tmp)
    agent = None
    try:
        agent = DemoAgent(tmp)
        say("== redir demo: an agent's command in a sandbox with its own network namespace ==")
        say("(a private network namespace made for this demo, with a fake internet beyond it: no packet leaves the machine)")
        say()
        say("agent:  redird with its own state in " + tmp)
        key = "sk-demo-" + secrets.token_hex(12)
        say("model:  " + agent.configure_provider(world.provider_ca, key))
        policy = os.path.join(tmp, "demo-policy.json")
        with open(policy, "w") as f:
            json.dump({"version": 1, "name": "demo", "inference": {"enabled": True},
                       "allow": [{"host": ALLOWED, "ports": [80]}]}, f, indent=2)
        say("policy: https://inference.local and %s:80; everything else denied (%s)" % (ALLOWED, policy))
        cmd = ["run", "--netns", "--policy", policy, "--", "python3", "-c", RUNNER]
        say()
        say("-- inside the sandbox: redirctl run --netns --policy %s -- (no proxy settings, no API key: "
            "only the CA bundle run provides)" % os.path.basename(policy))
        r = subprocess.run([agent.redirctl, "--socket", agent.socket] + cmd, capture_output=True, text=True,
                           env=dict(os.environ, REDIR_NETNS_POOL=POOL, DEMO_STEPS=json.dumps(STEPS)), timeout=120)
        say(r.stdout.rstrip())
        if r.stderr.strip():
            say(r.stderr.rstrip())
        cgroup_id = int(r.stdout.split("sandbox cgroup id: ")[1].split()[0]) if "sandbox cgroup id: " in r.stdout else -1
        time.sleep(0.3)  # the last records are written by the agent's event reader
        say()
        say("-- what the agent recorded for this sandbox (its audit log, one JSON object per line) --")
        lines = [describe(rec) for rec in agent.records(cgroup_id)]
        for i, line in enumerate(lines):
            if i == 0 or line != lines[i - 1]:
                n = next((j for j in range(i, len(lines)) if lines[j] != line), len(lines)) - i
                say("  " + line + ("  (x%d)" % n if n > 1 else ""))
        say()
        got = (world.provider.rec.last() or {}).get("headers", {}).get("authorization", "")
        say("-- the credential --")
        say("  the provider received the agent's key in its authorization header: %s"
            % ("yes" if got == "Bearer " + key else "NO (%s)" % ("none" if not got else "another value")))
        say("  the key in the sandbox's output: %d times; in the agent's audit log: %d times"
            % (r.stdout.count(key) + r.stderr.count(key), agent.audit_text().count(key)))
        say()
        say("Rerun this demo: sudo scripts/demo.sh")
        say("Your own sandbox on this node: redirctl run --netns -- curl https://inference.local/v1/models")
        return 0 if r.returncode == 0 else r.returncode
    finally:
        if agent:
            agent.close()
        world.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
