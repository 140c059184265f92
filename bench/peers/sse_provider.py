"""Pacing SSE fake provider for bench/peers: a TLS HTTP/1.1 server that answers
every POST with an OpenAI-style event stream, one event every --gap-ms, each
stamped with the CLOCK_MONOTONIC time it was written (the client on the same
machine subtracts it from the time it reads the event)."""
import argparse
import asyncio
import json
import random
import resource
import ssl
import time


async def read_request(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    fields = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    length = int(fields.get(b"content-length", b"0"))
    if length:
        await reader.readexactly(length)
    return fields


def chunk(text):
    data = text.encode()
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve(reader, writer, gap, max_events, credential):
    try:
        fields = await read_request(reader)
        if credential and fields.get(b"authorization") != b"Bearer " + credential.encode():
            writer.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        # Streams start at random phases so the events of 1,000 streams are spread over each gap.
        await asyncio.sleep(random.random() * gap)
        nxt = time.monotonic()
        for i in range(max_events):
            ev = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "m", "index": i,
                  "sent": time.monotonic(), "choices": [{"index": 0, "delta": {"content": "tok "}}]}
            writer.write(chunk("data: %s\n\n" % json.dumps(ev, separators=(",", ":"))))
            await writer.drain()
            nxt += gap
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        writer.write(chunk("data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--gap-ms", type=float, default=250)
    ap.add_argument("--max-events", type=int, default=100000)
    ap.add_argument("--credential", help="401 unless the request carries Authorization: Bearer CREDENTIAL")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    server = await asyncio.start_server(lambda r, w: serve(r, w, a.gap_ms / 1000.0, a.max_events, a.credential),
                                        a.addr, a.port, ssl=ctx, backlog=4096)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
