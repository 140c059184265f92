-- wrk script for bench/peers: POSTs a small chat completion and prints one
-- machine-readable line (WRKJSON) with counts and latency percentiles.
wrk.method = "POST"
wrk.body = '{"model":"client-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16}'
wrk.headers["Content-Type"] = "application/json"
-- WRK_BODY_FILE: POST that file instead, e.g. a few-KB chat request with tools
-- (build/bench/terminator/bench_terminator_json --print-request > /tmp/chat.json).
local body_file = os.getenv("WRK_BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
end
-- A bearer the client might send: every proxy must replace it with the
-- provider's credential (the fake provider answers 401 otherwise). The direct
-- baseline sends the real one (WRK_AUTH).
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("WRK_AUTH") or "sk-client-placeholder")
if os.getenv("WRK_CLOSE") == "1" then
  -- One request per connection: every request is a new TCP + TLS handshake.
  wrk.headers["Connection"] = "close"
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
