"""`redirctl run`: a transient sandbox in which tools reach inference.local with
no configuration of their own (DNS through the agent, CA and base URLs from
the environment run sets), and nothing else; the command starts inside the
sandbox, unprivileged, and nothing it leaves behind outlives the sandbox."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from harness import Agent, TcpServer, pid_alive  # noqa: E402

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
NOBODY = 65534
# Commands in a sandbox run unprivileged: a python every user may execute.
PY = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable

# What a process reports about itself, as JSON: ids, groups, capability sets,
# no_new_privs, user namespace map, cgroup, and the sandbox run named.
IDENTITY = r"""
import json, os
st = {}
for line in open('/proc/self/status'):
    k, _, v = line.partition(':')
    st[k] = v.strip()
print(json.dumps({'uid': os.getuid(), 'euid': os.geteuid(), 'gid': os.getgid(), 'groups': os.getgroups(),
                  'CapEff': st['CapEff'], 'CapPrm': st['CapPrm'], 'CapInh': st['CapInh'],
                  'CapBnd': st['CapBnd'], 'CapAmb': st['CapAmb'], 'NoNewPrivs': st['NoNewPrivs'],
                  'uid_map': open('/proc/self/uid_map').read().split(),
                  'cgroup': open('/proc/self/cgroup').read(), 'cgroupns': os.readlink('/proc/self/ns/cgroup'),
                  'sandbox': os.environ.get('REDIR_SANDBOX'), 'home': os.environ.get('HOME'),
                  'home_writable': os.access(os.environ.get('HOME', '/'), os.W_OK)}))
"""


class CountingListener:
    """TCP listener that records every connection it accepts."""

    def __init__(self, addr):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, 0))
        self.sock.listen(64)
        self.addr, self.port = self.sock.getsockname()
        self.accepted = []
        harness.serve_each(self.sock.accept, self._accepted)

    def _accepted(self, c, peer):
        self.accepted.append(peer)
        c.close()

    def close(self):
        self.sock.close()


def procs_with(token):
    """Host pids whose command line contains TOKEN (live ones only)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if token.encode() in f.read() and pid_alive(int(d)):
                        out.append(int(d))
            except OSError:
                pass
    return out


def descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open("/proc/%d/task/%d/children" % (p, p)) as f:
                kids = [int(k) for k in f.read().split()]
        except (OSError, ValueError):
            kids = []
        out += kids
        todo += kids
    return out


def harness_subtree_empty(cgroup):
    try:
        return "populated 0" in read_text(os.path.join(cgroup, "cgroup.events"))
    except FileNotFoundError:
        return True


def read_text(path):
    with open(path) as f:
        return f.read()


def wait_for(pred, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


class RunE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, _ = harness.isolated(cls, "run")
        cls.resolv = harness.write_resolv_conf(cls.tmp)
        cls.agent = Agent("run").start()
        cls.agent.ctl("provider", "create", "--name", "m", "--type", "mock")
        cls.agent.ctl("inference", "set", "--provider", "m", "--model", "mock-served")
        cls.srv = TcpServer("203.0.113.9", 80)

    @classmethod
    def tearDownClass(cls):
        cls.srv.close()
        cls.agent.cleanup()

    def argv(self, argv, run_args=()):
        return harness.sandbox_argv([harness.REDIRCTL, "run"] + list(run_args) + ["--"] + list(argv),
                                    binds={"/etc/resolv.conf": self.resolv})

    def env(self, env_extra=None):
        env = dict(os.environ)
        env["REDIR_SOCKET"] = self.agent.socket
        for k in ("SUDO_UID", "SUDO_GID", "SUDO_USER", "REDIR_RUN_FALLBACKS"):
            env.pop(k, None)
        env.update(env_extra or {})
        return env

    def run_cmd(self, argv, env_extra=None, run_args=(), timeout=60):
        return subprocess.run(self.argv(argv, run_args), capture_output=True, text=True, timeout=timeout,
                              env=self.env(env_extra))

    def identity(self, run_args=(), env_extra=None):
        r = self.run_cmd([PY, "-c", IDENTITY], env_extra, run_args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def assert_sandbox_gone(self, cgroup):
        self.assertTrue(cgroup and os.path.basename(cgroup).startswith("redir-run-"), cgroup)
        self.assertFalse(os.path.exists(cgroup), "run left its sandbox cgroup %s behind" % cgroup)
        attached = [a["cgroup"] for a in self.agent.status()["attachments"]]
        self.assertNotIn(cgroup, attached)

    # ---- what tools inside see ------------------------------------------------

    def test_curl_reaches_inference_with_no_flags(self):
        r = self.run_cmd(["curl", "-sS", "https://inference.local/v1/chat/completions", "-H",
                          "content-type: application/json", "-d", '{"messages":[{"role":"user","content":"hi"}]}'])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["model"], "mock-served")

    def test_ca_bundle_works_for_curl_as_unprivileged_user(self):
        script = ('id -u; curl -sS https://inference.local/v1/chat/completions -H "content-type: application/json" '
                  '-d \'{"messages":[{"role":"user","content":"hi"}]}\'')
        r = self.run_cmd(["sh", "-c", script])
        self.assertEqual(r.returncode, 0, r.stderr)
        uid, body = r.stdout.split("\n", 1)
        self.assertEqual(int(uid), NOBODY)
        self.assertEqual(json.loads(body)["model"], "mock-served")

    def test_node_sdk_uses_environment(self):
        r = self.run_cmd(["node", os.path.join(NODE_DIR, "openai_client.js"), "plain"],
                         {"NODE_PATH": os.path.join(NODE_DIR, "node_modules")})
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("mock", json.loads(r.stdout)["content"])

    def test_everything_else_denied_and_exit_code_kept(self):
        code = ("import socket,sys\ntry:\n    socket.create_connection(('203.0.113.9',80),3)\n    sys.exit(0)\n"
                "except PermissionError:\n    sys.exit(7)\n")
        r = self.run_cmd([PY, "-c", code])
        self.assertEqual(r.returncode, 7, r.stderr)

    def test_environment_and_cleanup(self):
        r = self.run_cmd([PY, "-c", "import os,json; print(json.dumps(dict(os.environ)))"])
        env = json.loads(r.stdout)
        self.assertEqual(env["OPENAI_BASE_URL"], "https://inference.local/v1")
        self.assertEqual(env["ANTHROPIC_BASE_URL"], "https://inference.local")
        for k in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO", "NODE_EXTRA_CA_CERTS"):
            self.assertIn(k, env)
        # The transient cgroup this run created is detached and removed afterwards.
        self.assert_sandbox_gone(env["REDIR_SANDBOX"])

    # ---- lifecycle ------------------------------------------------------------

    def test_exit_codes(self):
        self.assertEqual(self.run_cmd(["true"]).returncode, 0)
        self.assertEqual(self.run_cmd(["sh", "-c", "exit 3"]).returncode, 3)
        self.assertEqual(self.run_cmd(["sh", "-c", "kill -KILL $$"]).returncode, 128 + signal.SIGKILL)
        self.assertEqual(self.run_cmd(["sh", "-c", "kill -TERM $$"]).returncode, 128 + signal.SIGTERM)
        r = self.run_cmd(["/nonexistent/command"])
        self.assertEqual(r.returncode, 127)
        self.assertIn("/nonexistent/command", r.stderr)

    def check_starts_inside(self, fallbacks):
        env = {"REDIR_RUN_FALLBACKS": fallbacks} if fallbacks else {}
        # The command itself (no shell in between) reads where it is: the root
        # of a private cgroup namespace, not the caller's.
        r = self.run_cmd(["cat", "/proc/self/cgroup"], env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip().splitlines()[-1], "0::/")
        ident = self.identity(env_extra=env)
        self.assertNotEqual(ident["cgroupns"], os.readlink("/proc/self/ns/cgroup"))
        # Seen from outside, the exec'd command is in the sandbox cgroup run made.
        p = subprocess.Popen(self.argv(["sleep", "30"]), env=self.env(env), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            def sleeper():
                for d in descendants(p.pid):
                    try:
                        if read_text("/proc/%d/comm" % d).strip() == "sleep":
                            return d
                    except OSError:
                        pass
                return None
            self.assertTrue(wait_for(lambda: sleeper() is not None))
            cg = read_text("/proc/%d/cgroup" % sleeper()).strip().splitlines()[-1]
            self.assertEqual(cg, "0::/redir-run-%d" % p.pid)
        finally:
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=20)

    def test_command_starts_inside_sandbox_clone3(self):
        self.check_starts_inside("")

    def test_command_starts_inside_sandbox_fallback_checked_write(self):
        self.check_starts_inside("clone3")

    def check_orphan_killed(self, how, fallbacks=""):
        lst = CountingListener("203.0.113.9")
        token = "redir-orphan-%s-%d" % (how, time.time_ns())
        try:
            # The orphan waits until run has returned, then tries to connect.
            connect = ("import socket,time; time.sleep(1.5); "
                       "socket.create_connection(('%s',%d),3)" % (lst.addr, lst.port))
            scripts = {
                "background": '%s -c "$0" "$1" &',
                "setsid": 'setsid %s -c "$0" "$1" &',
                "double-fork": '(%s -c "$0" "$1" &) ; true',
            }
            script = scripts[how] % PY
            env = {"REDIR_RUN_FALLBACKS": fallbacks} if fallbacks else {}
            r = subprocess.run(self.argv(["sh", "-c", script, connect, token]), capture_output=True, text=True,
                               timeout=60, env=self.env(env))
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(procs_with(token), [], "%s orphan outlived run" % how)
            time.sleep(2.5)  # past the moment the orphan would have connected
            self.assertEqual(lst.accepted, [], "an orphan reached the denied listener after run returned")
        finally:
            lst.close()

    def test_orphan_background_killed(self):
        self.check_orphan_killed("background")

    def test_orphan_setsid_killed(self):
        self.check_orphan_killed("setsid")

    def test_orphan_double_fork_killed_by_freeze_loop(self):
        self.check_orphan_killed("double-fork", fallbacks="cgroup.kill")

    def start_long_run(self, script, setup=""):
        """Starts run with SETUP, a background process carrying a token, then
        SCRIPT; returns (run, token, sandbox cgroup) once SETUP has run."""
        token = "redir-bg-%d" % time.time_ns()
        bg = '%s -c "import time; time.sleep(300)" %s & echo "$REDIR_SANDBOX"; ' % (PY, token)
        p = subprocess.Popen(self.argv(["sh", "-c", setup + bg + script]), env=self.env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        cg = p.stdout.readline().strip()
        self.assertTrue(cg, p.stderr.read() if p.poll() is not None else "no sandbox named")
        self.assertTrue(wait_for(lambda: procs_with(token)))
        return p, token, cg

    def test_sigterm_to_run_kills_the_sandbox(self):
        p, token, cg = self.start_long_run("exec sleep 300")
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)
        self.assertEqual(p.returncode, 128 + signal.SIGTERM)
        self.assertEqual(procs_with(token), [])
        self.assert_sandbox_gone(cg)

    def test_sigterm_ignored_by_command_still_ends_sandbox(self):
        p, token, cg = self.start_long_run("while :; do sleep 1; done", setup="trap '' TERM HUP; ")
        p.send_signal(signal.SIGHUP)
        p.communicate(timeout=20)
        self.assertEqual(p.returncode, 128 + signal.SIGKILL)
        self.assertEqual(procs_with(token), [])
        self.assert_sandbox_gone(cg)

    def test_sigkill_to_run_still_ends_the_sandbox_processes(self):
        # run itself cannot clean up; its pid namespace's init dies with it
        # and takes every process of the sandbox along.
        p, token, cg = self.start_long_run("exec sleep 300")
        p.kill()
        p.communicate(timeout=20)
        self.assertTrue(wait_for(lambda: not procs_with(token)), "a sandbox process outlived run's SIGKILL")
        self.assertTrue(wait_for(lambda: harness_subtree_empty(cg)))
        # Left attached (enforced) because run could not detach it: detach and remove here.
        self.agent.ctl("detach", "--cgroup", cg)
        os.rmdir(cg)

    def test_sandbox_holds_none_of_runs_descriptors(self):
        # The connection to redird (accepted as run's, outside the sandbox)
        # must not be reachable from inside, nor the cgroup or signal fds.
        p, token, cg = self.start_long_run("exec sleep 300")
        try:
            # The sandbox's pid 1 is run's code and never execs: it is where
            # run's descriptors would stay (the command's close at exec).
            init = descendants(p.pid)[0]
            self.assertIn(str(init), read_text(os.path.join(cg, "cgroup.procs")).split())
            fds = {int(fd) for fd in os.listdir("/proc/%d/fd" % init)}
            self.assertLessEqual(fds, {0, 1, 2}, "the sandbox's pid 1 holds %s" % sorted(fds))
        finally:
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=20)

    def test_command_cannot_see_same_uid_processes_outside(self):
        token = "redir-outside-%d" % time.time_ns()
        outside = subprocess.Popen([PY, "-c", "import time; time.sleep(60)", token],
                                   preexec_fn=lambda: (os.setgid(NOBODY), os.setuid(NOBODY)))
        try:
            code = ("import os,sys\nseen=[]\n"
                    "for d in os.listdir('/proc'):\n"
                    "    if d.isdigit():\n"
                    "        try: seen.append(open('/proc/%s/cmdline'%d,'rb').read())\n"
                    "        except OSError: pass\n"
                    "print(any(sys.argv[1].encode() in c for c in seen if b'import os' not in c))\n"
                    "try:\n    os.kill(int(sys.argv[2]),0); print('signalable')\n"
                    "except ProcessLookupError: print('ESRCH')\n"
                    "except PermissionError: print('EPERM')\n")
            r = self.run_cmd([PY, "-c", code, token, str(outside.pid)])
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.split(), ["False", "ESRCH"])
        finally:
            outside.kill()
            outside.wait()

    # ---- privileges -----------------------------------------------------------

    def assert_unprivileged(self, ident, uid, gid):
        self.assertEqual((ident["uid"], ident["euid"], ident["gid"]), (uid, uid, gid))
        self.assertEqual(ident["groups"], [gid])
        for k in ("CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"):
            self.assertEqual(int(ident[k], 16), 0, "%s is %s" % (k, ident[k]))
        self.assertEqual(ident["NoNewPrivs"], "1")
        self.assertTrue(ident["home_writable"], ident["home"])

    def test_default_user_is_nobody_without_capabilities(self):
        self.assert_unprivileged(self.identity(), NOBODY, NOBODY)

    def test_default_user_is_the_sudo_caller(self):
        ident = self.identity(env_extra={"SUDO_UID": "4242", "SUDO_GID": "4343", "SUDO_USER": "someone"})
        self.assert_unprivileged(ident, 4242, 4343)

    def test_explicit_user_and_group(self):
        self.assert_unprivileged(self.identity(run_args=["--user", "4242:4343"]), 4242, 4343)
        self.assert_unprivileged(self.identity(run_args=["--user", "nobody"]), NOBODY, NOBODY)

    def test_user_root_is_root_of_a_private_user_namespace_only(self):
        ident = self.identity(run_args=["--user", "root"])
        self.assertEqual((ident["uid"], ident["gid"]), (0, 0))
        # uid 0 inside is nobody outside: no capability in the host namespace.
        self.assertEqual(ident["uid_map"], ["0", str(NOBODY), "1"])
        self.assertEqual(ident["NoNewPrivs"], "1")
        ident = self.identity(run_args=["--user", "root"], env_extra={"SUDO_UID": "4242", "SUDO_GID": "4343"})
        self.assertEqual(ident["uid_map"], ["0", "4242", "1"])

    def test_under_sudo_user_is_limited_to_the_caller(self):
        sudo = {"SUDO_UID": "4242", "SUDO_GID": "4343"}
        for spec in ("4444", "4242:4444", "daemon"):
            r = self.run_cmd(["true"], env_extra=sudo, run_args=["--user", spec])
            self.assertNotEqual(r.returncode, 0, spec)
            self.assertIn("under sudo", r.stderr, spec)
        self.assert_unprivileged(self.identity(run_args=["--user", "nobody"], env_extra=sudo), NOBODY, NOBODY)

    def test_bad_user_specs_are_refused(self):
        for spec, words in (("root:root", "takes no group"), ("no-such-user-xyz", "no user named"),
                            ("4242:0", "gid 0"), ("4242:no-such-group-xyz", "no group named")):
            r = self.run_cmd(["true"], run_args=["--user", spec])
            self.assertNotEqual(r.returncode, 0, spec)
            self.assertIn(words, r.stderr, spec)
            self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)

    def test_root_in_run_sandbox_cannot_open_packet_or_raw_sockets(self):
        code = ("import socket,os\nres=[]\n"
                "for a in [(socket.AF_PACKET,socket.SOCK_RAW,768),(socket.AF_PACKET,socket.SOCK_DGRAM,768),"
                "(socket.AF_INET,socket.SOCK_RAW,1)]:\n"
                "    try:\n        socket.socket(*a).close(); res.append('created')\n"
                "    except PermissionError: res.append('EPERM')\n"
                "print(os.geteuid(), ' '.join(res))\n")
        r = self.run_cmd([PY, "-c", code], run_args=["--user", "root"])
        self.assertEqual(r.stdout.split(), ["0", "EPERM", "EPERM", "EPERM"], r.stderr)

    def test_seccomp_refuses_other_socket_families_and_io_uring(self):
        code = r"""
import ctypes, errno, json, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(*a):
    r = libc.syscall(*[ctypes.c_long(x) for x in a])
    return 'ok' if r >= 0 else errno.errorcode[ctypes.get_errno()]
SOCKET, SOCKETPAIR, IO_URING_SETUP = 41, 53, 425
fams = {'unix': 1, 'inet': 2, 'inet6': 10, 'netlink': 16, 'appletalk': 5, 'key': 15, 'packet': 17,
        'rds': 21, 'can': 29, 'tipc': 30, 'bluetooth': 31, 'alg': 38, 'vsock': 40, 'xdp': 44, 'future': 200}
out = {n: call(SOCKET, f, socket.SOCK_DGRAM if n != 'netlink' else socket.SOCK_RAW, 0) for n, f in fams.items()}
out['inet-high-bits'] = call(SOCKET, (1 << 32) | 2, socket.SOCK_STREAM, 0)
sv = (ctypes.c_int * 2)()
out['pair-unix'] = 'ok' if libc.socketpair(1, socket.SOCK_STREAM, 0, sv) == 0 else 'fail'
out['pair-vsock'] = errno.errorcode.get(-1 if libc.socketpair(40, socket.SOCK_STREAM, 0, sv) == 0 else ctypes.get_errno())
params = ctypes.create_string_buffer(120)
out['io_uring_setup'] = call(IO_URING_SETUP, 4, ctypes.addressof(params))
print(json.dumps(out))
"""
        for user in ([], ["--user", "root"]):
            r = self.run_cmd([PY, "-c", code], run_args=user)
            self.assertEqual(r.returncode, 0, r.stderr)
            out = json.loads(r.stdout)
            for name in ("unix", "inet", "inet6", "netlink", "pair-unix"):
                self.assertEqual(out[name], "ok", (user, name, out))
            for name in ("appletalk", "key", "packet", "rds", "can", "tipc", "bluetooth", "alg", "vsock", "xdp",
                         "future", "inet-high-bits", "pair-vsock", "io_uring_setup"):
                self.assertEqual(out[name], "EPERM", (user, name, out))

    def test_host_abstract_unix_socket_unreachable_inside_reachable(self):
        libc = __import__("ctypes").CDLL(None, use_errno=True)
        abi = libc.syscall(444, None, 0, 1)
        if abi < 6:
            self.skipTest("Landlock ABI %d < 6 (Linux 6.12): abstract unix sockets cannot be scoped here" % abi)
        name = "redir-test-host-%d" % time.time_ns()
        host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        host.bind("\0" + name)
        host.listen(4)
        self.addCleanup(host.close)
        code = r"""
import socket, sys, errno
def connect(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect("\0" + n); return "OK"
    except OSError as e:
        return errno.errorcode[e.errno]
own = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
own.bind("\0" + sys.argv[1] + "-inside"); own.listen(1)
print(connect(sys.argv[1]), connect(sys.argv[1] + "-inside"))
"""
        for user in ([], ["--user", "root"]):
            r = self.run_cmd([PY, "-c", code, name], run_args=user)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(r.stdout.split(), ["EPERM", "OK"], user)

    def test_users_session_sockets_are_hidden(self):
        # The sudo caller's systemd/D-Bus session sockets would let the command
        # start processes outside the sandbox (systemd-run --user).
        uid = 42000 + os.getpid() % 1000
        rundir = "/run/user/%d" % uid
        if not os.path.isdir("/run/user"):
            self.skipTest("no /run/user on this host")
        os.makedirs(rundir, exist_ok=False)
        self.addCleanup(lambda: __import__("shutil").rmtree(rundir, ignore_errors=True))
        os.chown(rundir, uid, uid)
        bus = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        bus.bind(rundir + "/bus")
        bus.listen(4)
        self.addCleanup(bus.close)
        os.chown(rundir + "/bus", uid, uid)
        code = ("import socket,sys,errno,os\ns=socket.socket(socket.AF_UNIX)\n"
                "try:\n    s.connect(sys.argv[1]); print('OK')\n"
                "except OSError as e: print(errno.errorcode[e.errno])\n"
                "print(os.environ.get('DBUS_SESSION_BUS_ADDRESS'), os.environ.get('XDG_RUNTIME_DIR'))\n")
        env = {"SUDO_UID": str(uid), "SUDO_GID": str(uid), "XDG_RUNTIME_DIR": rundir,
               "DBUS_SESSION_BUS_ADDRESS": "unix:path=%s/bus" % rundir}
        r = self.run_cmd([PY, "-c", code, rundir + "/bus"], env_extra=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.split(), ["ENOENT", "None", "None"])
        # The same uid outside the sandbox reaches it: the test can fail.
        out = subprocess.run([PY, "-c", code, rundir + "/bus"], capture_output=True, text=True,
                             preexec_fn=lambda: (os.setgid(uid), os.setuid(uid)))
        self.assertEqual(out.stdout.split()[0], "OK", out.stderr)

    def test_source_route_options_refused(self):
        # The hooks judge the first hop; a routing header (SRH needs no
        # capability) or IP options would carry the packet past it. Outside
        # the sandbox the same calls are not refused with EPERM.
        code = r"""
import socket, errno, struct
def attempt(fam, level, name, val):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        s.setsockopt(level, name, val); return 'OK'
    except OSError as e:
        return errno.errorcode[e.errno]
seg = socket.inet_pton(socket.AF_INET6, '2001:db8::66')
srh = struct.pack('!BBBBBBH', 17, 4, 4, 1, 1, 0, 0) + seg + seg
print(attempt(socket.AF_INET6, 41, 57, srh), attempt(socket.AF_INET6, 41, 5, srh),
      attempt(socket.AF_INET6, 41, 6, b''), attempt(socket.AF_INET, 0, 4, b''))
"""
        outside = subprocess.run([PY, "-c", code], capture_output=True, text=True,
                                 preexec_fn=lambda: (os.setgid(NOBODY), os.setuid(NOBODY)))
        self.assertEqual(outside.returncode, 0, outside.stderr)
        self.assertEqual(outside.stdout.split()[0], "OK", "an unprivileged SRH is accepted outside: %s" % outside.stdout)
        self.assertEqual(outside.stdout.split()[3], "OK")
        for user in ([], ["--user", "root"]):
            r = self.run_cmd([PY, "-c", code], run_args=user)
            self.assertEqual(r.stdout.split(), ["EPERM"] * 4, (user, r.stderr))

    def test_command_cannot_type_into_the_users_terminal(self):
        # TIOCSTI would queue input for the user's shell, which runs it outside
        # the sandbox after run returns. stdin here is no tty: outside the
        # sandbox the same ioctl fails with ENOTTY, inside seccomp answers
        # EPERM before the tty layer is asked (the high bits must not matter).
        code = ("import fcntl,errno,sys\nres=[]\n"
                "for req in (0x5412, 0x5412 | (1 << 32), 0x541C):\n"
                "    try: fcntl.ioctl(0, req, b'x'); res.append('OK')\n"
                "    except OSError as e: res.append(errno.errorcode[e.errno])\n"
                "print(' '.join(res))\n")
        outside = subprocess.run([PY, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        self.assertEqual(outside.stdout.split()[0], "ENOTTY", outside.stderr)
        for user in ([], ["--user", "root"]):
            r = subprocess.run(self.argv([PY, "-c", code], user), capture_output=True, text=True, timeout=60,
                               env=self.env(), stdin=subprocess.DEVNULL)
            self.assertEqual(r.stdout.split(), ["EPERM", "EPERM", "EPERM"], (user, r.stderr))

    def test_command_gets_fresh_session_keyring_and_ipc_namespace(self):
        # A key in the caller's session keyring: inside, it is not possessed
        # (fresh session keyring) so not even visible; SysV IPC is private.
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        token = b"redir-test-key-%d" % time.time_ns()
        # keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL), then add_key to @s (-3): this test process only.
        self.assertGreaterEqual(libc.syscall(250, 1, None), 0, ctypes.get_errno())
        self.assertGreater(libc.syscall(248, b"user", token, b"secret", 6, ctypes.c_long(-3)), 0, ctypes.get_errno())
        self.assertIn(token.decode(), read_text("/proc/keys"))
        code = ("import os,sys\nprint(os.readlink('/proc/self/ns/ipc'))\n"
                "print(open('/proc/keys').read().count(sys.argv[1]))\n")
        for user in ([], ["--user", "root"]):
            r = self.run_cmd([PY, "-c", code, token.decode()], run_args=user)
            self.assertEqual(r.returncode, 0, r.stderr)
            ipc, keys = r.stdout.split()
            self.assertNotEqual(ipc, os.readlink("/proc/self/ns/ipc"))
            self.assertEqual(keys, "0", user)

    def test_sandboxed_user_cannot_leave_its_cgroup(self):
        mnt = harness.cgroup2_mount()
        code = ("import os,sys\nres=[]\n"
                "for t in sys.argv[1:]:\n"
                "    try:\n        open(t,'w').write(str(os.getpid())); res.append('moved')\n"
                "    except OSError as e: res.append(type(e).__name__)\n"
                "print(' '.join(res))\n")
        targets = [os.path.join(mnt, "cgroup.procs"), "/sys/fs/cgroup/cgroup.procs"]
        for user in ([], ["--user", "root"]):
            r = self.run_cmd([PY, "-c", code] + targets, run_args=user)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertNotIn("moved", r.stdout, user)


class ControlAndCapsE2E(unittest.TestCase):
    """The agent's side of containment: the control socket refuses sandboxed
    peers whatever their uid, status names capable sandboxed processes, and
    the agent's directories are root-only."""

    @classmethod
    def setUpClass(cls):
        harness.enter_netns()
        cls.tmp = tempfile.mkdtemp(prefix="redir-e2e-ctl-")
        cls.policy = harness.write_policy(cls.tmp, "ctl-deny-all", {"inference": {"enabled": False}})
        cls.agent = Agent("ctl").start()

    @classmethod
    def tearDownClass(cls):
        cls.agent.cleanup()

    def ctl_argv(self, *args):
        return [harness.REDIRCTL, "--socket", self.agent.socket] + list(args)

    def attached(self, tag):
        cg = harness.Cgroup(tag)
        self.addCleanup(cg.remove)
        self.agent.ctl("attach", "--cgroup", cg.path, "--policy", self.policy)
        self.addCleanup(self.agent.ctl, "detach", "--cgroup", cg.path, check=False)
        return cg

    def test_root_inside_attached_sandbox_is_refused_by_control_socket(self):
        cg = self.attached("ctlpeer")
        inner = harness.Cgroup("inner", parent=cg)
        self.addCleanup(inner.remove)
        for where in (cg, inner):
            for args in (("status",), ("detach", "--cgroup", cg.path)):
                r = where.run(self.ctl_argv(*args))
                self.assertNotEqual(r.returncode, 0, r.stdout)
                self.assertIn("inside a sandbox are refused", r.stderr)
                self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertIn(cg.path, [a["cgroup"] for a in self.agent.status()["attachments"]])
        # The same command from outside any sandbox is served.
        self.assertEqual(subprocess.run(self.ctl_argv("status"), capture_output=True).returncode, 0)

    def test_connection_opened_before_attach_is_refused_after(self):
        cg = harness.Cgroup("ctlearly")
        self.addCleanup(cg.remove)
        code = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\nf=s.makefile('rw')\n"
                "def ask():\n    f.write('{\"cmd\":\"status\"}\\n'); f.flush(); return f.readline().strip()\n"
                "print(ask()[:12], flush=True)\nsys.stdin.readline()\nprint(ask(), flush=True)\n")
        p = cg.popen([PY, "-c", code, self.agent.socket], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                     text=True)
        self.assertEqual(p.stdout.readline().strip(), '{"ok":true,"')
        self.agent.ctl("attach", "--cgroup", cg.path, "--policy", self.policy)
        self.addCleanup(self.agent.ctl, "detach", "--cgroup", cg.path, check=False)
        p.stdin.write("\n")
        p.stdin.flush()
        reply = json.loads(p.communicate(timeout=10)[0])
        self.assertFalse(reply["ok"])
        self.assertIn("inside a sandbox are refused", reply["error"])

    def test_status_and_attach_name_capable_process(self):
        cg = harness.Cgroup("caps")
        self.addCleanup(cg.remove)
        p = cg.popen(["sleep", "60"])
        self.addCleanup(p.wait)
        self.addCleanup(p.kill)
        self.assertTrue(wait_for(lambda: str(p.pid) in read_text(os.path.join(cg.path, "cgroup.procs")).split()))
        r = self.agent.ctl("attach", "--cgroup", cg.path, "--policy", self.policy)
        self.addCleanup(self.agent.ctl, "detach", "--cgroup", cg.path, check=False)
        self.assertIn("warning", r.stderr)
        self.assertIn("pid %d (sleep)" % p.pid, r.stderr)
        att = [a for a in self.agent.status()["attachments"] if a["cgroup"] == cg.path][0]
        flagged = {c["pid"]: c["caps"] for c in att["capable"]}
        self.assertIn(p.pid, flagged)
        for cap in ("CAP_SYS_ADMIN", "CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_BPF"):
            self.assertIn(cap, flagged[p.pid])
        self.assertIn("WARNING: pid %d (sleep)" % p.pid, self.agent.ctl("status").stdout)

    def test_status_flags_root_that_can_regain_caps_but_not_fully_dropped_root(self):
        cg = self.attached("capsroot")
        # uid 0 with empty effective/permitted sets: one exec gives them back.
        regain = ("import ctypes,time\nlibc=ctypes.CDLL(None)\n"
                  "hdr=(ctypes.c_uint32*2)(0x20080522,0); data=(ctypes.c_uint32*6)()\n"
                  "assert libc.capset(hdr,data)==0\nprint('ready',flush=True)\ntime.sleep(60)\n")
        p = cg.popen([PY, "-c", regain], stdout=subprocess.PIPE, text=True)
        self.addCleanup(p.communicate)
        self.addCleanup(p.kill)
        self.assertEqual(p.stdout.readline().strip(), "ready")
        # uid 0 with an empty bounding set: nothing to regain.
        q = cg.popen(["setpriv", "--bounding-set", "-all", "sleep", "60"])
        self.addCleanup(q.wait)
        self.addCleanup(q.kill)
        self.assertTrue(wait_for(lambda: read_text("/proc/%d/comm" % q.pid).strip() == "sleep"))
        att = [a for a in self.agent.status()["attachments"] if a["cgroup"] == cg.path][0]
        flagged = {c["pid"]: c["caps"] for c in att["capable"]}
        self.assertIn("CAP_SYS_ADMIN", flagged.get(p.pid, []))
        self.assertNotIn(q.pid, flagged)

    def test_status_does_not_flag_run_sandboxes(self):
        for user in ([], ["--user", "root"]):
            env = dict(os.environ, REDIR_SOCKET=self.agent.socket)
            env.pop("SUDO_UID", None)
            q = subprocess.Popen([harness.REDIRCTL, "run"] + user + ["--", "sh", "-c",
                                 'echo "$REDIR_SANDBOX"; exec sleep 60'], env=env, stdout=subprocess.PIPE, text=True)
            try:
                sandbox = q.stdout.readline().strip()
                att = [a for a in self.agent.status()["attachments"] if a["cgroup"] == sandbox]
                self.assertEqual(len(att), 1, sandbox)
                self.assertEqual(att[0]["capable"], [], user)
            finally:
                q.send_signal(signal.SIGTERM)
                q.communicate(timeout=20)

    def test_agent_dirs_are_root_only(self):
        for d in (self.agent.state, self.agent.run_dir, self.agent.bpffs):
            self.assertEqual(os.stat(d).st_mode & 0o777, 0o700, d)
            for root, dirs, files in os.walk(d):
                for n in dirs + files:
                    path = os.path.join(root, n)
                    if not os.path.islink(path):
                        self.assertEqual(os.lstat(path).st_mode & 0o077, 0, path)

    def test_loose_state_dir_is_fixed_and_foreign_one_refused(self):
        loose = Agent("loose")
        os.makedirs(loose.state, 0o755)
        os.chmod(loose.state, 0o755)
        secret = os.path.join(loose.state, "leftover.json")
        with open(secret, "w") as f:
            f.write("{}")
        os.chmod(secret, 0o644)
        try:
            loose.start()
            self.assertEqual(os.stat(loose.state).st_mode & 0o777, 0o700)
            self.assertEqual(os.stat(secret).st_mode & 0o777, 0o600)
        finally:
            loose.cleanup()
        foreign = Agent("foreign")
        os.makedirs(foreign.state, 0o700)
        os.chown(foreign.state, 4242, 4242)
        try:
            with self.assertRaises(RuntimeError) as ctx:
                foreign.start()
            self.assertIn("not root", str(ctx.exception))
        finally:
            foreign.cleanup()


if __name__ == "__main__":
    unittest.main(verbosity=2)
