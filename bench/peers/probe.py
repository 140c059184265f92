"""Latency probe for bench/peers: for --seconds, times requests to the agent's
control API (one {"cmd":"policy.list"} per connection, as redirctl does) and
queries for inference.local sent to any resolver address (the sandbox's DNS is
redirected to the agent's responder). --control runs outside the sandbox
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--control", help="redird control socket")
    ap.add_argument("--resolver", help="any resolver address: the query is redirected")
    ap.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args()
    until = time.monotonic() + a.seconds
    out = {}
    ts = []
    if a.control:
        ts.append(threading.Thread(target=control_loop, args=(a.control, until, 0.02, out)))
    if a.resolver:
        ts.append(threading.Thread(target=dns_loop, args=(a.resolver, until, 0.01, out)))
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
