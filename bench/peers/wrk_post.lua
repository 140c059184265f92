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

-- WRK_RATE: requests per second for the whole run (WRK_THREADS: wrk's -t), an
-- offered load instead of as fast as the peer answers. Each wrk thread hands
-- out send times on its own schedule, one every WRK_THREADS/WRK_RATE s, to
-- whichever of its connections is ready; a thread behind schedule sends at
-- once and does not catch up (a saturated peer is not sent bursts). wrk
-- takes the delay in whole milliseconds (sends go up to 1 ms early, the rate
-- holds over the run) and times each request from its send.
local rate = tonumber(os.getenv("WRK_RATE") or "0") or 0
if rate > 0 then
  local ffi = require("ffi")
  ffi.cdef[[
    struct wrk_timespec { long tv_sec; long tv_nsec; };
    int clock_gettime(int clk, struct wrk_timespec *tp);
  ]]
  local ts = ffi.new("struct wrk_timespec")
  local function now_ms()
    ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
    return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
  end
  local interval = (tonumber(os.getenv("WRK_THREADS") or "1") or 1) * 1000 / rate
  local next_send = 0
  delay = function()
    local t = now_ms()
    if next_send < t then next_send = t end
    local d = next_send - t
    next_send = next_send + interval
    return d
  end
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
