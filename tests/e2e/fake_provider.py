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
        # OpenAI's final chunk with empty choices and the usage, sent only when
        # the request asks (stream_options.include_usage), as OpenAI does.
        # Off: a provider that never reports usage in streams.
        self.stream_usage = False

    def add(self, r):
        with self.lock:
            self.requests.append(r)

    def last(self):
        with self.lock:
            return self.requests[-1] if self.requests else None


# Token counts the fake reports, one pair per answer kind (distinct, so a test
# knows which answer was counted).
USAGE = {
    "chat": (3, 4), "chat_stream": (11, 5), "anthropic": (3, 4), "anthropic_stream": (3, 3),
    "responses": (13, 6), "responses_stream": (17, 2),
}


def _echo_of(body):
    """The text after "ECHO:" in the request's last user message (chat
    messages, Anthropic messages or Responses input), else None: the model
    saying what the sandbox asked it to say."""
    if not isinstance(body, dict):
        return None
    text = body.get("input") if isinstance(body.get("input"), str) else None
    for m in body.get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            text = m["content"]
    if text and text.startswith("ECHO:"):
        return text[len("ECHO:"):]
    return None


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
            self.echo = _echo_of(body)
            opts = body.get("stream_options") if isinstance(body, dict) else None
            self.include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
            if self.path.endswith("/messages"):
                return self._anthropic(model, stream)
            if self.path.endswith("/responses"):
                return self._responses(model, stream)
            if stream:
                return self._openai_stream(model)
            p, c = USAGE["chat"]
            self._json(200, {
                "id": "chatcmpl-1", "object": "chat.completion", "model": model, "provider": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": self.echo or "hello from " + name},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}})

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
                text = (self.echo if i == 0 else "") if self.echo is not None else "tok%d " % i
                ev = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model,
                      "sent_at": time.time(), "index": i,
                      "choices": [{"index": 0, "delta": dict({"content": text}, **({"role": "assistant"} if i == 0 else {})),
                                   "finish_reason": "stop" if i == 4 else None}]}
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
            if rec.stream_usage and self.include_usage:
                p, c = USAGE["chat_stream"]
                ev = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": model, "sent_at": time.time(),
                      "choices": [], "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}}
                self._chunk("data: %s\n\n" % json.dumps(ev))
            self._chunk("data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")

        def _responses(self, model, stream):
            text = self.echo if self.echo is not None else "hello from " + name
            done = {"id": "resp_1", "object": "response", "status": "completed", "model": model,
                    "output": [{"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                                "content": [{"type": "output_text", "text": text, "annotations": []}]}]}
            if not stream:
                p, c = USAGE["responses"]
                done["usage"] = {"input_tokens": p, "output_tokens": c, "total_tokens": p + c}
                return self._json(200, done)
            p, c = USAGE["responses_stream"]
            self._sse_start()
            created = dict(done, status="in_progress", output=[], usage=None)
            events = [("response.created", {"type": "response.created", "response": created}),
                      ("response.output_text.delta", {"type": "response.output_text.delta", "item_id": "msg_1",
                                                      "output_index": 0, "content_index": 0, "delta": text}),
                      ("response.completed", {"type": "response.completed", "response": dict(
                          done, usage={"input_tokens": p, "output_tokens": c, "total_tokens": p + c})})]
            for ev, data in events:
                self._chunk("event: %s\ndata: %s\n\n" % (ev, json.dumps(data)))
            self.wfile.write(b"0\r\n\r\n")

        def _anthropic(self, model, stream):
            if not stream:
                p, c = USAGE["anthropic"]
                return self._json(200, {
                    "id": "msg_1", "type": "message", "role": "assistant", "model": model,
                    "content": [{"type": "text", "text": self.echo or "hello from " + name}], "stop_reason": "end_turn",
                    "stop_sequence": None, "usage": {"input_tokens": p, "output_tokens": c}})
            self._sse_start()
            events = [
                ("message_start", {"type": "message_start", "message": {
                    "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": [],
                    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 0}}}),
                ("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}}),
            ]
            for i in range(3):
                text = (self.echo if i == 0 else "") if self.echo is not None else "tok%d " % i
                events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                       "delta": {"type": "text_delta", "text": text}}))
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


def sandbox_trust_files(agent, tmp, vip):
    """What a sandboxed client of AGENT's inference.local needs without the DNS
    responder, written in TMP: the agent's CA, a CA bundle (system roots + that
    CA) and a hosts file naming inference.local VIP. Returns (ca, bundle, hosts)."""
    ca_local = os.path.join(tmp, "inference-ca.pem")
    agent.ctl("ca", "export", "--out", ca_local)
    with open("/etc/ssl/certs/ca-certificates.crt") as f:
        roots = f.read()
    bundle = os.path.join(tmp, "bundle.pem")
    with open(bundle, "w") as f:
        f.write(roots + "\n" + open(ca_local).read())
    hosts = os.path.join(tmp, "hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.1 localhost\n%s inference.local\n" % vip)
    return ca_local, bundle, hosts


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
