"""bench/peers/trace.py (#11): the system calls of ONE keep-alive request, with
timestamps, through redird and through nginx (and the provider behind each),
so the two critical paths can be compared call by call. Same namespace, peers
and certificates as peers.py; wrk -t1 -c1 for a few seconds under
`perf trace`, then one request from the middle of the trace is printed for
each proxy (time since the request arrived, duration, thread, call).

Then, untraced, per request and per peer: p50, CPU time of each thread
(schedstat), voluntary context switches, and system calls by name.

Usage (root): REDIR_BUILD=build python3 bench/peers/trace.py
Knobs: TRACE_SECONDS (2), TRACE_ROUNDS (untraced rounds, 2), TRACE_KEEP=DIR
(raw traces and profiles kept there), TRACE_SKIP=1 (no perf trace),
TRACE_PROFILE=1 (+ a perf profile of each proxy at one connection),
TRACE_SCHED=1 (+ direct, redir and nginx under `perf sched record`: each
request's hand-offs, wake-ups local or across CPUs, and runs; hops.py),
BENCH_REDIR_B=DIR (another build's redird as peer redir-b, A/B),
TRACE_PROBE=1 (print redird log lines with PROBE: ad-hoc instrumentation).
"""
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peers  # noqa: E402
from peers import (Direct, NginxProxy, Redir, RedirB, descendants, enter_namespaces, log, make_certs, no_tickets_conf,  # noqa: E402
                   start_provider, wrk)

SECONDS = int(os.environ.get("TRACE_SECONDS", "2"))
LINE = re.compile(r"^\s*([\d.]+) \(\s*([\d.]+) ms\): (\S+?)/(\d+) (.*)$")


def trace(peer, provider, out):
    """perf trace of PEER's and the provider's processes during wrk -c1."""
    pids = descendants(peer.pid) + descendants(provider.pid)
    data = os.path.join(out, "%s.trace" % peer.name)
    tr = subprocess.Popen(["perf", "trace", "-o", data, "-p", ",".join(map(str, pids))],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # perf attaches
    r = wrk(peer, 1, 1, SECONDS)
    time.sleep(0.2)
    tr.terminate()
    tr.wait(timeout=30)
    return data, r


CALL = re.compile(r"^\s*([\d.]+) \(\s*([\d.]*) ms\): (\S+?)/(\d+) (\w+)\(fd: (\d+)<socket[^)]*\).*?= (-?\d+)")


def segments(path, tid):
    """Medians over every request of the proxy thread TID's critical path, in us:
    the client's request read -> the provider request's send starts -> the
    answer read -> the sandbox's answer send starts -> the next request read."""
    import statistics
    ev = []
    for l in open(path, errors="replace"):
        m = CALL.match(l)
        if m and int(m.group(4)) == tid:
            ev.append((float(m.group(1)) * 1000, float(m.group(2) or 0) * 1000, m.group(5), int(m.group(6)),
                       int(m.group(7))))
    READ, WRITE = ("read", "recvfrom", "recvmsg"), ("write", "sendto", "sendmsg")
    reads = {}
    for t, d, c, fd, r in ev:
        if c in READ and r > 0:
            reads.setdefault(fd, []).append(r)
    if len(reads) < 2:
        return None
    by_size = sorted(reads, key=lambda f: statistics.median(reads[f]))
    cfd, ufd = by_size[0], by_size[-1]  # the request is smaller than the answer
    a = b = d_ = e = None
    out = {"request read -> provider send": [], "provider send -> answer read": [],
           "answer read -> sandbox send": [], "sandbox send done -> next request read": []}
    for t, d, c, fd, r in ev:
        if c in READ and r > 0 and fd == cfd:
            a = t + d
            if e is not None:
                out["sandbox send done -> next request read"].append(a - e)
        elif c in WRITE and fd == ufd and a is not None:
            b = t
            out["request read -> provider send"].append(b - a)
        elif c in READ and r > 0 and fd == ufd and b is not None:
            d_ = t + d
            out["provider send -> answer read"].append(d_ - b)
        elif c in WRITE and fd == cfd and d_ is not None:
            e = t + d
            out["answer read -> sandbox send"].append(t - d_)
            a = b = d_ = None
    return {k: statistics.median(v) for k, v in out.items() if v}


def one_request(path, tid):
    """The calls of TID (the proxy's thread) and the provider around one
    request from the middle of the trace: [(t_us, dur_us, comm/tid, call)]."""
    calls = []
    for l in open(path, errors="replace"):
        m = LINE.match(l)
        if m:
            calls.append((float(m.group(1)) * 1000, float(m.group(2)) * 1000, "%s/%s" % (m.group(3), m.group(4)),
                          int(m.group(4)), m.group(5)))
    mine = [i for i, c in enumerate(calls) if c[3] == tid]
    if not mine:
        return []
    mid = mine[len(mine) // 2]
    return calls[mid:mid + 40]


def busiest_thread(pid):
    """The thread of PID's tree that made the most system calls: the io thread / worker."""
    stats = thread_stats(pid)
    best = max(stats.items(), key=lambda kv: kv[1][0]) if stats else None
    return int(best[0].split("/")[1]) if best else pid


def thread_stats(pid):
    """{comm/tid: (ns on CPU, voluntary context switches)} of PID's process tree."""
    out = {}
    for t, d in peers.tasks(descendants(pid)):
        try:
            ns = int(open(d + "/schedstat").read().split()[0])
            st = open(d + "/status").read()
            comm = re.search(r"^Name:\s*(\S+)", st, re.M).group(1)
            sw = int(re.search(r"^voluntary_ctxt_switches:\s*(\d+)", st, re.M).group(1))
        except (OSError, AttributeError, IndexError, ValueError):
            continue
        out["%s/%s" % (comm, t)] = (ns, sw)
    return out


def syscall_counter(peer):
    """Starts counting PEER's system calls by name; returns a function that stops and returns them."""
    names = ("epoll_wait", "recvfrom", "recvmsg", "sendto", "sendmsg", "write", "read", "epoll_ctl",
             "timerfd_settime", "mprotect", "futex", "getsockopt")
    out = tempfile.mktemp(prefix="redir-trace-stat-")
    ev = ",".join("syscalls:sys_enter_" + n for n in names)
    st = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out, "-e", ev, "-p",
                           ",".join(map(str, descendants(peer.pid)))], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    time.sleep(0.3)

    def stop():
        st.send_signal(2)
        st.wait(timeout=30)
        counts = {}
        for l in open(out, errors="replace"):
            f = l.strip().split(",")
            if len(f) > 2 and f[2].startswith("syscalls:sys_enter_") and f[0].isdigit():
                counts[f[2][len("syscalls:sys_enter_"):]] = int(f[0])
        os.unlink(out)
        return counts
    return stop


def show(name, rows):
    print("\n== %s: one keep-alive request (t in us from the first call shown; dur in us)" % name)
    t0 = rows[0][0] if rows else 0
    for t, dur, who, _tid, call in rows:
        print("%9.1f %8.1f  %-22s %s" % (t - t0, dur, who, call[:150]))


def main():
    tmp = tempfile.mkdtemp(prefix="redir-bench-trace-")
    os.chmod(tmp, 0o755)
    enter_namespaces(tmp)
    os.environ["OPENSSL_CONF"] = no_tickets_conf(tmp)
    certs = make_certs(tmp)
    out = os.environ.get("TRACE_KEEP") or tmp
    os.makedirs(out, exist_ok=True)
    provider = start_provider(tmp, certs)
    redir = nginx = None
    try:
        redir = Redir(tmp, certs, 1)
        nginx = NginxProxy(tmp, certs, 1)
        redir_b = RedirB(tmp, certs, 1) if peers.REDIR_B else None
        measured = [p for p in (redir, redir_b, nginx) if p]
        for p in measured:
            wrk(p, 1, 1, 1)  # warm-up: pooled provider connection, leaf cache
        for p in (redir, nginx) if os.environ.get("TRACE_SKIP") != "1" else ():
            path, r = trace(p, provider, out)
            log("%s under perf trace: %s req in %d s, p50 %s us" % (
                p.name, r and r["requests"], SECONDS, r and r["p50_us"]))
            tid = busiest_thread(p.pid)
            show(p.name, one_request(path, tid))
            print("critical path, medians over the run (under perf trace: every call costs more):")
            for k, v in (segments(path, tid) or {}).items():
                print("  %-40s %7.1f us" % (k, v))
        if os.environ.get("TRACE_PROFILE") == "1":
            for p in (redir, nginx):
                data = os.path.join(out, "%s.perf" % p.name)
                rec = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "10000", "-g", "-o", data,
                                        "-p", ",".join(map(str, descendants(p.pid)))], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                wrk(p, 1, 1, SECONDS)
                rec.send_signal(2)
                rec.wait(timeout=60)
                rep = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", os.environ.get("TRACE_SORT", "dso,sym"),
                                      "--stdio", "-g", "none", "--percent-limit", "0.7"],
                                     capture_output=True, text=True).stdout
                print("\n== %s: where one connection's CPU goes\n%s" % (p.name, "\n".join(
                    l for l in rep.splitlines() if l.strip() and not l.startswith("#"))))
        if os.environ.get("TRACE_SCHED") == "1":
            rows = []
            for p in (Direct(provider), redir, nginx):
                rows += peers.hops_rows(p, provider.pid, os.path.join(out, "%s.sched" % p.name), SECONDS)
            print("\none connection, hand-off by hand-off (perf sched; us; wake-up = from the wake-up to the wakee "
                  "running: across CPUs a halted vCPU is woken, on the same CPU the waker finishes first)")
            peers.print_rows(("peer", "step", "a request", "across CPUs", "p50 across", "p50 same CPU", "p50"), rows)
        for rnd in range(int(os.environ.get("TRACE_ROUNDS", "2"))):
            for p in measured:
                before = thread_stats(p.pid)
                counts = syscall_counter(p)
                r = wrk(p, 1, 1, SECONDS)
                calls = counts()
                after = thread_stats(p.pid)
                n = max(1, r["requests"]) if r else 1
                busy = {t: (after[t][0] - before[t][0], after[t][1] - before[t][1]) for t in after if t in before}
                desc = ", ".join("%s: %.1f us on CPU, %.2f switches" % (t, ns / 1000 / n, sw / n)
                                 for t, (ns, sw) in sorted(busy.items(), key=lambda kv: -kv[1][0])[:3])
                log("%s without trace: p50 %s us; per request %s; system calls %s" % (
                    p.name, r and r["p50_us"], desc,
                    " ".join("%s %.2f" % (k, v / n) for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v)))
    finally:
        if redir and os.environ.get("TRACE_PROBE") == "1":
            print("".join(l for l in open(redir.agent.log, errors="replace") if "PROBE" in l))
        for p in (redir, redir_b, nginx):
            if p:
                p.stop()
        provider.stop()
    print("\nraw traces: %s" % out)


if __name__ == "__main__":
    sys.exit(main())
