"""Latency probe for bench/peers: for --seconds, times requests to the agent's
control API (one {"cmd":"policy.list"} per connection, as redirctl does) and
queries for inference.local sent to any resolver address (the sandbox's DNS is
redirected to the agent's responder), and the event reader: denied connect()s
made in the sandbox (--deny) against when each shows up on the agent's event
stream (--follow). --control runs outside the sandbox
(the agent refuses control connections from sandboxed cgroups), --resolver
inside it. Prints one JSON line with p50/p99 and errors of each given."""
import argparse
import json
import os
import socket
import struct
import threading
import time


def pct(v, p):
    v = sorted(v)
    return round(v[min(len(v) - 1, int(len(v) * p / 100.0))] * 1e6) if v else None


def control_loop(path, until, interval, out):
    lat, errors = [], 0
    while time.monotonic() < until:
        t = time.monotonic()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(path)
                s.sendall(b'{"cmd":"policy.list"}\n')
                with s.makefile("rb") as f:
                    reply = f.readline()
                if not json.loads(reply).get("ok", True):
                    errors += 1
                else:
                    lat.append(time.monotonic() - t)
        except (OSError, ValueError):
            errors += 1
        time.sleep(interval)
    out["control"] = {"count": len(lat), "p50_us": pct(lat, 50), "p99_us": pct(lat, 99), "errors": errors}


def dns_query(qid, name):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", 1, 1)


def dns_loop(resolver, until, interval, out):
    lat, errors = [], 0
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    qid = 0
    while time.monotonic() < until:
        qid = (qid + 1) & 0xFFFF
        t = time.monotonic()
        try:
            s.sendto(dns_query(qid, "inference.local"), (resolver, 53))
            while True:
                r = s.recv(4096)
                if struct.unpack(">H", r[:2])[0] == qid:
                    break
            rcode = r[3] & 0xF
            ancount = struct.unpack(">H", r[6:8])[0]
            if rcode == 0 and ancount >= 1:
                lat.append(time.monotonic() - t)
            else:
                errors += 1
        except OSError:
            errors += 1
        time.sleep(interval)
    out["dns"] = {"count": len(lat), "p50_us": pct(lat, 50), "p99_us": pct(lat, 99), "errors": errors}


def deny_loop(addr, until, interval, out):
    """Denied connect()s, one port each (the audit rate limit keys on the port): when each was made."""
    sent, port = [], 20000
    while time.monotonic() < until:
        port += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            t = time.monotonic()
            try:
                s.connect((addr, port))
                sent.append([port, t, "connected"])  # the policy should have refused it
            except OSError as e:
                sent.append([port, t, "EPERM" if e.errno == 1 else str(e)])
        time.sleep(interval)
    out["deny_sent"] = sent


def follow_loop(path, addr, until, out):
    """Follows the agent's event stream; when each denied connect() to ADDR showed up, by port."""
    seen = {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(b'{"cmd":"events","count":0,"follow":true}\n')
        s.settimeout(0.2)
        buf = b""
        while time.monotonic() < until:
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            t = time.monotonic()
            *lines, buf = (buf + data).split(b"\n")
            for line in lines:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("dst") == addr and ev.get("verdict") == "deny":
                    seen[str(ev.get("port"))] = t
    out["deny_seen"] = seen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--control", help="redird control socket")
    ap.add_argument("--resolver", help="any resolver address: the query is redirected")
    ap.add_argument("--deny", help="inside the sandbox: make denied connect()s to this address")
    ap.add_argument("--follow", help="outside: with --deny-addr, follow the events on this control socket")
    ap.add_argument("--deny-addr", help="the address --deny dials")
    ap.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args()
    until = time.monotonic() + a.seconds
    out = {}
    ts = []
    if a.control:
        ts.append(threading.Thread(target=control_loop, args=(a.control, until, 0.02, out)))
    if a.resolver:
        ts.append(threading.Thread(target=dns_loop, args=(a.resolver, until, 0.01, out)))
    if a.deny:
        ts.append(threading.Thread(target=deny_loop, args=(a.deny, until - 0.5, 0.05, out)))
    if a.follow:
        ts.append(threading.Thread(target=follow_loop, args=(a.follow, a.deny_addr, until + 0.5, out)))
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
