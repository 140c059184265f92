"""Escape corpus, privilege: the command under `redirctl run` (as its default
unprivileged user, and as `--user root`, root of a private user namespace)
tries to switch its sandbox off — detach it, replace its policy, leave its
cgroup, unlink the pins, read the agent's secrets, steal a socket created
outside, regain privilege through a setuid binary or new namespaces — and
then reach a denied address. A root process inside an attached cgroup tries
the control API."""
import json
import os
import shutil
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from escape_support import (ESCAPE_PROBE_BIN, NOBODY, PYTHON, EscapeCase, UnixWitness, parse_kv,  # noqa: E402
                            write_policy)

SECRET = "sk-escape-corpus-secret-0123456789"


class EscapePrivilege(EscapeCase):
    TAG = "esc-priv"
    TARGET = "203.0.113.141"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.agent.ctl("provider", "create", "--name", "secret", "--type", "openai", "--credential",
                      "OPENAI_API_KEY=" + SECRET)
        cls.allow_all = write_policy(cls.tmp, "esc-allow-all", {
            "allow": [{"cidr": "0.0.0.0/0", "protocol": "any"}, {"cidr": "::/0", "protocol": "any"}]})
        os.chmod(cls.allow_all, 0o644)
        cls.mount = harness.cgroup2_mount()
        # A setuid-root copy of the C helper, for the no_new_privs attempt.
        cls.suid_dir = os.path.join(cls.tmp, "suid")
        os.mkdir(cls.suid_dir, 0o755)
        cls.suid_bin = os.path.join(cls.suid_dir, "escape_probe_suid")
        if os.path.exists(ESCAPE_PROBE_BIN):
            shutil.copy(ESCAPE_PROBE_BIN, cls.suid_bin)
            os.chown(cls.suid_bin, 0, 0)
            os.chmod(cls.suid_bin, 0o4755)

    def assert_blocked(self, res, *keys):
        for k in keys:
            self.assertNotEqual(res.get(k), "OK", "%s got through: %s" % (k, json.dumps(res)))
        self.assert_untouched(self.target)

    def t(self):
        return [self.target.addr, self.target.port]

    # ---- the control API ----

    def test_default_user_runs_redirctl_detach_on_its_own_sandbox(self):
        res = self.probe_run("detach", harness.REDIRCTL, self.agent.socket, *self.t())
        self.assertNotEqual(res["detach_rc"], 0, res)
        self.assert_blocked(res, "connect", "sendto")

    def test_userns_root_runs_redirctl_detach_on_its_own_sandbox(self):
        res = self.probe_run("detach", harness.REDIRCTL, self.agent.socket, *self.t(), user="root")
        self.assertNotEqual(res["detach_rc"], 0, res)
        self.assert_blocked(res, "connect", "sendto")

    def test_userns_root_replaces_its_own_policy_with_allow_all(self):
        res = self.probe_run("policy-load", harness.REDIRCTL, self.agent.socket, self.allow_all,
                             "redirctl-run-default", *self.t(), user="root")
        self.assertNotEqual(res["load_rc"], 0, res)
        self.assert_blocked(res, "connect", "sendto")

    def test_default_user_talks_raw_json_to_the_control_socket(self):
        res = self.probe_run("control", self.agent.socket, json.dumps({"cmd": "provider.list"}))
        self.assertNotEqual(res.get("connect"), "OK", "the sandbox reached the control socket: %s" % res)

    def test_sandboxed_host_root_is_refused_by_the_control_api(self):
        """Whatever its uid, a peer inside an attached sandbox gets no answer but a refusal."""
        cg = self.attached("ctl", {})
        res = self.probe_in(cg, "detach", harness.REDIRCTL, self.agent.socket, *self.t())
        self.assertNotEqual(res["detach_rc"], 0, "host root inside a sandbox detached it: %s" % res)
        self.assertIn(cg.path, [a.get("cgroup") for a in self.agent.status()["attachments"]])
        res = self.probe_in(cg, "policy-load", harness.REDIRCTL, self.agent.socket, self.allow_all,
                            "esc-priv-ctl", *self.t())
        self.assertNotEqual(res["load_rc"], 0, "host root inside a sandbox replaced its policy: %s" % res)
        self.assert_blocked(res, "connect", "sendto")

    def test_default_user_kills_redirctl_run(self):
        res = self.probe_run("kill-parent", *self.t())
        self.assert_blocked(res, "connect", "sendto")

    # ---- cgroup membership ----

    def test_default_user_moves_itself_to_the_root_cgroup(self):
        res = self.probe_run("move", os.path.join(self.mount, "cgroup.procs"), *self.t())
        self.assert_blocked(res, "move", "connect")

    def test_userns_root_moves_itself_to_the_root_cgroup(self):
        res = self.probe_run("move", os.path.join(self.mount, "cgroup.procs"), *self.t(), user="root")
        self.assert_blocked(res, "move", "connect")

    def test_userns_root_moves_a_thread_through_cgroup_threads(self):
        res = self.probe_run("thread-move", self.mount, *self.t(), user="root")
        self.assert_blocked(res, "move_thread", "connect")

    def test_userns_root_clone3_into_the_root_cgroup(self):
        r = self.run_cmd([ESCAPE_PROBE_BIN, "clone-into-cgroup", self.mount] + self.t(), user="root")
        res = parse_kv(r, self)
        self.assert_blocked(res, "clone3", "connect")

    def test_default_user_creates_and_enters_a_child_cgroup(self):
        res = self.probe_run("child-cgroup", self.mount, *self.t())
        self.assert_blocked(res, "connect", "sendto")

    def test_userns_root_creates_and_enters_a_child_cgroup(self):
        res = self.probe_run("child-cgroup", self.mount, *self.t(), user="root")
        self.assert_blocked(res, "connect", "sendto")

    def test_threads_are_sandboxed_too(self):
        res = self.probe_run("thread", *self.t())
        self.assert_blocked(res, "connect", "sendto")

    def test_vfork_child_is_sandboxed(self):
        r = self.run_cmd([ESCAPE_PROBE_BIN, "vfork-connect"] + self.t())
        self.assert_blocked(parse_kv(r, self), "connect")

    # ---- the agent's pins and files ----

    def assert_pins_intact(self, before):
        after = sorted(os.path.join(d, f) for d, _, fs in os.walk(self.agent.bpffs) for f in fs)
        self.assertEqual(before, after, "pins were removed from inside a sandbox")

    def pins(self):
        return sorted(os.path.join(d, f) for d, _, fs in os.walk(self.agent.bpffs) for f in fs)

    def test_default_user_unlinks_the_bpffs_pins(self):
        before = self.pins()
        res = self.probe_run("unlink-pins", self.agent.bpffs)
        self.assertEqual(res["removed"], [], res)
        self.assert_pins_intact(before)

    def test_userns_root_unlinks_the_bpffs_pins(self):
        before = self.pins()
        res = self.probe_run("unlink-pins", self.agent.bpffs, user="root")
        self.assertEqual(res["removed"], [], res)
        self.assert_pins_intact(before)

    def test_default_user_reads_the_state_dir(self):
        res = self.probe_run("walk", self.agent.state, SECRET)
        self.assertEqual(res["leaked"], [], "provider credentials readable from a sandbox: %s" % res)
        self.assertFalse([p for p in res["opened"] if p.endswith(".key") or "providers" in p], res)

    def test_userns_root_reads_the_state_dir_and_ca_key(self):
        res = self.probe_run("walk", self.agent.state, SECRET, user="root")
        self.assertEqual(res["leaked"], [], "provider credentials readable from a sandbox: %s" % res)
        self.assertFalse([p for p in res["opened"] if p.endswith(".key") or "providers" in p], res)
        ca_key = os.path.join(self.agent.state, "ca", "ca.key")
        res = self.probe_run("read", ca_key, os.path.join(self.agent.state, "providers.json"), user="root")
        for path, got in res["read"].items():
            self.assertIn(got, ("EACCES", "EPERM", "ENOENT"), "%s readable from a sandbox" % path)

    # ---- privilege regained or borrowed ----

    def test_default_user_execs_a_setuid_root_binary(self):
        self.assertTrue(os.path.exists(self.suid_bin), "escape_probe was not built")
        r = self.run_cmd([self.suid_bin, "setuid-escape", self.mount] + self.t())
        res = parse_kv(r, self)
        self.assertNotEqual(res.get("euid"), "0", "the setuid bit gave the sandbox root: %s" % res)
        self.assert_blocked(res, "move", "connect")

    def test_default_user_unshares_user_and_network_namespaces(self):
        res = self.probe_run("unshare-net", *self.t())
        self.assert_blocked(res, "connect", "sendto", "raw")

    def test_default_user_unshares_a_user_namespace_for_packet_sockets(self):
        res = self.probe_run("unshare-user", *self.t())
        self.assert_blocked(res, "packet", "raw", "connect")

    def test_userns_root_steals_a_socket_from_the_agent(self):
        res = self.probe_run("pidfd-steal", self.agent.proc.pid, "any", *self.t(), user="root")
        self.assertNotEqual(res.get("getfd"), "OK", "the sandbox took a descriptor of redird: %s" % res)
        self.assert_blocked(res, "sendto")

    def test_default_user_steals_a_socket_from_a_same_uid_process_outside(self):
        """Another process of the sandbox's uid, outside any sandbox, holds a UDP
        socket (as a login shell or a service of that user would): its sockets
        are not governed by the sandbox's hooks."""
        victim = subprocess.Popen(
            [PYTHON, "-c", "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                           "print(s.fileno(),flush=True)\ntime.sleep(60)\n"],
            stdout=subprocess.PIPE, text=True, user=self.default_uid(), group=self.default_uid())
        self.addCleanup(victim.wait)
        self.addCleanup(victim.kill)
        fd = victim.stdout.readline().strip()
        res = self.probe_run("pidfd-steal", victim.pid, fd, *self.t())
        self.assert_blocked(res, "sendto")

    def test_default_user_reaches_a_host_abstract_unix_socket(self):
        """Abstract unix sockets belong to the network namespace, not the filesystem:
        a sandbox sharing the host's reaches every host service listening on one
        (X11's @/tmp/.X11-unix/X0, container shims, local proxies), past every inet hook."""
        w = UnixWitness("redir-escape-host-service-%d" % os.getpid())
        self.addCleanup(w.close)
        res = self.probe_run("abstract-unix", w.name)
        self.assertNotEqual(res["connect"], "OK", "the sandbox reached a host service: %s" % res)
        self.assertEqual(w.intrusions(), [])

    def default_uid(self):
        """The uid `run` gives a command by default (no SUDO_UID here: nobody)."""
        r = self.run_cmd(["id", "-u"])
        uid = r.stdout.strip()
        return int(uid) if uid.isdigit() and uid != "0" else NOBODY


if __name__ == "__main__":
    unittest.main(verbosity=2)
