"""SSE load client for bench/peers: holds --streams concurrent streamed chat
completions open, and once all are streaming measures, for --seconds, the
delay of every event (read time minus the provider's CLOCK_MONOTONIC stamp).
Prints one JSON line: streams opened, events, delay percentiles, errors."""
import argparse
import asyncio
import json
import resource
import ssl
import time

BODY = json.dumps({"model": "client-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()


class Run:
    def __init__(self):
        self.opened = 0
        self.errors = {}
        self.delays = []
        self.measuring = False
        self.stop = asyncio.Event()

    def error(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def stream(run, host, port, sni, ctx, gate, all_open, auth):
    writer = None
    try:
        async with gate:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=sni), 30)
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
                         b"accept: text/event-stream\r\nauthorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
                         % (sni.encode(), auth.encode(), len(BODY), BODY))
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        if not head.startswith(b"HTTP/1.1 200"):
            run.error("status " + head.split(b"\r\n")[0].decode(errors="replace"))
            return
        run.opened += 1
        if run.opened == all_open[0]:
            all_open[1].set()
        raw = b""   # chunked transfer coding, not yet decoded
        body = b""  # decoded event-stream bytes, not yet a whole line
        while not run.stop.is_set():
            data = await reader.read(65536)
            now = time.monotonic()
            if not data:
                if not run.stop.is_set():
                    run.error("stream ended early")
                return
            raw += data
            while True:  # decode every complete chunk in RAW
                eol = raw.find(b"\r\n")
                if eol < 0:
                    break
                size = int(raw[:eol].split(b";")[0], 16)
                if len(raw) < eol + 2 + size + 2:
                    break
                body += raw[eol + 2:eol + 2 + size]
                raw = raw[eol + 2 + size + 2:]
                if size == 0:
                    if not run.stop.is_set():
                        run.error("stream ended early")
                    return
            *lines, body = body.split(b"\n")
            for line in lines:
                if not line.startswith(b"data: {"):
                    if line.startswith(b"event: error"):
                        run.error("error event")
                    continue
                try:
                    sent = json.loads(line[6:])["sent"]
                except (ValueError, KeyError):
                    run.error("unparseable event")
                    continue
                if run.measuring:
                    run.delays.append(now - sent)
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError,
            ValueError) as e:
        if not run.stop.is_set():
            run.error(type(e).__name__)
    finally:
        if writer:
            writer.transport.abort()


def pct(sorted_values, p):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p / 100.0))]


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True, help="name or address to connect to")
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--sni", required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--gap-ms", type=float, default=250)
    # Generous: opening 1,000 TLS streams on a loaded 2-core machine takes tens of
    # seconds even direct; the delay is measured once all are open.
    ap.add_argument("--open-timeout", type=float, default=150)
    ap.add_argument("--auth", default="sk-client-placeholder", help="the bearer this client sends")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = ssl.create_default_context(cafile=a.cafile)
    run = Run()
    gate = asyncio.Semaphore(64)  # handshakes in flight while opening
    all_open = [a.streams, asyncio.Event()]
    t0 = time.monotonic()
    tasks = [asyncio.create_task(stream(run, a.host, a.port, a.sni, ctx, gate, all_open, a.auth)) for _ in range(a.streams)]
    try:
        await asyncio.wait_for(all_open[1].wait(), a.open_timeout)
    except asyncio.TimeoutError:
        run.error("not all streams opened in %.0f s" % a.open_timeout)
    open_s = time.monotonic() - t0
    held = run.opened
    run.measuring = True
    await asyncio.sleep(a.seconds)
    run.measuring = False
    still_open = sum(1 for t in tasks if not t.done())
    run.stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    d = sorted(run.delays)
    expected = held * a.seconds * 1000.0 / a.gap_ms
    print(json.dumps({
        "streams": a.streams, "opened": held, "still_open_at_end": still_open, "open_seconds": round(open_s, 2),
        "events": len(d), "events_expected": int(expected),
        "p50_us": round(pct(d, 50) * 1e6) if d else None, "p99_us": round(pct(d, 99) * 1e6) if d else None,
        "max_us": round(d[-1] * 1e6) if d else None, "errors": run.errors}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
