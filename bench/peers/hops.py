"""bench/peers/hops.py (#11): where one connection's latency goes, hand-off by
hand-off, from a `perf sched record` of the whole machine during wrk -c1.

A request at one connection is a chain: wrk wakes the proxy, the proxy wakes
the provider, the provider wakes the proxy, the proxy wakes wrk (direct: wrk
and the provider only). Each link costs the wakee's wake-up (from the
wake-up event to its first instruction: a vCPU that halted must be woken by
the host, one already running only waits for the waker to sleep) and each
party its run from there to the wake-up it sends. The sums of those medians
along the chain add up to about the latency wrk sees (under perf sched, a
few us more an event).
"""
import os
import re
import statistics
import subprocess
import time

LINE = re.compile(r"\s*([\d.]+)\s+\[(\d+)\]\s+(\S+)\s+(.*)$")
TID = re.compile(r"\[(\d+)(?:/\d+)?\]")


def record(path, run):
    """RUN() with the whole machine under `perf sched record` into PATH; RUN's result."""
    rec = subprocess.Popen(["perf", "sched", "record", "-a", "-o", path], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # perf attaches
    try:
        return run()
    finally:
        rec.send_signal(2)
        rec.wait(timeout=60)


def parties(proxy_name, proxy_tids, provider_tids):
    """who(tid, comm) for hops(): the proxy's threads, the provider's, wrk."""
    def who(tid, comm):
        if tid in provider_tids:
            return "provider"
        if tid in proxy_tids:
            return proxy_name
        return "wrk" if comm == "wrk" else None
    return who


def thread_ids(pids):
    """Every thread id of PIDS (processes gone meanwhile are skipped)."""
    out = set()
    for p in pids:
        try:
            out.update(int(t) for t in os.listdir("/proc/%d/task" % p))
        except OSError:
            pass
    return out


def events(path):
    """(kind, start us, cpu, (tid, comm), other): 'wake' (other = the wakee's
    (tid, comm)) and 'run' (a stretch on a CPU, other = its end), in time order."""
    out = subprocess.run(["perf", "sched", "timehist", "-i", path, "-w"], capture_output=True, text=True).stdout
    ev = []
    for l in out.splitlines():
        m = LINE.match(l)
        t_id = m and TID.search(m.group(3))
        if not t_id:
            continue
        t, cpu, rest = float(m.group(1)) * 1e6, int(m.group(2)), m.group(4)
        tid = (int(t_id.group(1)), m.group(3).split("[")[0])
        woke = re.search(r"awakened: ([^\s\[]*)\[(\d+)", rest)
        if woke:
            ev.append(("wake", t, cpu, tid, (int(woke.group(2)), woke.group(1))))
            continue
        f = rest.split()
        try:
            run = float(f[2]) * 1000
        except (IndexError, ValueError):
            continue
        ev.append(("run", t - run, cpu, tid, t))
    ev.sort(key=lambda e: e[1])
    return ev


def hops(path, who):
    """Hand-offs between the parties WHO names (who(tid, comm) -> a name, or
    None for a task that is not one): ({"wrk -> proxy": {"local": [us...],
    "cross": [us...]}}, {"proxy until it wakes provider": [us...]})."""
    wakes, runs = {}, {}
    waiting = {}   # wakee tid -> (time of the wake-up, waker tid, the waker's CPU)
    running = {}   # tid -> when its current stretch began after a counted wake-up
    role = {}      # tid -> the party's name, or None
    for kind, t, cpu, task, other in events(path):
        for tid, comm in (task, other) if kind == "wake" else (task,):
            if tid not in role:
                role[tid] = who(tid, comm)
        tid = task[0]
        if kind == "wake":
            wakee = other[0]
            if not role[tid] or not role[wakee]:
                continue
            if running.get(tid) is not None:
                runs.setdefault("%s until it wakes %s" % (role[tid], role[wakee]), []).append(t - running[tid])
                running[tid] = None
            waiting[wakee] = (t, tid, cpu)
        elif tid in waiting:
            woke_at, waker, waker_cpu = waiting.pop(tid)
            where = "local" if waker_cpu == cpu else "cross"
            wakes.setdefault("%s -> %s" % (role[waker], role[tid]), {"local": [], "cross": []})[where].append(
                t - woke_at)
            running[tid] = t
    return wakes, runs


def report(name, wakes, runs, requests, p50):
    """The table's rows for one peer: every hand-off a request and every run
    (a hand-off to a party still running is no wake-up: fewer than 1.00 a
    request), then their sum against wrk's p50."""
    med = lambda xs: statistics.median(xs) if xs else None
    rows = []
    path_us = 0.0
    for hop, by in sorted(wakes.items()):
        n = len(by["local"]) + len(by["cross"])
        if n < requests / 4:
            continue
        every = by["local"] + by["cross"]
        path_us += med(every) * n / requests
        rows.append((name, "wake-up " + hop, "%.2f" % (n / requests), "%d%%" % round(100 * len(by["cross"]) / n),
                     "%.0f" % (med(by["cross"]) or 0), "%.0f" % (med(by["local"]) or 0), "%.0f" % med(every)))
    for what, xs in sorted(runs.items()):
        if len(xs) < requests / 4:
            continue
        path_us += med(xs) * len(xs) / requests
        rows.append((name, "run: " + what, "%.2f" % (len(xs) / requests), "-", "-", "-", "%.0f" % med(xs)))
    woken = [hop for hop, by in wakes.items()
             if hop.endswith(" -> " + name) and len(by["local"]) + len(by["cross"]) >= requests / 4]
    if name != "direct" and not woken:
        # A thread that polls for its work (redird's io threads) is running
        # when its input comes: no wake-up into it, so none of its runs
        # starts at one and the sum leaves them out.
        rows.append((name, "(%s was not woken: it polled for its input; its runs are not in the sum)" % name,
                     "", "", "", "", ""))
    rows.append((name, "sum (each step times how often it happens) / wrk's p50", "", "", "", "",
                 "%.0f / %s" % (path_us, p50)))
    return rows
