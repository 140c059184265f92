// redird flags and metrics for the terminator's and the relay's limits (see
// gateway_limits.hpp; docs/operations.md lists them for operators).
#include "agent/gateway_limits.hpp"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <thread>

#include "agent/listeners.hpp"
#include "agent/relay.hpp"
#include "terminator/gateway.hpp"

namespace redir::agent {

unsigned default_terminator_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

void add_gateway_limit_flags(CLI::App& app, GatewayLimits& l) {
    auto count = [&](const char* name, auto& v, const char* help) {
        app.add_option(name, v, help)->capture_default_str()->group("Terminator and relay limits");
    };
    auto secs = [&](const char* name, unsigned& v, const char* help) {
        app.add_option(name, v, help)->check(CLI::Range(1u, 86400u))->capture_default_str()->group(
            "Terminator and relay limits");
    };
    count("--max-connections-per-sandbox", l.max_connections_per_sandbox,
          "terminator connections one sandbox may hold; more are closed at once (0 = no cap)");
    count("--max-connections", l.max_connections, "terminator connections of all sandboxes together (0 = no cap)");
    count("--max-request-header", l.max_request_header, "bytes of one request header; larger gets 431");
    count("--max-request-body", l.max_request_body, "bytes of one request body; larger gets 413");
    count("--body-bytes-per-sandbox", l.body_bytes_per_sandbox,
          "bytes of request bodies one sandbox may have in memory at once; more gets 503 (0 = no cap)");
    count("--body-bytes-total", l.body_bytes_total, "bytes of request bodies of all sandboxes together (0 = no cap)");
    secs("--tls-handshake-timeout", l.tls_handshake_timeout_s, "seconds for a sandbox's TLS handshake");
    secs("--request-header-timeout", l.header_timeout_s, "seconds from a request's first byte to the end of its header");
    secs("--request-body-timeout", l.body_timeout_s, "seconds from the end of a header to the end of its body");
    secs("--client-idle-timeout", l.client_idle_timeout_s, "seconds a kept-alive connection may wait for a request");
    secs("--client-write-timeout", l.client_write_timeout_s,
         "seconds one write to a sandbox that stops reading may take before the connection is closed");
    app.add_option("--log-string-max", l.log_string_max,
                   "bytes of client text (model, path, keys) quoted in a log line or an error; the rest is cut")
        ->check(CLI::Range(16u, 65536u))
        ->capture_default_str()
        ->group("Terminator and relay limits");
    app.add_option("--terminator-threads", l.terminator_threads,
                   "io threads of the inference terminator, each with its own provider connections (default: one "
                   "per core; 0 = share the agent's thread with the control API, DNS and events)")
        ->check(CLI::Range(0u, 256u))
        ->capture_default_str()
        ->group("Terminator and relay limits");
    app.add_option("--terminator-poll-us", l.terminator_poll_us,
                   "microseconds an idle terminator io thread polls for work before it sleeps, at most: the window "
                   "grows while work comes soon after the thread slept and shrinks to 0 while it does not, and "
                   "polling yields to anything else runnable (0 = never poll)")
        ->check(CLI::Range(0u, 10000u))
        ->capture_default_str()
        ->group("Terminator and relay limits");
    count("--upstream-pool-max-idle", l.upstream_pool_max_idle,
          "idle provider connections kept per provider and terminator thread, at most (no more are kept than "
          "requests were in flight at once)");
    count("--relay-max-connections-per-sandbox", l.relay_max_connections_per_sandbox,
          "inspect-relay connections one sandbox may hold (0 = no cap)");
    count("--relay-max-connections", l.relay_max_connections, "inspect-relay connections in total (0 = no cap)");
    secs("--relay-connect-timeout", l.relay_connect_timeout_s,
         "seconds from accepting a relayed connection to reaching its destination");
    secs("--relay-idle-timeout", l.relay_idle_timeout_s, "seconds a relayed connection may move no byte");
}

void apply_gateway_limits(const GatewayLimits& l, terminator::GatewayOptions& o) {
    using std::chrono::seconds;
    o.max_connections_per_sandbox = l.max_connections_per_sandbox;
    o.max_connections_total = l.max_connections;
    o.header_limit = l.max_request_header;
    o.body_limit = l.max_request_body;
    o.body_bytes_per_sandbox = l.body_bytes_per_sandbox;
    o.body_bytes_total = l.body_bytes_total;
    o.handshake_timeout = seconds(l.tls_handshake_timeout_s);
    o.header_timeout = seconds(l.header_timeout_s);
    o.body_timeout = seconds(l.body_timeout_s);
    o.idle_timeout = seconds(l.client_idle_timeout_s);
    o.write_timeout = seconds(l.client_write_timeout_s);
    o.log_string_max = l.log_string_max;
    o.threads = l.terminator_threads;
    o.poll_before_sleep = std::chrono::microseconds(l.terminator_poll_us);
    o.pool_max_idle_per_host = l.upstream_pool_max_idle;
}

RelayOptions relay_options(const GatewayLimits& l) {
    RelayOptions o;
    o.max_connections_per_sandbox = l.relay_max_connections_per_sandbox;
    o.max_connections_total = l.relay_max_connections;
    o.connect_timeout = std::chrono::seconds(l.relay_connect_timeout_s);
    o.idle_timeout = std::chrono::seconds(l.relay_idle_timeout_s);
    return o;
}

namespace {

struct Text {
    std::string o;
    void head(const char* name, const char* type, const char* help) {
        o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    }
    void sample(const char* name, const std::string& labels, std::uint64_t v) {
        o += name + labels + " " + std::to_string(v) + "\n";
    }
    void one(const char* name, const char* type, const char* help, std::uint64_t v) {
        head(name, type, help);
        sample(name, "", v);
    }
    // PREFIX_connections, PREFIX_connections_accepted_total and
    // PREFIX_connections_refused_total{limit}: the same four numbers for the
    // terminator and the relay.
    void connections(const std::string& prefix, const std::string& what, std::uint64_t open, std::uint64_t accepted,
                     std::uint64_t refused_sandbox, std::uint64_t refused_total) {
        const auto gauge = prefix + "_connections", acc = gauge + "_accepted_total", ref = gauge + "_refused_total";
        one(gauge.c_str(), "gauge", (what + " connections open now").c_str(), open);
        one(acc.c_str(), "counter", (what + " connections admitted").c_str(), accepted);
        head(ref.c_str(), "counter", (what + " connections closed at once because a connection cap was reached").c_str());
        sample(ref.c_str(), "{limit=\"per_sandbox\"}", refused_sandbox);
        sample(ref.c_str(), "{limit=\"total\"}", refused_total);
    }
};

}  // namespace

std::string terminator_metrics(const terminator::GatewayStats& s, std::uint64_t connections) {
    Text t;
    t.connections("redir_terminator", "terminator", connections, s.connections_accepted,
                  s.refused_sandbox_connections, s.refused_total_connections);
    t.one("redir_terminator_body_budget_refused_total", "counter",
          "requests answered 503 because the sandbox's (or all) request bodies in memory would pass the cap",
          s.refused_body_budget);
    t.one("redir_terminator_header_too_large_total", "counter", "requests answered 431", s.header_too_large);
    t.one("redir_terminator_body_too_large_total", "counter", "requests answered 413", s.body_too_large);
    t.one("redir_terminator_tls_handshake_timeouts_total", "counter", "sandbox TLS handshakes cut off by the timeout",
          s.tls_handshake_timeouts);
    t.one("redir_terminator_tls_handshake_failures_total", "counter", "sandbox TLS handshakes that failed otherwise",
          s.tls_handshake_failures);
    t.one("redir_terminator_write_timeouts_total", "counter",
          "connections closed because the sandbox stopped reading (client write timeout)", s.write_timeouts);
    t.one("redir_terminator_log_strings_truncated_total", "counter",
          "requests whose client text in a log line or error was cut to --log-string-max", s.log_strings_truncated);
    t.one("redir_terminator_poll_caught_total", "counter",
          "times an idle io thread found work while polling (a wake-up saved; --terminator-poll-us)", s.poll.caught);
    t.one("redir_terminator_poll_slept_total", "counter",
          "times an idle io thread went to sleep (its polling window ran out or was 0)", s.poll.slept);
    t.one("redir_terminator_poll_yielded_total", "counter",
          "of those, times polling stopped because another thread wanted the CPU", s.poll.yielded);
    t.one("redir_terminator_poll_loaded_total", "counter",
          "of those, times an io thread did not poll because the terminator was loaded (another io thread "
          "running, or more calls in flight on the thread than polling serves)", s.poll.loaded);
    t.one("redir_terminator_poll_expired_total", "counter",
          "of those, times an io thread polled its whole window and found no work (polling in vain)", s.poll.expired);
    t.one("redir_terminator_poll_microseconds_total", "counter",
          "time io threads spent polling for work, found or not (what polling costs in CPU)",
          s.poll.polled_ns.load(std::memory_order_relaxed) / 1000);
    return t.o;
}

std::string relay_metrics(const RelayStats& s, std::uint64_t connections) {
    Text t;
    t.connections("redir_relay", "inspect-relay", connections, s.connections_accepted, s.refused_sandbox_connections,
                  s.refused_total_connections);
    t.one("redir_relay_connect_timeouts_total", "counter", "relayed connections whose destination was not reached in time",
          s.connect_timeouts);
    t.one("redir_relay_connect_failures_total", "counter", "relayed connections whose destination refused or failed",
          s.connect_failures);
    t.one("redir_relay_idle_timeouts_total", "counter", "relayed connections closed after moving no byte for too long",
          s.idle_timeouts);
    return t.o;
}

std::string listener_metrics(const std::vector<const RedirectListener*>& listeners) {
    Text t;
    for (const auto* l : listeners)
        if (l) t.sample("redir_accept_backoffs_total", "{listener=\"" + l->what() + "\"}", l->accept_failures());
    return t.o;
}

}  // namespace redir::agent
