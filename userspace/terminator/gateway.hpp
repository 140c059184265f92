#pragma once
// The inference terminator's HTTP side. The agent accepts a redirected
// connection, learns who made it from the kernel, and hands the socket here;
// everything after that (TLS handshake, HTTP/1.1 with keep-alive, routing,
// the model rewrite, the provider call and the streamed relay) runs on one of
// the gateway's io threads (the one that accepted it, when the agent accepts
// on them: io_executors()) or the caller's io_context.
#include <openssl/ssl.h>

#include <boost/asio/any_io_executor.hpp>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/conn_info.hpp"
#include "terminator/limits.hpp"
#include "terminator/poll_loop.hpp"
#include "terminator/request.hpp"
#include "terminator/sandbox_inference.hpp"
#include "terminator/store.hpp"

namespace spdlog {
class logger;
}

namespace redir::terminator {

// A request or connection refused by one of the fairness caps.
struct LimitRefusal {
    std::string limit;            // e.g. "connections_per_sandbox" (the redird flag's subject)
    std::uint64_t cap = 0;
    std::uint64_t suppressed = 0;  // refusals of this sandbox not reported since the last one
};

// Counters for --metrics; read from any thread.
struct GatewayStats {
    std::atomic<std::uint64_t> connections_accepted{0};
    std::atomic<std::uint64_t> refused_sandbox_connections{0};  // over the per-sandbox connection cap
    std::atomic<std::uint64_t> refused_total_connections{0};    // over the terminator-wide cap
    std::atomic<std::uint64_t> refused_body_budget{0};          // 503: sandbox's request bytes in flight
    std::atomic<std::uint64_t> header_too_large{0};             // 431
    std::atomic<std::uint64_t> body_too_large{0};               // 413
    std::atomic<std::uint64_t> tls_handshake_timeouts{0};
    std::atomic<std::uint64_t> tls_handshake_failures{0};       // other than timeouts
    std::atomic<std::uint64_t> write_timeouts{0};               // sandbox stopped reading its answer
    std::atomic<std::uint64_t> log_strings_truncated{0};        // requests whose logged client text was clipped
    // Header fields of requests live in their connection's arena (8 KiB kept
    // per connection): heap bytes the arenas hold beyond that now (0 between
    // requests), and the most one request took.
    std::atomic<std::uint64_t> arena_heap_bytes{0};
    std::atomic<std::uint64_t> arena_heap_peak{0};
    // Heap bytes connections keep between requests to read their next
    // request's body into (at most ClientConn::kBodyKept each).
    std::atomic<std::uint64_t> body_buffer_bytes{0};
    // The io threads' polling before they sleep (GatewayOptions::poll_before_sleep).
    PollStats poll;
};

struct GatewayOptions {
    using ms = std::chrono::milliseconds;
    // Client side. Sizes beyond the limits get 431 / 413.
    std::size_t header_limit = 16 * 1024;
    std::uint64_t body_limit = 32ull * 1024 * 1024;  // images in base64 are big
    ms handshake_timeout{10'000};
    ms idle_timeout{60'000};     // waiting for the next request on a kept-alive connection
    ms header_timeout{15'000};   // first byte of a request → end of its header
    ms body_timeout{60'000};     // end of header → end of body
    ms write_timeout{60'000};    // each write to a client that stops reading
    // Provider side.
    ms upstream_connect_timeout{10'000};   // resolve + connect + TLS handshake
    ms upstream_write_timeout{60'000};
    ms upstream_response_timeout{600'000}; // request sent → response header (long completions)
    ms stream_idle_timeout{120'000};       // between two pieces of a response body; no total cap
    ms pool_idle_timeout{60'000};          // idle kept-alive provider connection lifetime
    // Idle provider connections kept per (host, port, trust) and io thread:
    // an upper bound only. No more connections are ever opened than requests
    // were in flight at once, so what is kept idle follows the peak
    // concurrency seen (and ages out after pool_idle_timeout).
    std::size_t pool_max_idle_per_host = 1024;
    // Fairness between sandboxes (the sandbox is ConnInfo::cgroup_id); 0 = no cap.
    std::size_t max_connections_per_sandbox = 256;  // over it: the new connection is closed at once
    std::size_t max_connections_total = 4096;
    // Request bodies held in memory at once (Content-Length, or body_limit
    // when chunked), reserved before the body is read; over it: 503.
    std::uint64_t body_bytes_per_sandbox = 128ull * 1024 * 1024;
    std::uint64_t body_bytes_total = 512ull * 1024 * 1024;
    // Client-supplied text (model, path, method, keys) quoted in a log line or error.
    std::size_t log_string_max = kLogStringMax;
    // Io threads of the gateway's own (one per core is the agent's default),
    // each with its own provider pool; 0 = run on the constructor's
    // io_context, which must then be run by one thread.
    std::size_t threads = 0;
    // The longest an io thread of its own polls for work before it sleeps
    // (poll_loop.hpp: the window adapts between 0 and this); 0 = never poll.
    std::chrono::microseconds poll_before_sleep{200};
    // Host name → IP literal used instead of DNS (tests; pinned providers).
    std::map<std::string, std::string> resolve_overrides;
    // Access log (one JSON line per request); nullptr = spdlog's default logger.
    std::shared_ptr<spdlog::logger> access_log;
    // Called with each request's record after it was logged (metrics, tests).
    // Like on_refused, called on the gateway's threads: must be thread-safe.
    std::function<void(const RequestLog&)> on_request;
    // The policy's inference settings of the sandbox (ConnInfo::cgroup_id):
    // its route and whether the provider may reach the network for it;
    // null: the default route, no provider-side fetches. Called on the
    // gateway's threads once per request: must be thread-safe and quick
    // (the agent reads a published SandboxInferenceTable).
    std::function<SandboxInference(std::uint64_t cgroup_id)> sandbox_inference;
    // Changes whenever an answer of sandbox_inference may change (the agent:
    // SandboxInferenceTable::generation); 0 = unknown. While it and the
    // store's generation read as they did, a connection reuses the answer
    // and the store's snapshot its last request got (its cgroup is the key);
    // null, or 0: sandbox_inference is asked per request. Called on the
    // gateway's threads once per request: must be thread-safe and quick.
    std::function<std::uint64_t()> sandbox_inference_generation;
    // Admits a provider-bound request of the sandbox under its policy's
    // inference.limits (counting it), or says why not (429); null: no limits.
    // Called on the gateway's threads: must be thread-safe.
    std::function<std::optional<LimitExceeded>(std::uint64_t cgroup_id, const InferenceLimits&)> admit_request;
    // Called when a cap refuses a connection or request (at most once per
    // sandbox per second; the others are counted in LimitRefusal::suppressed).
    std::function<void(const ConnInfo&, const LimitRefusal&)> on_refused;
};

class Gateway {
public:
    // Without threads of its own (OPTS.threads 0) all work runs on EX's
    // io_context (EX must be an io_context's), which must be run by one
    // thread: the gateway's handlers take no lock and need no strand.
    Gateway(boost::asio::any_io_executor ex, std::shared_ptr<Store> store, GatewayOptions opts = {});
    // Stops accepting work: idle provider connections are closed; sessions in
    // flight finish their current request and close.
    ~Gateway();
    Gateway(const Gateway&) = delete;
    Gateway& operator=(const Gateway&) = delete;

    // HTTPS for inference.local: performs the server handshake with an SSL
    // object made from SERVER_CTX (redir_tls's ServerContext::get(); it is
    // up-referenced, so it need only live until this call returns).
    void serve_tls(boost::asio::ip::tcp::socket socket, SSL_CTX* server_ctx, ConnInfo info);
    // The same for a socket accepted on one of io_executors(): served on that
    // thread without moving it to another reactor.
    using ContextSocket = boost::asio::basic_stream_socket<boost::asio::ip::tcp, boost::asio::io_context::executor_type>;
    void serve_tls(ContextSocket socket, SSL_CTX* server_ctx, ConnInfo info);

    // Plain HTTP to inference.local: answers every request with a refusal
    // that tells the caller to use HTTPS, then closes.
    void serve_plain_refusal(boost::asio::ip::tcp::socket socket, ConnInfo info);

    // The full gateway over cleartext HTTP. For tests only: never expose it
    // to sandboxes (prompts and replies would cross the wire unencrypted).
    void serve_cleartext_for_tests(boost::asio::ip::tcp::socket socket, ConnInfo info);

    const GatewayStats& stats() const;
    // Connections held now, by every sandbox / by one.
    std::uint64_t connections() const;
    std::uint64_t connections_of(std::uint64_t cgroup_id) const;

    // Io threads of the gateway's own (GatewayOptions::threads).
    std::size_t threads() const;
    // Their executors (none without threads of its own): a listener that
    // accepts on them and calls serve_* there has each connection served on
    // the thread that accepted it, its socket never moved between reactors.
    std::vector<boost::asio::io_context::executor_type> io_executors() const;

    struct Shared;
    struct Impl;

private:
    struct Workers;
    std::unique_ptr<Workers> workers_;
};

}  // namespace redir::terminator
