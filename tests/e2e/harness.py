"""End-to-end harness: a private network namespace, a real redird, real clients.

Every test process calls `enter_netns()` first: it unshares a new network
namespace (so nothing it does can reach any address outside it), brings lo up
and puts the fake "internet" addresses on lo. The agent and the sandboxed
clients run inside that namespace; cgroups and bpffs pins are uniquely named
and removed afterwards.
"""
import ctypes
import glob
import sys
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import sanitizer_scan
from sandbox_client import read_until

CLONE_NEWNET = 0x40000000
BUILD = os.environ.get("REDIR_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
REDIRD = os.path.abspath(os.path.join(BUILD, "userspace", "agent", "redird"))
REDIRCTL = os.path.abspath(os.path.join(BUILD, "tools", "redirctl", "redirctl"))

# 192.0.2.53 is the fake upstream resolver every agent in the tests forwards to.
FAKE_V4 = ["203.0.113.1/24", "198.51.100.1/24", "192.0.2.53/32"]
FAKE_RESOLVER = "192.0.2.53"
FAKE_V6 = ["2001:db8::1/64"]
UBSAN_SUPP = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "soak", "ubsan.supp"))
# What redird and redirctl wrote to stderr since sanitizer_reports_to(): the
# sanitizers report there where they cannot open their files (EMFILE), and
# sanitizer_reports() scans it (tests/e2e/sanitizer_scan.py).
_stderr_logs = []     # redird's log files (its stdout and stderr)
_stderr_reports = []  # reports found in redirctl's captured stderr


def mount_point(fstype):
    """Where the first filesystem of type FSTYPE is mounted (None if none is)."""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if parts[2] == fstype:
                return parts[1]
    return None


def cgroup2_mount():
    mnt = mount_point("cgroup2")
    if mnt is None:
        raise RuntimeError("no cgroup2 mount")
    return mnt


def cgroup_v1_dir():
    return mount_point("cgroup")


def pid_alive(pid):
    """PID exists and is not a zombie (the state after the last ")" of
    /proc/PID/stat: a command name may itself hold ") ")."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


_entered = False


def wait_until(predicate, timeout=5.0, interval=0.02):
    """Polls PREDICATE until it returns something truthy or TIMEOUT seconds pass;
    returns its last value (so a caller asserts on what it saw)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def enter_netns(extra_addrs=()):
    """Moves this process (and every child it starts later) into a fresh netns."""
    global _entered
    if _entered:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET) failed: run as root")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    for a in FAKE_V4 + list(extra_addrs):
        subprocess.run(["ip", "addr", "add", a, "dev", "lo"], check=True)
    for a in FAKE_V6:
        subprocess.run(["ip", "-6", "addr", "add", a, "dev", "lo", "nodad"], check=True)
    _entered = True


# Resolves each name of argv with getaddrinfo; prints {name: addresses or "error N"}.
GETADDRINFO = r"""
import socket, sys, json
out = {}
for name in sys.argv[1:]:
    try:
        out[name] = sorted({ai[4][0] for ai in socket.getaddrinfo(name, 80, proto=socket.IPPROTO_TCP)})
    except socket.gaierror as e:
        out[name] = "error %d" % e.errno
print(json.dumps(out))
"""


def write_resolv_conf(dirpath, nameserver="192.0.2.99", name="resolv.conf"):
    """A resolv.conf for Cgroup.run_resolving: the sandbox believes its resolver
    is NAMESERVER (any address: the kernel sends port 53 to the agent).
    Readable by all: unprivileged sandboxed commands read it too."""
    path = os.path.join(dirpath, name)
    with open(path, "w") as f:
        f.write("nameserver %s\noptions attempts:1 timeout:2\n" % nameserver)
    os.chmod(path, 0o644)
    return path


def sandbox_argv(argv, cgroup=None, binds=None, netns=None):
    """ARGV wrapped to start the way a sandboxed process starts: in network
    namespace NETNS (a /proc/PID/ns/net path) if given, with each file of BINDS
    ({target: source}, e.g. {"/etc/resolv.conf": ours}) bind-mounted in a
    private mount namespace, and moved into cgroup CGROUP (a path) before exec,
    so its first instruction already runs sandboxed."""
    script, params = "", []
    for target, source in (binds or {}).items():
        params += [source, target]
        script += 'mount --bind "${%d}" "${%d}" && ' % (len(params) - 1, len(params))
    if cgroup:
        params.append(cgroup)
        script += 'echo $$ > "${%d}/cgroup.procs" && ' % len(params)
    wrapped = ["sh", "-c", script + 'shift %d && exec "$@"' % len(params), "sh"] + params + list(argv)
    if binds:
        wrapped = ["unshare", "--mount"] + wrapped
    if netns:
        wrapped = ["nsenter", "--net=" + netns] + wrapped
    return wrapped


class Cgroup:
    def __init__(self, tag, parent=None):
        base = parent.path if parent else cgroup2_mount()
        self.path = os.path.join(base, "redir-e2e-%s-%d-%d" % (tag, os.getpid(), int(time.time() * 1000) % 100000))
        os.mkdir(self.path)

    def remove(self):
        for _ in range(100):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)

    def run(self, argv, binds=None, **kw):
        """Runs ARGV inside this cgroup (moved in before exec), with BINDS as
        sandbox_argv takes them; the CompletedProcess, output as text."""
        return subprocess.run(sandbox_argv(argv, self.path, binds), capture_output=True, text=True, **kw)

    def run_resolving(self, argv, resolv_conf, **kw):
        """ARGV in this cgroup with RESOLV_CONF bind-mounted over /etc/resolv.conf
        (private mount namespace), so the sandbox asks a resolver we chose."""
        return self.run(argv, {"/etc/resolv.conf": resolv_conf}, **kw)

    def getaddrinfo(self, resolv_conf, *names):
        """glibc's answer for each of NAMES inside this cgroup, asking the resolver
        RESOLV_CONF names: {name: sorted addresses, or "error N"}."""
        r = self.run_resolving([sys.executable, "-c", GETADDRINFO] + list(names), resolv_conf, timeout=30)
        if r.returncode != 0:
            raise AssertionError("getaddrinfo in %s failed: %s" % (self.path, r.stderr))
        return json.loads(r.stdout)

    def popen(self, argv, binds=None, **kw):
        """Starts ARGV inside this cgroup, as run() does, without waiting."""
        return subprocess.Popen(sandbox_argv(argv, self.path, binds), **kw)


class Agent:
    """A real redird with its own state, run and bpffs directories."""

    def __init__(self, tag, extra_args=()):
        self.tmp = tempfile.mkdtemp(prefix="redir-e2e-%s-" % tag)
        self.state = os.path.join(self.tmp, "state")
        self.run_dir = os.path.join(self.tmp, "run")
        self.bpffs = "/sys/fs/bpf/redir-e2e-%s-%d" % (tag, os.getpid())
        self.socket = os.path.join(self.run_dir, "redird.sock")
        self.log = os.path.join(self.tmp, "redird.log")
        # Never the host's resolver: the fake one inside this namespace.
        self.extra = ["--dns-upstream", FAKE_RESOLVER + ":53"] + list(extra_args)
        self.proc = None

    @property
    def audit_log(self):
        return os.path.join(self.state, "audit.log")

    def start(self, timeout=15):
        if self.log not in _stderr_logs:
            _stderr_logs.append(self.log)
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [REDIRD, "--state-dir", self.state, "--run-dir", self.run_dir, "--bpffs", self.bpffs] + self.extra,
                stdout=logf, stderr=logf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("redird exited: " + open(self.log).read())
            if os.path.exists(self.socket):
                r = self.ctl("status", "--json", check=False)
                if r.returncode == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError("redird did not come up: " + open(self.log).read())

    def ctl(self, *args, check=True, input=None):
        r = subprocess.run([REDIRCTL, "--socket", self.socket] + list(args), capture_output=True, text=True,
                           input=input)
        found = sanitizer_scan.in_output(r.stderr)
        if found:
            _stderr_reports.append("== redirctl %s stderr\n%s" % (" ".join(args), found))
        if check and r.returncode != 0:
            raise AssertionError("redirctl %s failed (%d): %s%s" % (" ".join(args), r.returncode, r.stdout, r.stderr))
        return r

    def status(self):
        return json.loads(self.ctl("status", "--json").stdout)

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def audit_records(self):
        if not os.path.exists(self.audit_log):
            return []
        out = []
        with open(self.audit_log) as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
        return out

    def wait_audit(self, match, since=0, count=1, timeout=5.0):
        """Audit records after the first SINCE that satisfy MATCH, polled until
        there are at least COUNT of them or TIMEOUT seconds pass."""
        def found():
            recs = [r for r in self.audit_records()[since:] if match(r)]
            return recs if len(recs) >= count else None
        return wait_until(found, timeout) or [r for r in self.audit_records()[since:] if match(r)]

    def cleanup(self, cgroups=()):
        self.stop()
        # Detaching happens through the pins: remove them so nothing stays attached.
        shutil.rmtree(self.bpffs, ignore_errors=True)
        for cg in cgroups:
            cg.remove()
        shutil.rmtree(self.tmp, ignore_errors=True)


def write_policy(dirpath, name, body):
    path = os.path.join(dirpath, name + ".json")
    body = dict(body)
    body.setdefault("version", 1)
    body.setdefault("name", name)
    with open(path, "w") as f:
        json.dump(body, f, indent=2)
    return path


def serve_each(receive, handle):
    """On a daemon thread of its own: HANDLE(*RECEIVE()) for each connection or
    datagram (RECEIVE is a socket's accept or a recvfrom) until the socket is
    closed. A HANDLE that fails on the network (OSError) loses only that one."""
    def loop():
        while True:
            try:
                got = receive()
            except OSError:
                return
            try:
                handle(*got)
            except OSError:
                pass
    threading.Thread(target=loop, daemon=True).start()


class TcpServer:
    """Accepts on ADDR:PORT and answers every connection with its own local
    address (HTTP: as an HTTP answer; ECHO: echoes the bytes it gets instead
    and closes once the client half-closes)."""

    def __init__(self, addr, port, http=False, echo=False):
        self.http = http
        self.echo = echo
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        serve_each(self.sock.accept, self._accepted)

    def _accepted(self, c, _peer):
        if self.http or self.echo:
            threading.Thread(target=self._http if self.http else self._echo, args=(c,), daemon=True).start()
            return
        try:
            la = c.getsockname()
            c.sendall(("%s %d\n" % (la[0], la[1])).encode())
        finally:
            c.close()

    def _http(self, c):
        """Minimal HTTP/1.1: read the request head, answer with our address."""
        try:
            c.settimeout(5)
            if b"\r\n\r\n" not in read_until(c, b"\r\n\r\n"):
                return
            la = c.getsockname()
            body = ("%s %d\n" % (la[0], la[1])).encode()
            c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        except OSError:
            pass
        finally:
            c.close()

    @staticmethod
    def _echo(c):
        try:
            while True:
                d = c.recv(4096)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.sock.close()


def connect_errno(cg, addr, port, proto="tcp"):
    """Connects from inside cgroup CG; returns 0 or the errno name."""
    code = (
        "import socket,sys,errno\n"
        "a,p,proto=sys.argv[1],int(sys.argv[2]),sys.argv[3]\n"
        "fam=socket.AF_INET6 if ':' in a else socket.AF_INET\n"
        "s=socket.socket(fam, socket.SOCK_STREAM if proto=='tcp' else socket.SOCK_DGRAM)\n"
        "s.settimeout(5)\n"
        "try:\n"
        "    s.connect((a,p)); print('OK')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode.get(e.errno, str(e)))\n"
    )
    r = cg.run([sys.executable, "-c", code, addr, str(port), proto])
    return r.stdout.strip() or r.stderr.strip()


def client_script(body):
    """BODY as a `python3 -c` script for a sandbox, with tests/e2e/sandbox_client.py's
    pieces in scope."""
    here = os.path.dirname(os.path.abspath(__file__))
    return "import sys\nsys.path.insert(0, %r)\nfrom sandbox_client import *  # noqa\n%s" % (here, body)


def scratch_dir(tag):
    """A private temporary directory the sandboxes may read (policies, CAs, scripts)."""
    tmp = tempfile.mkdtemp(prefix="redir-e2e-%s-" % tag)
    os.chmod(tmp, 0o755)
    return tmp


def close_all(*things):
    """Test teardown: kills the processes still running, closes the servers;
    None (never started) is skipped."""
    for t in things:
        if t is None:
            continue
        if isinstance(t, subprocess.Popen):
            if t.poll() is None:
                t.kill()
                t.wait()
        else:
            t.close()


def free_port():
    """A TCP port nobody in this namespace listens on (for --metrics)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def require_root(testcase):
    if os.geteuid() != 0:
        raise unittest.SkipTest("needs root")


def sanitizer_reports_to(dirpath):
    """Sends the ASan/UBSan reports of every redird and redirctl started after
    this call to files under DIRPATH (nothing is written by an unsanitized
    build); returns the prefix sanitizer_reports() reads. ASan's quarantine is
    capped so RSS bounds stay meaningful."""
    prefix = os.path.join(dirpath, "san")
    del _stderr_logs[:], _stderr_reports[:]
    os.environ["ASAN_OPTIONS"] = "detect_leaks=1:quarantine_size_mb=16:malloc_context_size=8:log_path=" + prefix
    os.environ["UBSAN_OPTIONS"] = "print_stacktrace=1:log_path=%s:suppressions=%s" % (prefix, UBSAN_SUPP)
    return prefix


def isolated(testcase, tag):
    """A test's start: needs root, enters its own network namespace, makes a
    scratch directory and sends sanitizer reports there. Returns (scratch
    directory, report prefix for sanitizer_reports)."""
    require_root(testcase)
    enter_netns()
    tmp = scratch_dir(tag)
    return tmp, sanitizer_reports_to(tmp)


def sanitizer_reports(prefix):
    """The first reports written under PREFIX, or by redird and redirctl on
    stderr since sanitizer_reports_to() ("" when there are none)."""
    found = sorted(glob.glob(prefix + "*"))
    files = ["== %s\n%s" % (f, read_text(f)[:4000]) for f in found[:3]]
    logs = []
    for path in _stderr_logs:
        text = sanitizer_scan.in_output(read_text(path)) if os.path.exists(path) else ""
        if text:
            logs.append("== %s (stderr)\n%s" % (path, text[:4000]))
    return "".join(files + logs + _stderr_reports[:3])


def read_text(path):
    with open(path, errors="replace") as f:
        return f.read()
