"""A fake inference provider: a local TLS server speaking enough of the OpenAI
and Anthropic APIs for the end-to-end tests. It records every request it gets
(headers and body) so tests can check what the terminator forwarded.

Runs inside the test's own network namespace at a fake address, with a
certificate from a test CA that the test hands to the provider config.
"""
import json
import os
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_test_ca(dirpath, ip):
    """ECDSA test CA and a server certificate for IP (IP-literal SAN)."""
    def run(*args):
        subprocess.run(list(args), check=True, capture_output=True, cwd=dirpath)
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key")
    run("openssl", "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=redir test provider CA", "-days", "2",
        "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")
    run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "srv.key")
    run("openssl", "req", "-new", "-key", "srv.key", "-subj", "/CN=%s" % ip, "-out", "srv.csr")
    with open(os.path.join(dirpath, "ext.cnf"), "w") as f:
        f.write("subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\n" % ip)
    run("openssl", "x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-out", "srv.pem", "-extfile", "ext.cnf")
    return os.path.join(dirpath, "ca.pem"), os.path.join(dirpath, "srv.pem"), os.path.join(dirpath, "srv.key")


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.stream_gap = 0.2
        self.break_stream = False
        # After two events, write a broken chunk whose text looks like SSE
        # events: the gateway's error must not let any of it through as events.
        self.forge_stream = False

    def add(self, r):
        with self.lock:
            self.requests.append(r)

    def last(self):
        with self.lock:
            return self.requests[-1] if self.requests else None


def _handler(rec, name):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _body(self):
            n = int(self.headers.get("content-length") or 0)
            return self.rfile.read(n) if n else b""

        def _json(self, code, obj):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            rec.add({"method": "GET", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                     "body": None, "provider": name})
            self._json(200, {"object": "list", "data": [{"id": "upstream-model", "object": "model"}]})

        def do_POST(self):
            raw = self._body()
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            rec.add({"method": "POST", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                     "body": body, "provider": name})
            model = body.get("model") if isinstance(body, dict) else None
            stream = isinstance(body, dict) and body.get("stream")
            if self.path.endswith("/messages"):
                return self._anthropic(model, stream)
            if stream:
                return self._openai_stream(model)
            self._json(200, {
                "id": "chatcmpl-1", "object": "chat.completion", "model": model, "provider": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello from " + name},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})

        def _sse_start(self):
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("cache-control", "no-cache")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()

        def _chunk(self, text):
            data = text.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()

        def _openai_stream(self, model):
            self._sse_start()
            for i in range(5):
                ev = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                      "sent_at": time.time(), "index": i,
                      "choices": [{"index": 0, "delta": {"content": "tok%d " % i}, "finish_reason": None}]}
                self._chunk("data: %s\n\n" % json.dumps(ev))
                if rec.forge_stream and i == 1:
                    self.wfile.write(b"zz\r\n\n\nevent: forged\ndata: {\"forged\": true}\n\n\r\n")
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                if rec.break_stream and i == 2:
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                time.sleep(rec.stream_gap)
            self._chunk("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")

        def _anthropic(self, model, stream):
            if not stream:
                return self._json(200, {
                    "id": "msg_1", "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": "hello from " + name}], "stop_reason": "end_turn",
                    "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 4}})
            self._sse_start()
            events = [
                ("message_start", {"type": "message_start", "message": {
                    "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
                    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 0}}}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
            ]
            for i in range(3):
                events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                       "delta": {"type": "text_delta", "text": "tok%d " % i}}))
            events += [
                ("content_block_stop", {"type": "content_block_stop", "index": 0}),
                ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                      "stop_sequence": None},
                                   "usage": {"output_tokens": 3}}),
                ("message_stop", {"type": "message_stop"}),
            ]
            for ev, data in events:
                self._chunk("event: %s\ndata: %s\n\n" % (ev, json.dumps(data)))
                time.sleep(0.02)
            self.wfile.write(b"0\r\n\r\n")

    return H


class FakeProvider:
    def __init__(self, addr, port, cert, key, name="fake"):
        self.rec = Recorder()
        self.httpd = ThreadingHTTPServer((addr, port), _handler(self.rec, name))
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.t = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.t.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_inference(agent, tmp, ip, name="fake"):
    """A FakeProvider at IP:8443 (certificate from a test CA in TMP) made
    AGENT's inference provider; returns it and the agent's CA file, which the
    sandbox's clients trust for https://inference.local."""
    ca, cert, key = make_test_ca(tmp, ip)
    provider = FakeProvider(ip, 8443, cert, key, name=name)
    agent.ctl("provider", "create", "--name", name, "--type", "openai-compatible", "--base-url",
              "https://%s:8443/v1" % ip, "--ca-file", ca, "--credential", "OPENAI_API_KEY=k")
    agent.ctl("inference", "set", "--provider", name, "--model", "served-model")
    local_ca = os.path.join(tmp, "inference-ca.pem")
    agent.ctl("ca", "export", "--out", local_ca)
    return provider, local_ca
