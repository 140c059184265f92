#pragma once
// The operator's limits for the inference terminator and the inspect relay:
// their defaults, their redird flags, and their lines in --metrics.
#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}
namespace redir::terminator {
struct GatewayOptions;
struct GatewayStats;
}  // namespace redir::terminator

namespace redir::agent {

struct RelayOptions;
struct RelayStats;
class RedirectListener;

// One terminator io thread per core.
unsigned default_terminator_threads();

struct GatewayLimits {
    // Terminator (https://inference.local and its plain-HTTP refusal).
    unsigned max_connections_per_sandbox = 256;
    unsigned max_connections = 4096;
    unsigned max_request_header = 16 * 1024;               // bytes; over it: 431
    std::uint64_t max_request_body = 32ull * 1024 * 1024;  // bytes; over it: 413
    std::uint64_t body_bytes_per_sandbox = 128ull * 1024 * 1024;  // request bodies in memory at once; over it: 503
    std::uint64_t body_bytes_total = 512ull * 1024 * 1024;
    unsigned tls_handshake_timeout_s = 10;
    unsigned header_timeout_s = 15;       // first byte of a request → end of its header
    unsigned body_timeout_s = 60;         // end of header → end of body
    unsigned client_idle_timeout_s = 60;  // kept-alive connection waiting for its next request
    unsigned client_write_timeout_s = 60;  // each write to a sandbox that stops reading
    unsigned log_string_max = 256;        // client text quoted in a log line or an error
    unsigned terminator_threads = default_terminator_threads();  // 0 = on the agent's own io thread
    unsigned upstream_pool_max_idle = 1024;  // idle provider connections per host and thread (upper bound)
    unsigned terminator_poll_us = 200;  // an idle io thread polls this long at most before it sleeps (0 = never)
    // Inspect relay.
    unsigned relay_max_connections_per_sandbox = 256;
    unsigned relay_max_connections = 4096;
    unsigned relay_connect_timeout_s = 10;
    unsigned relay_idle_timeout_s = 300;
};

void add_gateway_limit_flags(CLI::App& app, GatewayLimits& l);
void apply_gateway_limits(const GatewayLimits& l, terminator::GatewayOptions& o);
RelayOptions relay_options(const GatewayLimits& l);

// Prometheus text for the terminator's and the relay's counters and gauges.
std::string terminator_metrics(const terminator::GatewayStats& s, std::uint64_t connections);
std::string relay_metrics(const RelayStats& s, std::uint64_t connections);
// Samples of redir_accept_backoffs_total (its HELP/TYPE are the agent's) for LISTENERS.
std::string listener_metrics(const std::vector<const RedirectListener*>& listeners);

}  // namespace redir::agent
