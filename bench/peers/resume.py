"""TLS session resumption probe for bench/peers: --count connections to
--host:443 (SNI --sni, trust --cafile), one POST each with `Connection: close`,
each offering the session (ticket) the previous connection received, as wrk
does when it reconnects. Prints one JSON line: how many handshakes the server
resumed and the TLS version. A server that never resumes pays a full
handshake (certificate signature included) for every connection."""
import argparse
import json
import socket
import ssl

BODY = b'{"model":"client-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'


def one(ctx, host, sni, auth, session):
    with socket.create_connection((host, 443), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=sni, session=session) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
                          sni.encode(), auth.encode(), len(BODY), BODY))
            while s.recv(65536):  # to the end: TLS 1.3 tickets arrive after the handshake
                pass
            return s.session_reused, s.session, s.version()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--sni", required=True)
    ap.add_argument("--cafile", required=True)
    ap.add_argument("--auth", default="sk-client-placeholder")
    ap.add_argument("--count", type=int, default=20)
    a = ap.parse_args()
    ctx = ssl.create_default_context(cafile=a.cafile)
    session, resumed, version, errors = None, 0, None, 0
    for _ in range(a.count):
        try:
            reused, session, version = one(ctx, a.host, a.sni, a.auth, session)
            resumed += bool(reused)
        except (OSError, ssl.SSLError):
            errors += 1
            session = None
    print(json.dumps({"connections": a.count, "resumed": resumed, "errors": errors, "version": version}))


if __name__ == "__main__":
    main()
