"""bench/peers (issue #11): redir's inference terminator side by side with
nginx, mitmproxy and squid doing the same job, against a direct baseline, all
measured in one run inside a private network and mount namespace this script
creates (fake addresses on its lo only). Prints one table with PASS/FAIL per
target; exit 0 all targets met, 1 a target missed, 2 a peer produced no numbers.
--check: exit status only says whether every peer produced numbers (CTest).

Knobs (environment): BENCH_SECONDS (per measurement, default 10), BENCH_ROUNDS
(interleaved rounds; default 3, 1 when BENCH_SECONDS < 5: req/s the best
round's, p99 at 50 connections the median of the rounds' — see bench/README
"How a round is chosen"), BENCH_PACED_SHARE (0.5: the offered load of the
paced rounds that decide the p99 target, as a share of nginx's best
keep-alive req/s), BENCH_SSE_STREAMS (1000), BENCH_SSE_GAP_MS (250), BENCH_PEERS (default
direct,redir,nginx,mitmproxy,squid), BENCH_PHASES (default
keepalive,latency,handshakes,probe,sse), BENCH_THREADS (1,2), BENCH_PERF=1 (perf profile of redird; BENCH_PERF_DATA=FILE
keeps its perf.data, BENCH_PERF_CALLGRAPH=dwarf for callers through libraries, BENCH_PERF_LOAD=handshakes to
profile new connections, BENCH_PERF_NGINX=1 to profile nginx the same way),
BENCH_JSON=FILE (all numbers), REDIR_THREADS_FLAG (redird's io-thread flag;
detected from --help when unset), REDIR_BUILD (build directory), BENCH_REDIR_B (another
build directory: its redird runs as peer "redir-b" in the keep-alive rounds, for A/B in one run),
BENCH_PAIR_NGINX=N (N keep-alive rounds in which redir and
nginx are loaded at the same time: CPU per request of both under the same neighbours), BENCH_AB_PAIRED=N (with BENCH_REDIR_B: N more keep-alive rounds
in which redir and redir-b are loaded at the same time, each by its own wrk, so both see the same
neighbours; the medians of their CPU per request are compared), BENCH_ALLOCS=0 (skip counting redird's heap allocations per keep-alive request with uprobes on its allocator (libc or tcmalloc),
done after the keep-alive rounds by default; BENCH_ALLOC_CALLERS=FILE keeps a perf.data of their
call stacks as FILE.<peer>), BENCH_RESUMPTION=1 (servers keep their TLS session tickets, so wrk's reconnects resume: the
handshakes phase then times resumptions instead of full handshakes), BENCH_HOPS=1 (on by default with
BENCH_PERF=1: after the one-connection rounds, direct, redir and nginx once more under `perf sched
record`, and a table of each one's hand-offs: how often a wake-up crossed CPUs, what each cost; hops.py).
"""
import ctypes
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e"))
import harness  # noqa: E402
from harness import Agent, Cgroup, write_policy, wait_until  # noqa: E402

sys.path.insert(0, HERE)
from probe import pct as probe_pct  # noqa: E402
import hops  # noqa: E402

SECONDS = max(1, int(float(os.environ.get("BENCH_SECONDS", "10"))))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1" if SECONDS < 5 else "3"))
SSE_STREAMS = int(os.environ.get("BENCH_SSE_STREAMS", "1000"))
SSE_GAP_MS = float(os.environ.get("BENCH_SSE_GAP_MS", "250"))
PEERS = os.environ.get("BENCH_PEERS", "direct,redir,nginx,mitmproxy,squid").split(",")
PERF = os.environ.get("BENCH_PERF") == "1"
REDIR_B = os.environ.get("BENCH_REDIR_B")
ALLOCS = os.environ.get("BENCH_ALLOCS", "1") != "0"
PAIRED = int(os.environ.get("BENCH_AB_PAIRED", "0"))
PAIR_NGINX = int(os.environ.get("BENCH_PAIR_NGINX", "0"))
# The offered load of the paced rounds, as a share of nginx's best keep-alive
# req/s at the same thread count in the same run.
PACED_SHARE = float(os.environ.get("BENCH_PACED_SHARE", "0.5"))
HOPS = os.environ.get("BENCH_HOPS", "1" if PERF else "0") == "1"
ALL_PHASES = ("keepalive", "latency", "handshakes", "probe", "sse")
THREADS = [int(t) for t in os.environ.get("BENCH_THREADS", "1,2").split(",")]
PHASES = set(os.environ.get("BENCH_PHASES", ",".join(ALL_PHASES)).split(","))
CHECK_ONLY = "--check" in sys.argv
RESUMPTION = os.environ.get("BENCH_RESUMPTION") == "1"
PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

SECRET = "sk-bench-credential-0123456789"
# Fake addresses on this namespace's lo, and the names /etc/hosts gives them
# (a private bind mount: redird resolves its provider by name, like in production).
HOSTS = {
    "provider.bench.test": "203.0.113.100",  # nginx serving fixed JSON
    "sse.bench.test": "203.0.113.101",       # sse_provider.py, pacing events
    "nginx.bench.test": "203.0.113.10",      # nginx as the TLS-terminating proxy
    "nginx-sse.bench.test": "203.0.113.10",  # the same nginx, proxying to the SSE provider
    "mitm.bench.test": "203.0.113.11",
    "squid.bench.test": "203.0.113.12",
    "inference.local": "198.18.0.1",         # redird's VIP: connections to it are redirected in the kernel
}
DENIED = "198.51.100.7"  # the policy allows only inference: a connect() here is refused and audited
RESOLVER = "192.0.2.53"  # any resolver: sandbox DNS is redirected to the agent's responder
CHAT = "/v1/chat/completions"
PROVIDER_JSON = ('{"id":"chatcmpl-bench","object":"chat.completion","created":1,"model":"served-model",'
                 '"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}],'
                 '"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}')
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


# -- namespace and certificates ------------------------------------------------

def enter_namespaces(tmp):
    """A private mount namespace (for /etc/hosts) and harness's private netns."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed: run as root")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    harness.enter_netns(extra_addrs=sorted({a + "/32" for a in HOSTS.values() if a.startswith("203.")}))
    hosts = os.path.join(tmp, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 localhost\n" + "".join("%s %s\n" % (a, n) for n, a in HOSTS.items()))
    subprocess.run(["mount", "--bind", hosts, "/etc/hosts"], check=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_certs(d):
    """Test CA and one ECDSA P-256 server certificate (signed by it) for every fake name."""
    p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2"]
    sans = ",".join("DNS:" + n for n in HOSTS)
    steps = [
        ["-x509", "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=redir bench provider CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"],
        ["-x509", "-CA", "ca.pem", "-CAkey", "ca.key", "-keyout", "srv.key", "-out", "srv.pem",
         "-subj", "/CN=provider.bench.test", "-addext", "subjectAltName=" + sans,
         "-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"],
    ]
    for step in steps:
        subprocess.run(["openssl", "req"] + p256 + step, check=True, capture_output=True, cwd=d)
    path = lambda name: os.path.join(d, name)
    with open(path("srv-combined.pem"), "w") as f:  # mitmproxy wants key and cert in one file
        f.write(open(path("srv.key")).read() + open(path("srv.pem")).read())
    return {"ca": path("ca.pem"), "cert": path("srv.pem"), "key": path("srv.key"), "combined": path("srv-combined.pem")}


# -- processes: CPU and memory of a process tree -------------------------------

def descendants(pid):
    kids = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open("/proc/%s/stat" % p) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(p))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def machine_jiffies():
    """(busy, idle) clock ticks of every CPU since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle, iowait
    return sum(v[:8]) - idle, idle  # user nice system idle iowait irq softirq steal


def tasks(pids):
    """(tid, /proc directory) of every thread of PIDS (processes gone meanwhile are skipped)."""
    for p in pids:
        try:
            tids = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for t in tids:
            yield t, "/proc/%d/task/%s" % (p, t)


def switches(pids):
    """Context switches (voluntary + involuntary) of every thread of PIDS so far."""
    total = 0
    for _, d in tasks(pids):
        try:
            with open(d + "/status") as f:
                total += sum(int(l.split()[1]) for l in f if "ctxt_switches:" in l)
        except (OSError, ValueError, IndexError):
            pass
    return total


def machine_switches():
    """Context switches of the whole machine since boot (/proc/stat ctxt)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("ctxt "):
                return int(line.split()[1])
    return 0


def rss_mb(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024.0


class Usage:
    """CPU seconds and peak RSS of a process tree while a measurement runs."""

    def __init__(self, pid):
        self.pids = descendants(pid) if pid else []
        self.peak = rss_mb(self.pids)
        self.cpu0 = cpu_seconds(self.pids)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._sample, daemon=True)
        self._t.start()

    def _sample(self):
        while not self._stop.wait(0.25):
            self.peak = max(self.peak, rss_mb(self.pids))

    def finish(self):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, rss_mb(self.pids))
        return cpu_seconds(self.pids) - self.cpu0, self.peak


def stop_process(proc, grace=10):
    """SIGTERM, then SIGKILL if PROC is still there after GRACE seconds."""
    if proc.poll() is None:
        proc.terminate()
        if not wait_until(lambda: proc.poll() is not None, grace, 0.05):
            proc.kill()
    proc.wait()


def workdir(tmp, name):
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    return d


class Spawned:
    """A server process with its stdout and stderr in LOG."""

    def __init__(self, argv, log, grace=10):
        self.logf = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self.logf, stderr=self.logf)
        self.grace = grace

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        stop_process(self.proc, self.grace)
        self.logf.close()


def wait_listening(addr, port, what, timeout=20):
    import socket

    def up():
        try:
            socket.create_connection((addr, port), 0.5).close()
            return True
        except OSError:
            return False
    if not wait_until(up, timeout, 0.05):
        raise RuntimeError("%s did not listen on %s:%d within %d s: its log is under %s (kept)"
                           % (what, addr, port, timeout, tempfile.gettempdir() + "/redir-bench-peers-*"))


# -- the fake providers and the peers ------------------------------------------

class Nginx:
    """One nginx instance (master + WORKERS) with a server block BODY."""

    def __init__(self, tmp, name, workers, servers, upstreams=""):
        self.dir = workdir(tmp, name)
        self.conf = os.path.join(self.dir, "nginx.conf")
        d = self.dir
        with open(self.conf, "w") as f:
            f.write("""# %(name)s, generated by bench/peers/peers.py
user root;
worker_processes %(workers)d;
daemon off;
pid %(d)s/nginx.pid;
error_log %(d)s/error.log warn;
events { worker_connections 16384; }
http {
  client_body_temp_path %(d)s/body; proxy_temp_path %(d)s/proxy; fastcgi_temp_path %(d)s/fcgi;
  uwsgi_temp_path %(d)s/uwsgi; scgi_temp_path %(d)s/scgi;
  keepalive_requests 1000000; keepalive_timeout 120s;
  # nginx 1.22's default is TLS 1.0-1.2; redird and every modern server speak
  # TLS 1.3, whose resumption still costs an ECDHE (1.2's costs none):
  # compare the same protocol (nginx >= 1.23.4's default, Debian's nginx.conf).
  ssl_protocols TLSv1.2 TLSv1.3;
  %(upstreams)s
  %(servers)s
}
""" % {"name": name, "workers": workers, "d": d, "upstreams": upstreams, "servers": servers})
        self.spawned = Spawned(["nginx", "-c", self.conf, "-p", self.dir], os.path.join(self.dir, "stderr.log"))
        self.pid = self.spawned.pid
        self.stop = self.spawned.stop


def start_provider(tmp, certs):
    a = HOSTS["provider.bench.test"]
    servers = """server {
    listen %s:443 ssl backlog=4096;
    ssl_certificate %s; ssl_certificate_key %s;
    access_log off;
    location = %s {
      default_type application/json;
      if ($http_authorization != "Bearer %s") { return 401 '{"error":"wrong credential"}'; }
      return 200 '%s';
    }
    location / { return 404; }
  }""" % (a, certs["cert"], certs["key"], CHAT, SECRET, PROVIDER_JSON)
    n = Nginx(tmp, "provider", 2, servers)
    wait_listening(a, 443, "the fake provider (nginx)")
    return n


def start_sse_provider(tmp, certs):
    a = HOSTS["sse.bench.test"]
    p = Spawned([PY, os.path.join(HERE, "sse_provider.py"), "--addr", a, "--cert", certs["cert"],
                 "--key", certs["key"], "--gap-ms", str(SSE_GAP_MS), "--credential", SECRET], os.path.join(tmp, "sse-provider.log"))
    wait_listening(a, 443, "the SSE provider")
    return p


class Peer:
    name = "?"
    url_host = None
    cgroup = None
    threads = 1
    server = None  # the Spawned (or Nginx) behind it
    ca = None  # the CA file its clients trust

    @property
    def pid(self):
        return self.server.pid if self.server else None

    def url(self):
        return "https://%s%s" % (self.url_host, CHAT)

    def stop(self):
        if self.server:
            self.server.stop()


class Direct(Peer):
    name = "direct"
    url_host = "provider.bench.test"

    def __init__(self, provider):
        self.provider_pid = provider.pid

    @property
    def pid(self):
        return self.provider_pid

    def stop(self):
        pass  # the provider outlives its direct peer


class NginxProxy(Peer):
    """nginx for redir's job: TLS termination, the credential header, proxy to
    the provider over verified TLS with a keep-alive upstream pool, unbuffered."""
    url_host = "nginx.bench.test"

    def __init__(self, tmp, certs, workers):
        self.threads = workers
        self.name = "nginx"
        self.ca = certs["ca"]
        a = HOSTS["nginx.bench.test"]
        upstreams = "".join("upstream %s { server %s:443; keepalive 512; keepalive_requests 1000000; }\n" % (
            up, HOSTS[host]) for up, host in (("fixed", "provider.bench.test"), ("sse", "sse.bench.test")))
        server = """server {
    listen %(a)s:443 ssl%(opts)s;
    server_name %(name)s;
    ssl_certificate %(cert)s; ssl_certificate_key %(key)s;
    access_log %(dir)s/access.log;
    location /v1/ {
      proxy_pass https://%(up)s;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host %(host)s;
      proxy_set_header Authorization "Bearer %(secret)s";
      proxy_ssl_server_name on;
      proxy_ssl_name %(host)s;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate %(ca)s;
      proxy_ssl_session_reuse on;
      # 1.22's default for the provider leg is TLS 1.0-1.2 (1.3 from 1.23.4 on):
      # redird speaks TLS 1.3 to the provider, so nginx must too, or it is
      # measured with TLS 1.2's cheaper per-record work there (OpenSSL 3.0
      # re-initialises the cipher for every TLS 1.3 record).
      proxy_ssl_protocols TLSv1.2 TLSv1.3;
      proxy_buffering off;
    }
  }
"""
        servers = "".join(server % {
            "a": a, "opts": " backlog=4096" if up == "fixed" else "", "name": name, "up": up, "host": host, "cert": certs["cert"], "key": certs["key"],
            "secret": SECRET, "ca": certs["ca"], "dir": os.path.join(tmp, "nginx-%d" % workers)}
            for name, up, host in (("nginx.bench.test", "fixed", "provider.bench.test"),
                                   ("nginx-sse.bench.test", "sse", "sse.bench.test")))
        self.server = Nginx(tmp, "nginx-%d" % workers, workers, servers, upstreams)
        wait_listening(a, 443, "nginx (the proxy peer)")


class Mitmproxy(Peer):
    """mitmdump as a reverse proxy: TLS termination, header set, verified upstream TLS."""
    name = "mitmproxy"
    url_host = "mitm.bench.test"
    # Seconds before its first answers under 50 new connections on a loaded
    # machine: a short measurement would see none.
    min_seconds = 10

    def __init__(self, tmp, certs):
        a, conf = HOSTS[self.url_host], workdir(tmp, "mitm")
        self.server = Spawned(
            ["mitmdump", "-q", "--mode", "reverse:https://provider.bench.test:443/", "--listen-host", a,
             "--listen-port", "443", "--set", "confdir=" + conf, "--certs", "*=" + certs["combined"],
             "--set", "ssl_verify_upstream_trusted_ca=" + certs["ca"], "--set", "flow_detail=0",
             "--modify-headers", "/~q/Authorization/Bearer " + SECRET], os.path.join(conf, "mitmdump.log"))
        wait_listening(a, 443, "mitmdump", timeout=60)


class Squid(Peer):
    """squid (OpenSSL build) as a TLS-terminating accelerator for the provider:
    https_port accel + a TLS cache_peer verified against the test CA + the credential header."""
    name = "squid"
    url_host = "squid.bench.test"

    def __init__(self, tmp, certs):
        a, d = HOSTS[self.url_host], workdir(tmp, "squid")
        os.chmod(certs["key"], 0o644)  # squid's workers run as proxy
        conf = os.path.join(d, "squid.conf")
        with open(conf, "w") as f:
            f.write("""# generated by bench/peers/peers.py
https_port %(a)s:443 accel defaultsite=provider.bench.test tls-cert=%(cert)s tls-key=%(key)s
cache_peer %(prov)s parent 443 0 no-query originserver no-digest name=provider tls tls-cafile=%(ca)s \
tls-domain=provider.bench.test
cache_peer_access provider allow all
never_direct allow all
http_access allow all
request_header_access Authorization deny all
request_header_add Authorization "Bearer %(secret)s" all
cache deny all
cache_mem 8 MB
workers 1
pid_filename %(d)s/squid.pid
access_log stdio:%(d)s/access.log
cache_log %(d)s/cache.log
cache_store_log none
coredump_dir %(d)s
shutdown_lifetime 1 seconds
via off
forwarded_for delete
""" % {"a": a, "cert": certs["cert"], "key": certs["key"], "prov": HOSTS["provider.bench.test"], "ca": certs["ca"],
       "secret": SECRET, "d": d})
        subprocess.run(["chown", "-R", "proxy:proxy", d], check=False)
        self.server = Spawned(["squid", "-N", "-f", conf], os.path.join(d, "stderr.log"), grace=15)
        wait_listening(a, 443, "squid", timeout=30)


def threads_flag():
    """redird's flag for its io-thread count, or None when it has one io thread."""
    flag = os.environ.get("REDIR_THREADS_FLAG")
    if flag is not None:
        return flag or None
    out = subprocess.run([harness.REDIRD, "--help"], capture_output=True, text=True).stdout
    m = re.search(r"(--(?:io-|terminator-|gateway-|worker-)?threads)\b", out)
    return m.group(1) if m else None


class Redir(Peer):
    """A real redird: BPF programs attached to a cgroup of our own, wrk runs in
    that cgroup and dials https://inference.local (the VIP; redirected in the kernel)."""
    name = "redir"
    url_host = "inference.local"

    def __init__(self, tmp, certs, threads, redird=None):
        self.threads = threads
        flag = threads_flag()
        extra = ["--max-connections-per-sandbox", "8192", "--max-connections", "16384"]
        if flag and threads:
            extra += [flag, str(threads)]
        own, harness.REDIRD = harness.REDIRD, redird or harness.REDIRD
        try:
            self.agent = Agent(self.name, extra).start()
        finally:
            harness.REDIRD = own
        a = self.agent
        for name, host in (("fixed", "provider.bench.test"), ("sse", "sse.bench.test")):
            a.ctl("provider", "create", "--name", name, "--type", "openai-compatible", "--base-url",
                  "https://%s/v1" % host, "--ca-file", certs["ca"], "--credential", "OPENAI_API_KEY=" + SECRET)
        self.use_provider("fixed")
        policy = write_policy(tmp, "%s-inference-only-%s" % (self.name, threads), {"inference": {"enabled": True}})
        self.cgroup = Cgroup(self.name)
        a.ctl("attach", "--cgroup", self.cgroup.path, "--policy", policy)
        self.ca_local = os.path.join(tmp, "%s-inference-ca-%s.pem" % (self.name, threads))
        a.ctl("ca", "export", "--out", self.ca_local)
        self.ca = self.ca_local

    def use_provider(self, name):
        self.agent.ctl("inference", "set", "--provider", name, "--model", "served-model")

    @property
    def pid(self):
        return self.agent.proc.pid

    def stop(self):
        self.agent.cleanup([self.cgroup])


class RedirB(Redir):
    """Another build of redird side by side (BENCH_REDIR_B=its build directory): A/B in one run."""
    name = "redir-b"

    def __init__(self, tmp, certs, threads):
        super().__init__(tmp, certs, threads, os.path.join(REDIR_B, "userspace", "agent", "redird"))


# -- load generators ---------------------------------------------------------

PROVIDER_PID = None  # the fake provider's nginx master, once started


def wrk(peer, conns, threads, seconds, close=False, rate=None):
    """wrk POSTing a chat completion (as fast as the peer answers, or RATE
    requests/s offered); returns its numbers plus the peer's CPU and peak RSS."""
    seconds = max(seconds, getattr(peer, "min_seconds", 0))
    argv = ["wrk", "-t", str(threads), "-c", str(conns), "-d", "%ds" % seconds, "--timeout", "5s",
            "-s", os.path.join(HERE, "wrk_post.lua"), peer.url()]
    env = dict(os.environ, WRK_CLOSE="1" if close else "0", WRK_RATE=str(int(rate or 0)), WRK_THREADS=str(threads))
    if isinstance(peer, Direct):
        env["WRK_AUTH"] = SECRET  # every other peer must put it there itself
    usage = Usage(peer.pid)
    prov = descendants(PROVIDER_PID) if PROVIDER_PID and not isinstance(peer, Direct) else []
    prov0, mach0 = cpu_seconds(prov), machine_jiffies()
    sw0 = (switches(usage.pids), switches(prov), machine_switches())
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc = peer.cgroup.popen(argv, **kw) if peer.cgroup else subprocess.Popen(argv, **kw)
    out, err = proc.communicate(timeout=seconds + 60)
    cpu, peak = usage.finish()
    prov_cpu, mach1 = cpu_seconds(prov) - prov0, machine_jiffies()
    sw = [b - a for a, b in zip(sw0, (switches(usage.pids), switches(prov), machine_switches()))]
    m = re.search(r"^WRKJSON (.*)$", out, re.M)
    if not m:
        log("wrk against %s printed no numbers: %s %s" % (peer.name, out[-500:], err[-500:]))
        return None
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6) if r["duration_us"] else 0.0
    r["errors"] = sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    r["cpu_us_per_req"] = cpu * 1e6 / r["requests"] if r["requests"] else None
    r["rss_peak_mb"] = peak
    if r["requests"] and prov:
        # The whole machine per request: the peer, the provider, and the rest
        # (wrk, softirq work charged to no task, everything else); idle is
        # what was left of the 2 CPUs. Tells whether the peer's core or the
        # machine bounds req/s.
        busy, idle = (b - a for a, b in zip(mach0, mach1))
        per = lambda ticks: ticks / CLK_TCK * 1e6 / r["requests"]
        provider_us = prov_cpu * 1e6 / r["requests"]
        r["machine"] = {"peer_us": r["cpu_us_per_req"], "provider_us": provider_us,
                        "rest_us": per(busy) - r["cpu_us_per_req"] - provider_us,
                        "idle_us": per(idle), "busy_frac": busy / max(1, busy + idle),
                        # Context switches a request: a proxy that makes its
                        # neighbours sleep and wake more often costs their CPU.
                        "sw_peer": sw[0] / r["requests"], "sw_provider": sw[1] / r["requests"],
                        "sw_rest": (sw[2] - sw[0] - sw[1]) / r["requests"]}
    return r


def paired_rounds(a, b, rounds):
    """A/B on a shared machine: both builds loaded at once (one wrk each, the
    same seconds), ROUNDS times; returns both builds' CPU per request and
    req/s per round. Whatever the neighbours do, they do it to both."""
    log("A/B at the same time: %s and %s, %d rounds" % (a.name, b.name, rounds))
    out = []
    for rnd in range(rounds):
        got = {}
        # Session 8 saw the side started second (A, in this thread) read up
        # to ~10% dearer per request than the one started first, with builds
        # of equal speed (LTO vs plain: 1.11 one way, 0.96-1.04 the other).
        # The sides swap every round, so the bias does not sit on one side.
        first, second = ("b", "a") if rnd % 2 == 0 else ("a", "b")
        peer = {"a": a, "b": b}
        t = threading.Thread(target=lambda: got.__setitem__(first, wrk(peer[first], 50, 2, SECONDS)))
        t.start()
        got[second] = wrk(peer[second], 50, 2, SECONDS)
        t.join()
        if got.get("a") and got.get("b"):
            out.append({"a_cpu": got["a"]["cpu_us_per_req"], "b_cpu": got["b"]["cpu_us_per_req"],
                        "a_rps": got["a"]["rps"], "b_rps": got["b"]["rps"]})
    return out


def best(results):
    results = [r for r in results if r]
    return max(results, key=lambda r: r["rps"]) if results else None


def median_p99(results):
    """The median of the rounds' p99 (None when no round has one). A tail
    is not a best-of: the p99 of the best-req/s round is whatever that round's
    neighbours did, and one hiccup in it reads as the peer's tail (a build
    without polling once read 19 ms there, 5 ms in the others). With three
    interleaved rounds the median drops one bad round of each peer."""
    v = [r["p99_us"] for r in results if r and r.get("p99_us") is not None]
    return statistics.median(v) if v else None


def sse_run(peer, ca, seconds):
    argv = [PY, os.path.join(HERE, "sse_client.py"), "--host", peer.url_host, "--sni", peer.url_host,
            "--cafile", ca, "--streams", str(SSE_STREAMS), "--seconds", str(seconds), "--gap-ms", str(SSE_GAP_MS)]
    if isinstance(peer, Direct):
        argv += ["--auth", SECRET]
    usage = Usage(peer.pid)
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = peer.cgroup.popen(argv, **kw) if peer.cgroup else subprocess.Popen(argv, **kw)
    out, err = proc.communicate(timeout=seconds + 240)
    cpu, peak = usage.finish()
    try:
        r = json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        log("SSE client against %s printed no numbers: %s %s" % (peer.name, out[-500:], err[-800:]))
        return None
    r["rss_peak_mb"] = peak
    r["cpu_s"] = cpu
    return r


def resumption(peer, ca, count=20):
    """How many of COUNT new connections the peer resumes when offered the
    previous connection's session, as wrk does on reconnect."""
    argv = [PY, os.path.join(HERE, "resume.py"), "--host", peer.url_host, "--sni", peer.url_host, "--cafile", ca,
            "--count", str(count)]
    if isinstance(peer, Direct):
        argv += ["--auth", SECRET]
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc = peer.cgroup.popen(argv, **kw) if peer.cgroup else subprocess.Popen(argv, **kw)
    out, err = proc.communicate(timeout=120)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        log("resumption probe against %s printed nothing: %s" % (peer.name, err[-500:]))
        return None


def probe(redir, seconds):
    """Control API latency (from outside the sandbox) and DNS latency (from inside it), concurrently."""
    base = [PY, os.path.join(HERE, "probe.py"), "--seconds", str(seconds)]
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [subprocess.Popen(base + ["--control", redir.agent.socket, "--follow", redir.agent.socket,
                                      "--deny-addr", DENIED], **kw)]
    time.sleep(0.3)  # the follower is subscribed before the first denied connect()
    procs.append(redir.cgroup.popen(base + ["--resolver", RESOLVER, "--deny", DENIED], **kw))
    out = {}
    for p in procs:
        o, e = p.communicate(timeout=seconds + 60)
        try:
            out.update(json.loads(o.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            log("probe printed no numbers: %s %s" % (o[-300:], e[-500:]))
            return None
    lat = sorted(out["deny_seen"][str(p)] - t for p, t, how in out["deny_sent"]
                 if how == "EPERM" and str(p) in out["deny_seen"])
    out["events"] = {"count": len(lat), "p50_us": probe_pct(lat, 50), "p99_us": probe_pct(lat, 99),
                     "errors": len(out["deny_sent"]) - len(lat)}
    del out["deny_sent"], out["deny_seen"]
    return out


def probe_saturated(redir, seconds):
    """The probe while 50 keep-alive wrk connections saturate the terminator."""
    argv = ["wrk", "-t", "2", "-c", "50", "-d", "%ds" % (seconds + 2), "--timeout", "5s",
            "-s", os.path.join(HERE, "wrk_post.lua"), redir.url()]
    load = redir.cgroup.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    r = probe(redir, seconds)
    out, _ = load.communicate(timeout=seconds + 60)
    m = re.search(r"^WRKJSON (.*)$", out, re.M)
    if r is not None and m:
        w = json.loads(m.group(1))
        r["load_rps"] = w["requests"] / (w["duration_us"] / 1e6)
    return r


def perf_profile(redir, seconds, out_dir, peer=None):
    """cpu-clock samples of redird (or PEER's process tree) while wrk saturates
    it; top symbols as text."""
    peer = peer or redir
    data = os.path.join(out_dir, "perf-%s.data" % peer.name)
    argv = ["wrk", "-t", "2", "-c", "50", "-d", "%ds" % (seconds + 1), "--timeout", "5s",
            "-s", os.path.join(HERE, "wrk_post.lua"), peer.url()]
    # BENCH_PERF_LOAD=handshakes: profile a new TLS connection per request instead.
    close = os.environ.get("BENCH_PERF_LOAD") == "handshakes"
    env = dict(os.environ, WRK_CLOSE="1" if close else "0")
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    load = peer.cgroup.popen(argv, **kw) if peer.cgroup else subprocess.Popen(argv, **kw)
    graph = os.environ.get("BENCH_PERF_CALLGRAPH", "fp")  # dwarf: callers through libc and OpenSSL too
    pids = ",".join(str(p) for p in descendants(peer.pid))
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "--call-graph", graph, "-o", data,
                    "-p", pids, "--", "sleep", str(seconds)], capture_output=True)
    out, _ = load.communicate(timeout=seconds + 60)
    m = re.search(r"WRKJSON (\{.*\})", out)
    if os.environ.get("BENCH_PERF_DATA"):  # keep the samples for perf report/annotate
        dest = os.environ["BENCH_PERF_DATA"]
        shutil.copy(data, dest if peer is redir else dest + "." + peer.name)
    def report(sort, limit):
        rep = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort", sort,
                              "-g", "none", "--percent-limit", limit], capture_output=True, text=True)
        return [l for l in rep.stdout.splitlines() if l.strip() and not l.startswith("#")]
    samples = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "dso", "-g", "none"],
                             capture_output=True, text=True).stdout
    sm = re.search(r"Event count \(approx.\): (\d+)", samples)  # cpu-clock: nanoseconds on a CPU
    head = []
    if sm and m:
        reqs = max(1, json.loads(m.group(1))["requests"])
        head = ["%s: %d us of CPU per %s (%d requests in %d s, %d in the %d s sampled)" % (
            peer.name, int(sm.group(1)) / 1000 / (reqs * seconds / (seconds + 1)),
            "connection" if close else "request", reqs, seconds + 1, reqs * seconds / (seconds + 1), seconds)]
    tail = [""] + syscalls_per_request(peer, out_dir)
    return head + report("dso", "2") + [""] + report("dso,sym", "1")[:25] + tail


def syscalls_per_request(peer, out_dir, seconds=3):
    """PEER's system calls per keep-alive request, by name, from its whole
    process tree (redird; nginx's master and workers). Each loopback sendmsg
    also runs the receiver's TCP input on this CPU, so the count is most of
    the kernel's share."""
    data = os.path.join(out_dir, "sys-%s.data" % peer.name)
    argv = ["wrk", "-t", "2", "-c", "50", "-d", "%ds" % seconds, "--timeout", "5s",
            "-s", os.path.join(HERE, "wrk_post.lua"), peer.url()]
    kw = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    load = peer.cgroup.popen(argv, **kw) if peer.cgroup else subprocess.Popen(argv, **kw)
    pids = ",".join(str(p) for p in descendants(peer.pid))
    subprocess.run(["perf", "record", "-q", "-e", "raw_syscalls:sys_enter", "-o", data, "-p", pids,
                    "--", "sleep", str(seconds)], capture_output=True)
    out, _ = load.communicate(timeout=seconds + 60)
    m = re.search(r"WRKJSON (\{.*\})", out)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "trace"], capture_output=True, text=True).stdout
    counts = {}
    for l in script.splitlines():
        sm = re.search(r"NR (\d+)", l)
        if sm:
            counts[int(sm.group(1))] = counts.get(int(sm.group(1)), 0) + 1
    if not m or not counts:
        return ["(system calls not counted: perf raw_syscalls tracepoint or wrk output missing)"]
    requests = max(1, json.loads(m.group(1))["requests"])
    names = {0: "read", 1: "write", 3: "close", 7: "poll", 20: "writev", 41: "socket", 42: "connect",
             44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 54: "setsockopt", 72: "fcntl",
             202: "futex", 232: "epoll_wait", 233: "epoll_ctl", 281: "epoll_pwait", 283: "timerfd_create",
             286: "timerfd_settime", 290: "eventfd2", 441: "epoll_pwait2", 18: "pwrite64", 19: "readv",
             228: "clock_gettime", 13: "rt_sigaction", 14: "rt_sigprocmask"}
    total = sum(counts.values())
    lines = ["system calls per keep-alive request: %.1f (%d requests)" % (total / requests, requests)]
    for nr, c in sorted(counts.items(), key=lambda kv: -kv[1])[:10]:
        lines.append("  %-14s %.2f" % (names.get(nr, "nr %d" % nr), c / requests))
    return lines


ALLOC_FUNCS = ("malloc", "calloc", "realloc")
# tcmalloc's operator new does not go through its malloc (glibc's libstdc++
# new does): counted at its own entry points, one probe per address.
TCMALLOC_NEW = (("new", "_Znwm"), ("new_nothrow", "_ZnwmRKSt9nothrow_t"), ("new_aligned", "_ZnwmSt11align_val_t"),
                ("memalign", "memalign"), ("posix_memalign", "posix_memalign"))


def heap_library(pid):
    """The shared library whose malloc PID calls: tcmalloc when mapped, else libc."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            libs = {l.split()[-1] for l in f if ".so" in l}
    except OSError:
        return None
    tc = next((l for l in libs if "libtcmalloc" in l), None)
    return tc or next((l for l in libs if re.search(r"/libc\.so\.6$", l)), None)


def alloc_probes(pid):
    """uprobes on the allocation entry points of the heap PID uses, in a group
    of our own per library (redir_bench:malloc for libc, redir_bench_tc:... for
    tcmalloc); created once, left defined (another run may be using them).
    None when this kernel or perf cannot place them."""
    lib = heap_library(pid)
    if not lib or not shutil.which("perf"):
        return None
    funcs = [(f, f) for f in ALLOC_FUNCS]
    group = "redir_bench"
    if "tcmalloc" in lib:
        # perf wants event names unique across groups: tcmalloc's carry a
        # prefix. Placed by address: perf cannot find mangled names (operator
        # new) and, demangled, probes the PLT stub too.
        group = "redir_bench_tc"
        nm = subprocess.run(["nm", "-D", "--defined-only", lib], capture_output=True, text=True).stdout
        addr = {f[2]: f[0] for f in (l.split() for l in nm.splitlines()) if len(f) == 3}
        funcs = [("tc_" + name, "0x" + addr[sym].lstrip("0")) for name, sym in funcs + list(TCMALLOC_NEW)
                 if sym in addr]
    have = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    for name, sym in funcs:
        if "%s:%s " % (group, name) not in have:
            subprocess.run(["perf", "probe", "-q", "-x", lib, "-a", "%s:%s=%s" % (group, name, sym)],
                           capture_output=True)
    have = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    events = ["%s:%s" % (group, name) for name, _ in funcs if "%s:%s " % (group, name) in have]
    return events or None


def allocs_per_request(peer, seconds=3):
    """Heap allocations (malloc + calloc + realloc calls, operator new
    included, of libc or tcmalloc, whichever the process uses) per keep-alive
    request of PEER's redird, counted with uprobes under the usual wrk load. Separate from the timed rounds: a uprobe costs
    microseconds per call. Counts, unlike req/s, hold on a loaded machine."""
    events = alloc_probes(peer.pid)
    if not events:
        return None
    argv = ["wrk", "-t", "2", "-c", "50", "-d", "%ds" % (seconds + 1), "--timeout", "5s",
            "-s", os.path.join(HERE, "wrk_post.lua"), peer.url()]
    load = peer.cgroup.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # connections open, pools warm: count the steady state only
    st = subprocess.run(["perf", "stat", "-x", ",", "-e", ",".join(events), "-p", str(peer.pid), "--",
                         "sleep", str(seconds)], capture_output=True, text=True)
    out, _ = load.communicate(timeout=seconds + 60)
    m = re.search(r"WRKJSON (\{.*\})", out)
    counts = {}
    for l in st.stderr.splitlines():
        f = l.split(",")
        if len(f) > 2 and f[2].startswith("redir_bench") and f[0].strip().isdigit():
            counts[f[2].split(":")[1]] = int(f[0])
    if not m or not counts:
        log("allocation count of %s failed: %s" % (peer.name, st.stderr[-300:]))
        return None
    dest = os.environ.get("BENCH_ALLOC_CALLERS")
    if dest:  # where they come from: every 10th allocation's stack, for perf report
        load = peer.cgroup.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
        subprocess.run(["perf", "record", "-q", "-e", ",".join(events), "-c", "10", "--call-graph", "dwarf,16384",
                        "-o", "%s.%s" % (dest, peer.name), "-p", str(peer.pid), "--", "sleep", "2"],
                       capture_output=True)
        load.communicate(timeout=seconds + 60)
    w = json.loads(m.group(1))
    # wrk ran SECONDS+1 s; perf counted SECONDS of it, in the middle.
    requests = w["requests"] * seconds / (seconds + 1)
    return {"requests": int(requests), "per_request": {k: v / max(1, requests) for k, v in counts.items()},
            "total_per_request": sum(counts.values()) / max(1, requests)}


# -- the report ----------------------------------------------------------------

def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 100:
            return "{:,.0f}{}".format(v, unit)
        return "{:.2f}{}".format(v, unit)
    return "{:,}{}".format(v, unit)


def ms(us):
    return None if us is None else us / 1000.0


class Table:
    def __init__(self):
        self.rows = []
        self.missing = []

    def target(self, name, redir_v, base_v, ratio, bound, ok):
        verdict = "-" if ok is None else ("PASS" if ok else "FAIL")
        self.rows.append((name, redir_v, base_v, fmt(ratio) if isinstance(ratio, float) else (ratio or "-"),
                          bound, verdict))

    def print(self):
        head = ("target (#11)", "redir", "baseline (same run)", "ratio", "bound", "verdict")
        w = [max(len(str(r[i])) for r in self.rows + [head]) for i in range(6)]
        line = lambda r: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |"
        print(line(head))
        print("|" + "|".join("-" * (x + 2) for x in w) + "|")
        for r in self.rows:
            print(line(r))


def machine():
    model = ""
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                model = l.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return "%s, kernel %s, %d vCPU (%s), load %s, redir %s" % (
        time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), platform.release(), os.cpu_count(), model,
        " ".join(open("/proc/loadavg").read().split()[:3]), commit or "?")


def measure(res, key, direct, redir, nginx, others):
    """The wrk phases at one thread count, ROUNDS interleaved rounds, best kept."""
    res["rss"].setdefault("redir_idle_mb", {})[key] = rss_mb(descendants(redir.pid))
    all_peers = [direct, redir, nginx] + others
    for p in all_peers:
        wrk(p, 50, 2, 1)  # warm-up: pools, leaf cache, page faults
    ka, l1, hs = {}, {}, {}
    # The A/B peer (redir-b) is measured in every wrk phase alongside redir.
    ab = [p for p in others if isinstance(p, RedirB)]
    if "handshakes" in PHASES:
        for p in [direct, redir, nginx] + ab:
            res.setdefault("resumption", {}).setdefault(key, {})[p.name] = resumption(p, p.ca)
    for rnd in range(ROUNDS):
        if "keepalive" in PHASES:
            log("round %d/%d: keep-alive, 50 connections" % (rnd + 1, ROUNDS))
            for p in all_peers:
                ka.setdefault(p.name, []).append(wrk(p, 50, 2, SECONDS))
        if "latency" in PHASES and key == str(THREADS[0]):
            log("round %d/%d: one connection" % (rnd + 1, ROUNDS))
            for p in [direct, redir, nginx] + ab:
                l1.setdefault(p.name, []).append(wrk(p, 1, 1, SECONDS))
        if "handshakes" in PHASES:
            log("round %d/%d: a new TLS connection per request" % (rnd + 1, ROUNDS))
            for p in [direct, redir, nginx] + ab:
                hs.setdefault(p.name, []).append(wrk(p, 50, 2, SECONDS, close=True))
    nginx_best = best(ka.get("nginx", []))
    if "keepalive" in PHASES and nginx_best:
        paced(res, key, [direct, redir, nginx] + ab, nginx_best["rps"] * PACED_SHARE)
    if PAIRED and ab and "keepalive" in PHASES:
        res.setdefault("paired", {})[key] = paired_rounds(redir, ab[0], PAIRED)
    if PAIR_NGINX and "keepalive" in PHASES:
        res.setdefault("paired_nginx", {})[key] = paired_rounds(redir, nginx, PAIR_NGINX)
    if ka:
        res["keepalive"][key] = {n: best(v) for n, v in ka.items()}
        res.setdefault("keepalive_rounds", {})[key] = {n: [r and r["rps"] for r in v] for n, v in ka.items()}
        res.setdefault("keepalive_p99_rounds", {})[key] = {n: [r and r["p99_us"] for r in v] for n, v in ka.items()}
        res.setdefault("keepalive_p99", {})[key] = {n: median_p99(v) for n, v in ka.items()}
        if ALLOCS:
            for p in [redir] + ab:
                res.setdefault("allocs", {}).setdefault(key, {})[p.name] = allocs_per_request(p)
    if hs:
        res["handshakes"][key] = {n: best(v) for n, v in hs.items()}
    if l1 and HOPS and shutil.which("perf"):
        res["hops"] = one_connection_hops(direct, redir, nginx)
    if l1:
        # One connection: the round with the lowest median latency.
        res["latency1"] = {n: min((r for r in v if r), key=lambda r: r["p50_us"], default=None)
                           for n, v in l1.items()}


def paced(res, key, peers, rate):
    """p99 at 50 connections under the same offered load for every peer
    (RATE requests/s: a share of nginx's best keep-alive round), ROUNDS
    interleaved rounds, the median of each peer's. As fast as each peer
    answers, the faster proxy drives the provider and wrk harder and its p99
    at 50 connections grows with it (direct, which costs nothing, reads the
    worst p99 there): tails are compared at the same load."""
    got = {}
    for rnd in range(ROUNDS):
        log("round %d/%d: 50 connections at %d req/s offered" % (rnd + 1, ROUNDS, rate))
        for p in peers:
            got.setdefault(p.name, []).append(wrk(p, 50, 2, SECONDS, rate=rate))
    out = {"rate": rate, "p99_rounds": {}, "p99": {}, "rps": {}, "errors": {}}
    for name, v in got.items():
        ok = [r for r in v if r]
        out["p99_rounds"][name] = [r and r["p99_us"] for r in v]
        out["p99"][name] = median_p99(ok)
        out["rps"][name] = statistics.median(r["rps"] for r in ok) if ok else None
        out["errors"][name] = sum(r["errors"] for r in ok)
    res.setdefault("paced", {})[key] = out


def hops_rows(peer, provider_pid, path, seconds):
    """wrk -c1 through PEER for SECONDS under perf sched (recorded in PATH):
    hops.report's rows, the provider being PROVIDER_PID's processes."""
    mine = hops.thread_ids(descendants(peer.pid)) if not isinstance(peer, Direct) else set()
    r = hops.record(path, lambda: wrk(peer, 1, 1, seconds))
    log("%s under perf sched: p50 %s us" % (peer.name, r and r["p50_us"]))
    wakes, runs = hops.hops(path, hops.parties(peer.name, mine, hops.thread_ids(descendants(provider_pid))))
    return hops.report(peer.name, wakes, runs, max(1, r["requests"]) if r else 1, r and r["p50_us"])


def one_connection_hops(direct, redir, nginx):
    """wrk -c1 through each of DIRECT, REDIR, NGINX under perf sched: hops.report's rows."""
    log("one connection, hand-off by hand-off (perf sched)")
    out = tempfile.mkdtemp(prefix="redir-bench-hops-")
    try:
        return [row for p in (direct, redir, nginx)
                for row in hops_rows(p, PROVIDER_PID, os.path.join(out, p.name), min(SECONDS, 3))]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def measure_redir_only(res, tmp, certs, redir, nginx, sse_provider):
    """The phases measured once: probes, SSE, the profile."""
    if "probe" in PHASES:
        log("control API, DNS and event reader, idle then while the terminator is saturated")
        res["probe"]["idle"] = probe(redir, min(SECONDS, 5))
        res["probe"]["saturated"] = probe_saturated(redir, SECONDS)
    if "sse" in PHASES:
        log("SSE: %d streams, an event every %g ms, direct, through redir, through nginx" % (
            SSE_STREAMS, SSE_GAP_MS))
        sse_direct = Direct(sse_provider)
        sse_direct.url_host = "sse.bench.test"
        res["sse"]["direct"] = sse_run(sse_direct, certs["ca"], SECONDS)
        redir.use_provider("sse")
        res["sse"]["redir"] = sse_run(redir, redir.ca_local, SECONDS)
        redir.use_provider("fixed")
        nginx.url_host = "nginx-sse.bench.test"
        res["sse"]["nginx"] = sse_run(nginx, certs["ca"], SECONDS)
        del nginx.url_host
    if PERF:
        log("perf profile of redird under keep-alive load")
        res["perf"] = perf_profile(redir, min(SECONDS, 10), tmp)
        if os.environ.get("BENCH_PERF_NGINX") == "1":  # the same profile of nginx, side by side
            res["perf"] += ["", "nginx, same load:"] + perf_profile(redir, min(SECONDS, 10), tmp, nginx)


def no_tickets_conf(tmp):
    """#11 times FULL handshakes, but wrk offers its last session on every
    reconnect and every server here would resume it (a TLS 1.3 resumption
    skips the certificate signature). An OpenSSL configuration read by every
    process of the run (nginx, redird, mitmproxy, squid: each loads it when it
    initialises OpenSSL, before its first SSL_CTX) makes servers issue no
    TLS 1.3 ticket, so nothing can be resumed; the resumption probe shows
    0 resumed per peer. Returns its path, for OPENSSL_CONF."""
    path = os.path.join(tmp, "openssl-no-tickets.cnf")
    with open(path, "w") as f:
        f.write("openssl_conf = openssl_init\n[openssl_init]\nssl_conf = ssl_sect\n"
                "[ssl_sect]\nsystem_default = system_default_sect\n"
                "[system_default_sect]\nNumTickets = 0\n")
    return path


def main():
    if os.geteuid() != 0:
        print("bench/peers needs root (network namespace, cgroup, BPF)", file=sys.stderr)
        return 77
    for tool in ("wrk", "nginx") + (("mitmdump",) if "mitmproxy" in PEERS else ()) + \
            (("squid",) if "squid" in PEERS else ()):
        if not shutil.which(tool):
            print("bench/peers: %s is not installed: run scripts/install-deps.sh" % tool, file=sys.stderr)
            return 77
    if not os.path.exists(harness.REDIRD):
        print("bench/peers: no redird at %s: build first (scripts/build.sh)" % harness.REDIRD, file=sys.stderr)
        return 77
    tmp = tempfile.mkdtemp(prefix="redir-bench-peers-")
    os.chmod(tmp, 0o755)
    enter_namespaces(tmp)
    if not RESUMPTION:
        os.environ["OPENSSL_CONF"] = no_tickets_conf(tmp)
    certs = make_certs(tmp)
    res = {"machine": machine(), "seconds": SECONDS, "rounds": ROUNDS, "threads_flag": threads_flag(),
           "keepalive": {}, "latency1": {}, "handshakes": {}, "sse": {}, "probe": {}, "rss": {}}
    stoppers = []
    try:
        provider = start_provider(tmp, certs)
        stoppers.append(provider.stop)
        global PROVIDER_PID
        PROVIDER_PID = provider.pid
        sse_provider = start_sse_provider(tmp, certs)
        stoppers.append(sse_provider.stop)
        direct = Direct(provider)
        direct.ca = certs["ca"]
        others = []
        if "mitmproxy" in PEERS:
            others.append(Mitmproxy(tmp, certs))
            stoppers.append(others[-1].stop)
        if "squid" in PEERS:
            try:
                others.append(Squid(tmp, certs))
                stoppers.append(others[-1].stop)
            except RuntimeError as e:
                log("squid: %s" % e)
                res["squid_error"] = str(e)
        flag = res["threads_flag"]
        for threads in THREADS:
            log("== %d thread(s): starting redird%s and nginx (%d worker%s)" % (
                threads, " " + flag + " " + str(threads) if flag else " (one io thread: no threads flag)",
                threads, "s" if threads > 1 else ""))
            redir = Redir(tmp, certs, threads)
            nginx = NginxProxy(tmp, certs, threads)
            redir_b = RedirB(tmp, certs, threads) if REDIR_B else None
            try:
                measure(res, str(threads), direct, redir, nginx,
                        (others if threads == THREADS[0] else []) + ([redir_b] if redir_b else []))
                if threads == THREADS[0]:
                    measure_redir_only(res, tmp, certs, redir, nginx, sse_provider)
            finally:
                redir.stop()
                nginx.stop()
                if redir_b:
                    redir_b.stop()
    finally:
        for s in reversed(stoppers):
            try:
                s()
            except Exception as e:  # noqa: BLE001 - keep stopping the others
                log("stopping: %s" % e)
    out = os.environ.get("BENCH_JSON")
    if out:
        with open(out, "w") as f:
            json.dump(res, f, indent=1)
    rc = report(res)
    shutil.rmtree(tmp, ignore_errors=True)
    return rc


def print_rows(head, rows):
    w = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |"
    print(line(head))
    print("|" + "|".join("-" * (x + 2) for x in w) + "|")
    for r in rows:
        print(line(r))
    print()


def print_handshakes(res):
    """New TLS connections: rate, CPU per connection and how often each peer resumed."""
    rows = []
    for key, peers in sorted(res["handshakes"].items()):
        ng = peers.get("nginx")
        resumed = res.get("resumption", {}).get(key, {})
        for name, r in peers.items():
            if r is None or not r["requests"]:
                continue
            rs = resumed.get(name)
            rows.append((name, key, fmt(r["rps"]), fmt(ms(r["p50_us"])), fmt(ms(r["p99_us"])), fmt(r["errors"]),
                         fmt(r["cpu_us_per_req"]) if name != "direct" else "(provider)",
                         "%d/%d %s" % (rs["resumed"], rs["connections"], rs["version"]) if rs else "-",
                         fmt(r["rps"] / ng["rps"]) if ng and ng["rps"] else "-"))
    if rows:
        print("new TLS connections (wrk -t2 -c50, Connection: close; %s; resumed: of 20 connections offering a session)" % ("servers issue tickets: resumptions" if RESUMPTION else "no tickets: full handshakes"))
        print_rows(("peer", "threads", "conn/s", "p50 ms", "p99 ms", "errors", "CPU us/conn", "resumed",
                    "vs nginx"), rows)


def print_latency1(res):
    """One connection, one request at a time: what each peer adds over direct."""
    l1 = res["latency1"]
    d = l1.get("direct")
    rows = [(name, fmt(r["p50_us"], " us"), fmt(r["p99_us"], " us"),
             fmt(r["p50_us"] - d["p50_us"], " us") if d and name != "direct" else "-")
            for name, r in l1.items() if r]
    if rows:
        print("one connection (wrk -t1 -c1, keep-alive)")
        print_rows(("peer", "p50", "p99", "added p50"), rows)
    if res.get("hops"):
        print("\none connection, hand-off by hand-off (perf sched, after the timed rounds; us; a wake-up across "
              "CPUs wakes a halted vCPU, one on the same CPU waits for the waker to sleep)")
        print_rows(("peer", "step", "a request", "across CPUs", "p50 across", "p50 same CPU", "p50"),
                   [tuple(r) for r in res["hops"]])


def print_machine(res):
    """Where the whole machine's CPU went per keep-alive request, by party."""
    rows = []
    for key, peers in sorted(res["keepalive"].items()):
        for name, r in peers.items():
            m = r and r.get("machine")
            if m:
                rows.append((name, key, fmt(m["peer_us"]), fmt(m["provider_us"]), fmt(m["rest_us"]),
                             fmt(m["peer_us"] + m["provider_us"] + m["rest_us"]), fmt(m["idle_us"]),
                             "%d%%" % round(100 * m["busy_frac"]),
                             "%.2f / %.2f / %.2f" % (m["sw_peer"], m["sw_provider"], m["sw_rest"])))
    if rows:
        print("the machine's CPU per keep-alive request, by party (us; rest = wrk, softirq charged to no task, "
              "anything else running; busy = share of all CPUs; switches = context switches a request)")
        print_rows(("peer", "threads", "peer", "provider", "rest", "all busy", "idle", "busy",
                    "switches peer / provider / rest"), rows)


def print_paired(res):
    """The same-time rounds (redir with redir-b, redir with nginx): median CPU per request of each."""
    for what, b in (("paired", "redir-b"), ("paired_nginx", "nginx")):
        for key, rounds in sorted(res.get(what, {}).items()):
            if not rounds:
                continue
            med = lambda xs: sorted(xs)[len(xs) // 2]
            ratios = [r["a_cpu"] / r["b_cpu"] for r in rounds if r["a_cpu"] and r["b_cpu"]]
            print("redir and %s loaded at the same time (%d rounds of %d s, %s thread(s)): CPU us/req "
                  "redir %s, %s %s (median of each); redir/%s per round: %s (median %s); req/s median %s vs %s\n" % (
                      b, len(rounds), SECONDS, key, fmt(med([r["a_cpu"] for r in rounds])), b,
                      fmt(med([r["b_cpu"] for r in rounds])), b, " ".join("%.2f" % x for x in ratios),
                      fmt(med(ratios)) if ratios else "-", fmt(med([r["a_rps"] for r in rounds])),
                      fmt(med([r["b_rps"] for r in rounds]))))


def print_allocs(res):
    """Heap allocations per keep-alive request, per redird build."""
    rows = []
    for key, peers in sorted(res.get("allocs", {}).items()):
        for name, a in peers.items():
            if a:
                rows.append((name, key, "%.1f" % a["total_per_request"],
                             " ".join("%s %.1f" % kv for kv in sorted(a["per_request"].items())),
                             fmt(a["requests"])))
    if rows:
        print("heap allocations per keep-alive request (uprobes on the allocator's entry points: libc's, or tcmalloc's "
              "with operator new; wrk -t2 -c50, counted apart from the timed rounds)")
        print_rows(("peer", "threads", "allocs/req", "by call", "requests counted"), rows)


def report(res):
    print("\nbench/peers: %s" % res["machine"])
    print("%d s per measurement, %d interleaved round(s) (req/s: the best round; p99 target: the median); "
          "wrk -t2 -c50 POST %s (keep-alive)\n" % (
        res["seconds"], res["rounds"], CHAT))
    missing = []
    # Peers table.
    head = ("peer", "threads", "req/s", "p50 ms", "p99 ms", "errors", "CPU us/req", "RSS MB", "vs direct",
            "vs nginx")
    rows = []
    for key, peers in sorted(res["keepalive"].items()):
        d = peers.get("direct")
        ng = peers.get("nginx")
        for name, r in peers.items():
            label = name if name != "redir" or res["threads_flag"] else "redir (1 io thread)"
            if r is None or not r["requests"]:
                missing.append("%s at %s thread(s)" % (name, key))
                rows.append((label, key) + ("no numbers",) + ("-",) * 7)
                continue
            rows.append((label, key, fmt(r["rps"]), fmt(ms(r["p50_us"])), fmt(ms(r["p99_us"])), fmt(r["errors"]),
                         fmt(r["cpu_us_per_req"]) if name != "direct" else "(provider)",
                         fmt(r["rss_peak_mb"]) if name != "direct" else "(provider)",
                         fmt(r["rps"] / d["rps"]) if d and d["rps"] else "-",
                         fmt(r["rps"] / ng["rps"]) if ng and ng["rps"] else "-"))
    print_rows(head, rows)
    for key, peers in sorted(res.get("keepalive_rounds", {}).items()):
        if any(len(v) > 1 for v in peers.values()):
            print("keep-alive req/s of every round, %s thread(s): %s\n" % (key, "; ".join(
                "%s %s" % (n, " ".join(fmt(x) if x else "-" for x in v)) for n, v in peers.items())))
    for key, peers in sorted(res.get("keepalive_p99_rounds", {}).items()):
        if any(len(v) > 1 for v in peers.values()):
            print("keep-alive p99 ms of every round, %s thread(s) (the target takes the median): %s\n" % (key, "; ".join(
                "%s %s" % (n, " ".join(fmt(ms(x)) if x else "-" for x in v)) for n, v in peers.items())))
    for key, pc in sorted(res.get("paced", {}).items()):
        print("50 connections at %s req/s offered, %s thread(s): p99 ms of every round (the target takes the median): "
              "%s; req/s carried (median): %s\n" % (
                  fmt(pc["rate"]), key,
                  "; ".join("%s %s" % (n, " ".join(fmt(ms(x)) if x else "-" for x in v))
                            for n, v in pc["p99_rounds"].items()),
                  ", ".join("%s %s" % (n, fmt(v)) for n, v in pc["rps"].items())))
    print_machine(res)
    if "squid_error" in res:
        print("squid: not measured: %s\n" % res["squid_error"])
    print_handshakes(res)
    print_latency1(res)
    print_allocs(res)
    print_paired(res)

    t = Table()
    for key in ("1", "2"):
        peers = res["keepalive"].get(key, {})
        r, n = peers.get("redir"), peers.get("nginx")
        if r and n:
            ratio = r["rps"] / n["rps"]
            t.target("keep-alive req/s, %s thread(s)" % key, fmt(r["rps"]), "nginx %s" % fmt(n["rps"]), ratio,
                     ">= 1.0", ratio >= 1.0 and r["errors"] == 0)
    l1 = res["latency1"]
    if l1.get("redir") and l1.get("direct"):
        added = l1["redir"]["p50_us"] - l1["direct"]["p50_us"]
        nadd = l1["nginx"]["p50_us"] - l1["direct"]["p50_us"] if l1.get("nginx") else None
        t.target("added latency p50, 1 connection", fmt(added, " us"),
                 "direct %s us; nginx adds %s us" % (fmt(l1["direct"]["p50_us"]), fmt(nadd)), "-", "<= 100 us",
                 added <= 100)
    else:
        if "latency" in PHASES:
            missing.append("one-connection latency")
    for key in ("1", "2"):
        pc = res.get("paced", {}).get(key)
        if not pc:
            if "keepalive" in PHASES and "nginx" in PEERS and key in map(str, THREADS):
                missing.append("paced p99 at %s thread(s)" % key)
            continue
        r, n = pc["p99"].get("redir"), pc["p99"].get("nginx")
        if r is None or n is None:
            missing.append("paced p99 at %s thread(s)" % key)
            continue
        ratio = r / n if n else None
        # A peer that did not carry the offered load is measured saturated.
        carried = all((pc["rps"].get(x) or 0) >= 0.95 * pc["rate"] for x in ("redir", "nginx"))
        t.target("p99 at 50 connections, %s thread(s), %s req/s offered to each (median of %d rounds)" % (
                     key, fmt(pc["rate"]), len(pc["p99_rounds"]["redir"])),
                 fmt(ms(r), " ms"), "nginx %s ms (direct %s ms)" % (fmt(ms(n)), fmt(ms(pc["p99"].get("direct")))),
                 ratio, "<= 1.0, rate carried, 0 errors",
                 ratio is not None and ratio <= 1.0 and carried and pc["errors"].get("redir") == 0)
    for key in ("1", "2"):
        peers = res.get("keepalive_p99", {}).get(key, {})
        r, n = peers.get("redir"), peers.get("nginx")
        if r is not None and n is not None:
            t.target("p99 at 50 connections, %s thread(s), as fast as each answers (median of rounds)" % key,
                     fmt(ms(r), " ms"), "nginx %s ms (direct %s ms)" % (fmt(ms(n)), fmt(ms(peers.get("direct")))),
                     r / n if n else None, "stated", None)
    for key in ("1", "2"):
        peers = res["handshakes"].get(key, {})
        r, n = peers.get("redir"), peers.get("nginx")
        if r and n:
            ratio = r["rps"] / n["rps"]
            t.target("new TLS connections/s (P-256), %s thread(s)" % key, fmt(r["rps"]),
                     "nginx %s (direct %s)" % (fmt(n["rps"]), fmt(peers["direct"]["rps"]) if peers.get("direct")
                                               else "-"), ratio, ">= 0.9", ratio >= 0.9 and r["errors"] == 0)
        elif key == "1" and "handshakes" in PHASES:
            missing.append("handshakes")
    sd, sr = res["sse"].get("direct"), res["sse"].get("redir")
    if sd and sr and sd["p99_us"] is not None and sr["p99_us"] is not None:
        added = sr["p99_us"] - sd["p99_us"]
        sn = res["sse"].get("nginx")
        nginx_added = "; nginx (%d worker) adds %s ms" % (THREADS[0], fmt(ms(sn["p99_us"] - sd["p99_us"]))) \
            if sn and sn["p99_us"] is not None else ""
        t.target("SSE %d streams: added per-event delay p99" % SSE_STREAMS, fmt(ms(sr["p99_us"]), " ms"),
                 "direct %s ms%s" % (fmt(ms(sd["p99_us"])), nginx_added), "+%s ms" % fmt(ms(added)), "<= +2 ms",
                 added <= 2000)
        t.target("SSE %d streams: agent RSS" % SSE_STREAMS, fmt(sr["rss_peak_mb"], " MB"), "-", "-", "<= 150 MB",
                 sr["rss_peak_mb"] <= 150)
        errs = sum(sr["errors"].values())
        t.target("SSE %d streams: errors" % SSE_STREAMS,
                 "%d (%d/%d open in %.0f s, %d events)" % (errs, sr["opened"], sr["streams"], sr["open_seconds"],
                                                            sr["events"]),
                 "direct %d (%d/%d open in %.0f s, %d events)" % (
                     sum(sd["errors"].values()), sd["opened"], sd["streams"], sd["open_seconds"], sd["events"]),
                 "-", "0, all open", errs == 0 and sr["opened"] == sr["streams"] and
                 sr["still_open_at_end"] == sr["streams"])
    elif "sse" in PHASES:
        missing.append("SSE")
    pi, ps = res["probe"].get("idle"), res["probe"].get("saturated")
    if pi and ps and pi.get("control") and ps.get("control"):
        for what in ("control", "dns", "events"):
            a, b = ps[what], pi[what]
            ratio = a["p99_us"] / b["p99_us"] if a["p99_us"] and b["p99_us"] else None
            label = {"control": "control API", "dns": "DNS responder",
                     "events": "event reader (deny -> event)"}[what]
            t.target("%s p99, terminator saturated (%s req/s)" % (label, fmt(ps.get("load_rps"))),
                     "%s ms (%d answers, %d errors)" % (fmt(ms(a["p99_us"])), a["count"], a["errors"]),
                     "idle %s ms" % fmt(ms(b["p99_us"])), ratio, "answers, 0 errors, p99 < 100 ms",
                     a["count"] > 0 and a["errors"] == 0 and (a["p99_us"] or 1e9) < 100000)
    elif "probe" in PHASES:
        missing.append("control/DNS probe")
    idle = res["rss"].get("redir_idle_mb", {}).get("1")
    r1 = res["keepalive"].get("1", {}).get("redir")
    n1 = res["keepalive"].get("1", {}).get("nginx")
    if idle is not None and r1:
        t.target("redird RSS idle / under keep-alive load", "%s / %s MB" % (fmt(idle), fmt(r1["rss_peak_mb"])),
                 "nginx 1 worker under load %s MB" % fmt(n1["rss_peak_mb"]) if n1 else "-", "-", "stated", None)
    if r1 and n1 and r1["cpu_us_per_req"] and n1["cpu_us_per_req"]:
        t.target("CPU per request (1 thread)", fmt(r1["cpu_us_per_req"], " us"),
                 "nginx %s us" % fmt(n1["cpu_us_per_req"]), r1["cpu_us_per_req"] / n1["cpu_us_per_req"],
                 "stated", None)
    t.print()
    if res.get("perf"):
        print("\nwhere redird's time goes (perf, cpu-clock, %s load):" % (
            "new-connection" if os.environ.get("BENCH_PERF_LOAD") == "handshakes" else "keep-alive"))
        for l in res["perf"]:
            print("  " + l)
    fails = [r for r in t.rows if r[5] == "FAIL"]
    print()
    if missing:
        print("NO NUMBERS: " + ", ".join(missing))
    print("targets: %d PASS, %d FAIL" % (sum(1 for r in t.rows if r[5] == "PASS"), len(fails)))
    if missing:
        return 2
    if CHECK_ONLY:
        return 0
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
