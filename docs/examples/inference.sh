#!/usr/bin/env bash
# The README's inference walk-through as one runnable script, mock provider:
# routes, usage accounting, limits, provider-side fetches, revocation on reload.
# It talks to the redird of REDIR_SOCKET and to two servers at 203.0.113.10 and
# 203.0.113.20 port 8080: `sudo docs/examples/run.sh` provides both, in a
# private network namespace with an agent of its own (the node's is untouched);
# tests/e2e/test_docs_example.py runs it that way and checks what it prints.
set -euo pipefail
cd "$(mktemp -d)"  # the policy files below
step() { printf '\n== %s\n' "$*"; }

step "routes: one per sandbox, picked by its policy"
redirctl provider create --name demo --type mock
redirctl inference set --provider demo --model demo-model
redirctl run -- curl -s https://inference.local/v1/chat/completions \
    -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"hi"}]}'
echo
redirctl inference set --route big --provider demo --model demo-model-large
echo '{"version":1,"name":"big-model","inference":{"route":"big"}}' > big.json
redirctl run --policy big.json -- curl -s https://inference.local/v1/chat/completions \
    -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"hi"}]}'
echo
redirctl inference list
redirctl inference update --route big --model demo-model-xl
redirctl run --policy big.json -- curl -s https://inference.local/v1/chat/completions \
    -H 'content-type: application/json' -d '{"messages":[{"role":"user","content":"hi"}]}'
echo

step "usage: requests and tokens per sandbox and route"
redirctl run -- curl -s https://inference.local/v1/chat/completions \
    -H 'content-type: application/json' -d '{"stream":true,"messages":[{"role":"user","content":"hi"}]}'
redirctl usage
redirctl usage --json
curl -s http://127.0.0.1:9100/metrics | grep redir_inference_

step "limits: 2 requests per minute for this sandbox"
echo '{"version":1,"name":"capped","inference":{"limits":{"requests_per_minute":2,"tokens_per_day":100000}}}' > capped.json
redirctl run --policy capped.json -- sh -c 'for i in 1 2 3; do
  curl -s -o /dev/null -w "%{http_code} retry-after=%header{retry-after}\n" https://inference.local/v1/chat/completions \
      -H "content-type: application/json" -d "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"
done'

step "provider-side fetches: refused unless the policy allows them"
redirctl run -- curl -s https://inference.local/v1/responses -H 'content-type: application/json' \
    -d '{"input":"hi","tools":[{"type":"mcp","server_label":"x","server_url":"https://example.com/mcp"}]}'
echo
echo '{"version":1,"name":"fetching","inference":{"provider_fetch":true}}' > fetching.json
redirctl run --policy fetching.json -- curl -s -o /dev/null -w '%{http_code}\n' https://inference.local/v1/responses \
    -H 'content-type: application/json' \
    -d '{"input":"hi","tools":[{"type":"mcp","server_label":"x","server_url":"https://example.com/mcp"}]}'

step "revocation: a reload resets the connections the new policy no longer allows"
echo '{"version":1,"name":"egress","allow":[{"cidr":"203.0.113.10/32","ports":[8080]},{"cidr":"203.0.113.20/32","ports":[8080]}]}' > egress.json
echo '{"version":1,"name":"egress","allow":[{"cidr":"203.0.113.20/32","ports":[8080]}]}' > egress-b-only.json
# The sandbox holds a connection to A (.10) and one to B (.20) and reads both.
redirctl run --policy egress.json -- python3 -c '
import select, socket, time
conns = {socket.create_connection((ip, 8080)): name for ip, name in (("203.0.113.10", "A"), ("203.0.113.20", "B"))}
print("connected to A and B", flush=True)
after, start, reset = {"A": 0, "B": 0}, time.monotonic(), None
while conns and time.monotonic() - start < 30 and (reset is None or time.monotonic() - reset < 2):
    for s in select.select(list(conns), [], [], 1)[0]:
        try:
            data = s.recv(4096)
        except OSError as e:
            data, reset = b"", time.monotonic()
            print(conns[s], "reset:", e.strerror, flush=True)
        if not data:
            del conns[s]
        elif reset:
            after[conns[s]] += len(data)
print("bytes after the reset: A %d, B %d" % (after["A"], after["B"]), flush=True)
' > revoke.out &
for _ in $(seq 100); do grep -q connected revoke.out && break; sleep 0.1; done
redirctl policy load egress-b-only.json
wait $!
cat revoke.out
redirctl events | grep revoked
