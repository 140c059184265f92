#pragma once
// The inference terminator's HTTP side. The agent accepts a redirected
// connection, learns who made it from the kernel, and hands the socket here;
// everything after that (TLS handshake, HTTP/1.1 with keep-alive, routing,
// the model rewrite, the provider call and the streamed relay) runs on the
// gateway's strand.
#include <openssl/ssl.h>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "terminator/request.hpp"
#include "terminator/store.hpp"

namespace spdlog {
class logger;
}

namespace redir::terminator {

// Who is calling, as the kernel recorded it (for the access log).
struct ConnectionInfo {
    uint64_t cgroup_id = 0;  // sandbox cgroup
    uint32_t pid = 0;        // process that connected
    std::string client;      // "ip:port" of the sandbox socket
    std::string orig;        // "ip:port" the sandbox asked for
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
    std::size_t pool_max_idle_per_host = 16;
    // Host name → IP literal used instead of DNS (tests; pinned providers).
    std::map<std::string, std::string> resolve_overrides;
    // Access log (one JSON line per request); nullptr = spdlog's default logger.
    std::shared_ptr<spdlog::logger> access_log;
    // Called with each request's record after it was logged (metrics, tests).
    std::function<void(const RequestLog&)> on_request;
};

class Gateway {
public:
    // All work runs on a strand of EX, so EX's io_context may be run by any
    // number of threads.
    Gateway(boost::asio::any_io_executor ex, std::shared_ptr<Store> store, GatewayOptions opts = {});
    // Stops accepting work: idle provider connections are closed; sessions in
    // flight finish their current request and close.
    ~Gateway();
    Gateway(const Gateway&) = delete;
    Gateway& operator=(const Gateway&) = delete;

    // HTTPS for inference.local: performs the server handshake with an SSL
    // object made from SERVER_CTX (redir_tls's ServerContext::get(); it is
    // up-referenced, so it need only live until this call returns).
    void serve_tls(boost::asio::ip::tcp::socket socket, SSL_CTX* server_ctx, ConnectionInfo info);

    // Plain HTTP to inference.local: answers every request with a refusal
    // that tells the caller to use HTTPS, then closes.
    void serve_plain_refusal(boost::asio::ip::tcp::socket socket, ConnectionInfo info);

    // The full gateway over cleartext HTTP. For tests only: never expose it
    // to sandboxes (prompts and replies would cross the wire unencrypted).
    void serve_cleartext_for_tests(boost::asio::ip::tcp::socket socket, ConnectionInfo info);

    struct Impl;

private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace redir::terminator
