"""Issue: the terminator — https://inference.local with a local CA, credential
injection, model rewrite and streaming — driven by real clients (curl,
Python's urllib, the official Node SDKs) from inside a sandbox cgroup.

The fake provider is a local TLS server at a fake address in this test's own
network namespace, with a certificate from a test CA handed to the provider
config as --ca-file. Clients find inference.local through a private
/etc/hosts (mount namespace) so this test does not depend on the DNS
responder.
"""
import json
import os
import socket
import ssl
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import harness  # noqa: E402
from fake_provider import FakeProvider, make_test_ca, sandbox_trust_files  # noqa: E402
from harness import Agent, Cgroup, write_policy  # noqa: E402

VIP = "198.18.0.1"
PROVIDER_IP = "203.0.113.100"
NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
SECRET = "sk-test-secret-0123456789"


class TerminatorE2E(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp, _ = harness.isolated(cls, "term")
        cls.ca, cert, key = make_test_ca(cls.tmp, PROVIDER_IP)
        cls.fake = FakeProvider(PROVIDER_IP, 8443, cert, key, name="fake-a")
        cls.fake_b = FakeProvider(PROVIDER_IP, 9443, cert, key, name="fake-b")
        cls.agent = Agent("term").start()
        a = cls.agent
        a.ctl("provider", "create", "--name", "pa", "--type", "openai-compatible", "--base-url",
              "https://%s:8443/v1" % PROVIDER_IP, "--ca-file", cls.ca, "--credential", "OPENAI_API_KEY=" + SECRET)
        a.ctl("provider", "create", "--name", "pant", "--type", "anthropic", "--base-url",
              "https://%s:8443" % PROVIDER_IP, "--ca-file", cls.ca, "--credential", "ANTHROPIC_API_KEY=" + SECRET)
        a.ctl("inference", "set", "--provider", "pa", "--model", "served-model")
        cls.policy = write_policy(cls.tmp, "inference-only", {"inference": {"enabled": True}})
        cls.cg = Cgroup("term")
        a.ctl("attach", "--cgroup", cls.cg.path, "--policy", cls.policy)
        cls.ca_local, cls.bundle, cls.hosts = sandbox_trust_files(a, cls.tmp, VIP)

    @classmethod
    def tearDownClass(cls):
        cls.fake.close()
        cls.fake_b.close()
        cls.agent.cleanup([cls.cg])

    # -- helpers -------------------------------------------------------------

    def sandboxed(self, argv, timeout=60, env_extra=None):
        """ARGV in the sandbox cgroup, with inference.local in /etc/hosts and
        the environment `redirctl run` provides."""
        env = dict(os.environ)
        env.update({
            "SSL_CERT_FILE": self.bundle, "REQUESTS_CA_BUNDLE": self.bundle, "CURL_CA_BUNDLE": self.bundle,
            "NODE_EXTRA_CA_CERTS": self.ca_local, "OPENAI_BASE_URL": "https://inference.local/v1",
            "ANTHROPIC_BASE_URL": "https://inference.local", "NODE_PATH": os.path.join(NODE_DIR, "node_modules"),
        })
        env.update(env_extra or {})
        return self.cg.run(argv, binds={"/etc/hosts": self.hosts}, timeout=timeout, env=env)

    def last_upstream(self, fake=None):
        return (fake or self.fake).rec.last()

    def assert_forwarded(self, rec, path, provider_auth="bearer"):
        self.assertIsNotNone(rec)
        self.assertEqual(rec["path"], path)
        self.assertEqual(rec["body"]["model"], "served-model")
        h = rec["headers"]
        if provider_auth == "bearer":
            self.assertEqual(h.get("authorization"), "Bearer " + SECRET)
            self.assertNotIn("x-api-key", h)
        else:
            self.assertEqual(h.get("x-api-key"), SECRET)
            self.assertNotIn("authorization", h)
            self.assertIn("anthropic-version", h)
        for v in h.values():
            self.assertNotIn("client-should-be-dropped", v)
            self.assertNotIn("sk-client", v)

    # -- clients -------------------------------------------------------------

    def test_curl_plain_and_stream(self):
        body = json.dumps({"model": "client-model", "messages": [{"role": "user", "content": "hi"}]})
        r = self.sandboxed(["curl", "-sS", "--fail-with-body", "https://inference.local/v1/chat/completions",
                            "-H", "authorization: Bearer sk-client-secret", "-H", "x-api-key: sk-client-x",
                            "-H", "content-type: application/json", "-d", body])
        self.assertEqual(r.returncode, 0, r.stderr + r.stdout)
        resp = json.loads(r.stdout)
        self.assertEqual(resp["choices"][0]["message"]["content"], "hello from fake-a")
        self.assert_forwarded(self.last_upstream(), "/v1/chat/completions")

        body = json.dumps({"model": "client-model", "stream": True, "messages": []})
        r = self.sandboxed(["curl", "-sS", "-N", "https://inference.local/v1/chat/completions",
                            "-H", "content-type: application/json", "-d", body])
        self.assertEqual(r.returncode, 0, r.stderr)
        data = [l for l in r.stdout.splitlines() if l.startswith("data: ")]
        self.assertEqual(len(data), 6, r.stdout)
        self.assertEqual(data[-1], "data: [DONE]")

    def test_python_urllib_plain_and_stream_timing(self):
        code = r"""
import json, sys, time, urllib.request
def req(body):
    return urllib.request.Request("https://inference.local/v1/chat/completions", data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": "Bearer sk-client-should-be-dropped"})
r = urllib.request.urlopen(req({"model": "client-model", "messages": [{"role": "user", "content": "hi"}]}), timeout=30)
plain = json.loads(r.read())
r = urllib.request.urlopen(req({"model": "client-model", "stream": True, "messages": []}), timeout=30)
events = []
for line in r:
    line = line.decode().strip()
    if line.startswith("data: {"):
        ev = json.loads(line[6:])
        events.append({"at": time.time(), "sent_at": ev["sent_at"]})
print(json.dumps({"plain": plain, "events": events}))
"""
        r = self.sandboxed([sys.executable, "-c", code])
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        self.assertEqual(out["plain"]["choices"][0]["message"]["content"], "hello from fake-a")
        self.assertEqual(out["plain"]["model"], "served-model")
        ev = out["events"]
        self.assertEqual(len(ev), 5)
        # Each event arrives before the provider sends the next one (200 ms apart).
        for i in range(4):
            self.assertLess(ev[i]["at"], ev[i + 1]["sent_at"], "event %d was held back: %s" % (i, ev))
        self.assert_forwarded(self.last_upstream(), "/v1/chat/completions")

    def test_node_openai_sdk(self):
        for mode in ("plain", "stream"):
            r = self.sandboxed(["node", os.path.join(NODE_DIR, "openai_client.js"), mode])
            self.assertEqual(r.returncode, 0, r.stderr)
            out = json.loads(r.stdout)
            if mode == "plain":
                self.assertEqual(out["content"], "hello from fake-a")
            else:
                self.assertEqual("".join(e["text"] for e in out["events"]), "tok0 tok1 tok2 tok3 tok4 ")
                for i in range(4):
                    self.assertLess(out["events"][i]["at"], out["events"][i + 1]["sent_at"])
            self.assert_forwarded(self.last_upstream(), "/v1/chat/completions")

    def test_node_anthropic_sdk(self):
        self.agent.ctl("inference", "update", "--provider", "pant")
        try:
            for mode in ("plain", "stream"):
                r = self.sandboxed(["node", os.path.join(NODE_DIR, "anthropic_client.js"), mode])
                self.assertEqual(r.returncode, 0, r.stderr)
                out = json.loads(r.stdout)
                if mode == "plain":
                    self.assertEqual(out["content"], "hello from fake-a")
                else:
                    self.assertEqual(out["text"], "tok0 tok1 tok2 ")
                    self.assertEqual(out["types"][-1], "message_stop")
                self.assert_forwarded(self.last_upstream(), "/v1/messages", provider_auth="x-api-key")
        finally:
            self.agent.ctl("inference", "update", "--provider", "pa")

    # -- configuration changes ------------------------------------------------

    def test_switch_model_provider_and_key_between_requests(self):
        body = json.dumps({"messages": []})
        curl = ["curl", "-sS", "https://inference.local/v1/chat/completions", "-H", "content-type: application/json",
                "-d", body]
        v0 = json.loads(self.agent.ctl("inference", "get", "--json").stdout)["version"]
        self.agent.ctl("inference", "update", "--model", "second-model")
        self.assertEqual(self.sandboxed(curl).returncode, 0)
        self.assertEqual(self.fake.rec.last()["body"]["model"], "second-model")
        v1 = json.loads(self.agent.ctl("inference", "get", "--json").stdout)["version"]
        self.assertGreater(v1, v0)

        self.agent.ctl("provider", "create", "--name", "pb", "--type", "openai-compatible", "--base-url",
                       "https://%s:9443/v1" % PROVIDER_IP, "--ca-file", self.ca, "--credential",
                       "OPENAI_API_KEY=sk-b-key")
        self.agent.ctl("inference", "update", "--provider", "pb")
        r = self.sandboxed(curl)
        self.assertEqual(json.loads(r.stdout)["choices"][0]["message"]["content"], "hello from fake-b")
        self.assertEqual(self.fake_b.rec.last()["headers"]["authorization"], "Bearer sk-b-key")

        self.agent.ctl("provider", "update", "pb", "--credential", "OPENAI_API_KEY=sk-b-rotated")
        self.sandboxed(curl)
        self.assertEqual(self.fake_b.rec.last()["headers"]["authorization"], "Bearer sk-b-rotated")

        r = self.agent.ctl("provider", "delete", "pb", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("inference", r.stderr)
        got = self.agent.ctl("provider", "get", "pb").stdout
        self.assertNotIn("sk-b-rotated", got)
        self.agent.ctl("inference", "set", "--provider", "pa", "--model", "served-model")
        self.agent.ctl("provider", "delete", "pb")

    # -- certificate -----------------------------------------------------------

    def test_certificate_and_wrong_sni(self):
        code = r"""
import socket, ssl, sys, json
ca = sys.argv[1]
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["h2", "http/1.1"])
s = ctx.wrap_socket(socket.create_connection(("198.18.0.1", 443), 5), server_hostname="inference.local")
cert = s.getpeercert()
out = {"san": cert["subjectAltName"], "alpn": s.selected_alpn_protocol(), "version": s.version()}
ctx2 = ssl.create_default_context(cafile=ca)
ctx2.check_hostname = False
try:
    ctx2.wrap_socket(socket.create_connection(("198.18.0.1", 443), 5), server_hostname="evil.example")
    out["wrong_sni"] = "accepted"
except ssl.SSLError as e:
    out["wrong_sni"] = str(e)
print(json.dumps(out))
"""
        r = self.sandboxed([sys.executable, "-c", code, self.ca_local])
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        self.assertEqual(out["san"], [["DNS", "inference.local"]])
        self.assertEqual(out["alpn"], "http/1.1", "h2 is offered first but only HTTP/1.1 is served")
        self.assertEqual(out["version"], "TLSv1.3")
        self.assertIn("UNRECOGNIZED_NAME", out["wrong_sni"].upper())
        self.assertTrue(self.agent.wait_audit(lambda rec: rec.get("event") == "tls" and rec.get("sni") == "evil.example"))

    def test_provider_breaking_off_mid_stream_with_forged_events(self):
        self.fake.rec.forge_stream = True
        try:
            body = json.dumps({"stream": True, "messages": []})
            r = self.sandboxed(["curl", "-sS", "-N", "https://inference.local/v1/chat/completions",
                                "-H", "content-type: application/json", "-d", body])
        finally:
            self.fake.rec.forge_stream = False
        lines = r.stdout.splitlines()
        self.assertNotIn("event: forged", lines, r.stdout)
        self.assertFalse(any("forged" in l for l in lines if l.startswith("data:") and "error" not in l), r.stdout)
        events = [l for l in lines if l.startswith("event:")]
        self.assertEqual(events, ["event: error"], r.stdout)
        err_data = lines[lines.index("event: error") + 1]
        self.assertTrue(err_data.startswith("data: "))
        json.loads(err_data[6:])  # one line of JSON, nothing injected after it
        self.assertEqual(len([l for l in lines if l.startswith("data: {") and "tok" in l]), 2, r.stdout)

    def test_stream_idle_timeout_is_configurable(self):
        agent = Agent("term-idle", ["--stream-idle-timeout", "1"]).start()
        cg = Cgroup("term-idle")
        self.fake.rec.stream_gap = 1.6
        try:
            agent.ctl("provider", "create", "--name", "pa", "--type", "openai-compatible", "--base-url",
                      "https://%s:8443/v1" % PROVIDER_IP, "--ca-file", self.ca, "--credential", "OPENAI_API_KEY=k")
            agent.ctl("inference", "set", "--provider", "pa", "--model", "m")
            agent.ctl("attach", "--cgroup", cg.path, "--policy", self.policy)
            ca = os.path.join(self.tmp, "ca-idle.pem")
            agent.ctl("ca", "export", "--out", ca)
            r = cg.run(["curl", "-sS", "-N", "--cacert", ca, "--resolve", "inference.local:443:" + VIP,
                        "https://inference.local/v1/chat/completions", "-d", '{"stream":true,"messages":[]}'],
                       timeout=60)
            self.assertIn("event: error", r.stdout)
            self.assertEqual(len([l for l in r.stdout.splitlines() if "tok" in l]), 1, r.stdout)
        finally:
            self.fake.rec.stream_gap = 0.2
            agent.cleanup([cg])

    def test_client_hello_split_across_records(self):
        code = r"""
import socket, ssl, sys
ca = sys.argv[1]
ctx = ssl.create_default_context(cafile=ca)
inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
obj = ctx.wrap_bio(inc, out, server_hostname="inference.local")
s = socket.create_connection(("198.18.0.1", 443), 5)
try:
    obj.do_handshake()
except ssl.SSLWantReadError:
    pass
hello = out.read()
assert hello[0] == 0x16
payload = hello[5:]
half = len(payload) // 2
recs = b""
for part in (payload[:half], payload[half:]):
    recs += bytes([0x16]) + hello[1:3] + len(part).to_bytes(2, "big") + part
s.sendall(recs)
while True:
    try:
        obj.do_handshake()
        break
    except ssl.SSLWantReadError:
        data = out.read()
        if data:
            s.sendall(data)
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("closed during handshake")
        inc.write(chunk)
s.sendall(out.read())
obj.write(b"GET /v1/models HTTP/1.1\r\nHost: inference.local\r\nConnection: close\r\n\r\n")
s.sendall(out.read())
resp = b""
while True:
    try:
        resp += obj.read(65536)
        if b"\r\n\r\n" in resp:
            break
    except ssl.SSLWantReadError:
        chunk = s.recv(65536)
        if not chunk:
            break
        inc.write(chunk)
print(resp.split(b"\r\n")[0].decode())
"""
        r = self.sandboxed([sys.executable, "-c", code, self.ca_local])
        self.assertEqual(r.stdout.strip(), "HTTP/1.1 200 OK", r.stderr)

    def test_plain_http_refused_with_message(self):
        r = self.sandboxed(["curl", "-sS", "http://inference.local/v1/models"])
        self.assertIn("https", r.stdout.lower())

    def test_no_inference_configured_is_503(self):
        agent = Agent("term-unconfigured").start()
        cg = Cgroup("term-unconf")
        try:
            agent.ctl("attach", "--cgroup", cg.path, "--policy", self.policy)
            ca = os.path.join(self.tmp, "ca-unconf.pem")
            agent.ctl("ca", "export", "--out", ca)
            r = cg.run(["curl", "-sS", "--cacert", ca, "--resolve", "inference.local:443:" + VIP,
                        "-w", "\n%{http_code}", "https://inference.local/v1/chat/completions", "-d", "{}"])
            body, code = r.stdout.rsplit("\n", 1)
            self.assertEqual(code, "503")
            self.assertIn("redirctl inference set", json.loads(body)["error"]["message"])
        finally:
            agent.cleanup([cg])

    # -- bad input ---------------------------------------------------------------

    def test_bad_input_leaves_agent_serving(self):
        code = r"""
import socket, ssl, sys, json
ca = sys.argv[1]
res = {}
def raw(data, tls=False):
    s = socket.create_connection(("198.18.0.1", 443), 5)
    s.settimeout(5)
    try:
        s.sendall(data)
        return s.recv(100)
    except OSError as e:
        return str(e).encode()
    finally:
        s.close()
res["garbage"] = raw(b"GET / HTTP/1.1\r\n\r\n" * 3).hex()[:20]
res["truncated"] = raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").hex()[:20]
ctx = ssl.create_default_context(cafile=ca)
def https(req):
    s = ctx.wrap_socket(socket.create_connection(("198.18.0.1", 443), 5), server_hostname="inference.local")
    s.settimeout(10)
    try:
        s.sendall(req)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk: break
            data += chunk
        return data.split(b"\r\n")[0].decode(errors="replace")
    except OSError as e:
        return "closed: " + str(e)
    finally:
        s.close()
res["smuggle"] = https(b"POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
res["two_cl"] = https(b"POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}")
res["big_header"] = https(b"GET /v1/models HTTP/1.1\r\nHost: inference.local\r\nX-Big: " + b"a" * (10 << 20) + b"\r\n\r\n")
res["big_body"] = https(b"POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Length: 999999999999\r\n\r\n{")
res["not_object"] = https(b"POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Length: 2\r\n\r\n[]")
res["dup_model"] = https(b'POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Length: 25\r\n\r\n{"model":"a","model":"b"}')
res["unknown_path"] = https(b"GET /admin HTTP/1.1\r\nHost: inference.local\r\n\r\n")
res["ok_after"] = https(b"GET /v1/models HTTP/1.1\r\nHost: inference.local\r\n\r\n")
print(json.dumps(res))
"""
        r = self.sandboxed([sys.executable, "-c", code, self.ca_local], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = json.loads(r.stdout)
        # Plain HTTP bytes on the TLS port: closed, or a TLS alert (0x15); never an HTTP answer.
        self.assertTrue(out["garbage"] == "" or out["garbage"].startswith("15"), out["garbage"])
        # Half a ClientHello: no ServerHello (0x16) ever comes back.
        self.assertFalse(out["truncated"].startswith("16"), out["truncated"])
        self.assertIn(" 400", out["smuggle"])
        self.assertIn(" 400", out["two_cl"])
        self.assertTrue(" 431" in out["big_header"] or out["big_header"].startswith("closed"), out["big_header"])
        self.assertIn(" 413", out["big_body"])
        self.assertIn(" 400", out["not_object"])
        self.assertIn(" 400", out["dup_model"])
        self.assertIn(" 404", out["unknown_path"])
        self.assertIn(" 200", out["ok_after"])
        self.assertIsNone(self.agent.proc.poll(), "agent died")


if __name__ == "__main__":
    unittest.main(verbosity=2)
