// redird: the privileged node agent.
#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <iostream>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "agent/agent.hpp"
#include "agent/fd_reserve.hpp"

namespace asio = boost::asio;

namespace {

void watch_events(asio::posix::stream_descriptor& sd, redir::agent::Agent& agent) {
    sd.async_wait(asio::posix::stream_descriptor::wait_read, [&sd, &agent](boost::system::error_code ec) {
        if (ec) return;
        agent.datapath().consume_events();
        watch_events(sd, agent);
    });
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"redird: the redir node agent. Loads the kernel datapath, serves the control API, "
                 "the inference terminator and the DNS responder."};
    redir::agent::AgentOptions o;
    std::string log_format = "text", log_level = "info";
    app.set_config("--config", "", "read options from an INI/TOML file");
    app.add_option("--state-dir", o.state_dir, "CA, providers, policies, attachments")->capture_default_str();
    app.add_option("--run-dir", o.run_dir, "control socket redird.sock (mode 0600)")->capture_default_str();
    app.add_option("--bpffs", o.bpffs_dir, "pinned maps and links")->capture_default_str();
    app.add_option("--inference-vip", o.inference_vip, "what inference.local resolves to in sandboxes")
        ->capture_default_str();
    app.add_option("--inference-vip6", o.inference_vip6,
                   "what inference.local resolves to over IPv6 (AAAA), for sandboxes with IPv6 only; default none");
    app.add_option("--dns-upstream", o.dns_upstream, "IP:PORT; default: first nameserver of /etc/resolv.conf");
    app.add_option("--metrics", o.metrics, "ADDR:PORT for Prometheus text exposition (off unless given)");
    app.add_option("--audit-log", o.audit_log, "audit records, one JSON object per line; default <state-dir>/audit.log");
    app.add_option("--stream-idle-timeout", o.stream_idle_timeout_s,
                   "seconds of provider silence allowed inside a streamed answer (no total cap)")
        ->check(CLI::Range(1u, 86400u))
        ->capture_default_str();
    // Limits that keep one hostile sandbox from starving the others (docs/operations.md).
    uint64_t max_open_files = 0;
    unsigned dns_tcp_idle_ms = 10000, audit_window_ms = 10000;
    app.add_option("--max-open-files", max_open_files, "RLIMIT_NOFILE to run with; 0: the hard limit")
        ->capture_default_str();
    // A limit flag: its default shown, values outside [lo, hi] refused.
    auto bounded = [&app](const char* name, auto& v, const char* help, auto lo, auto hi) {
        app.add_option(name, v, help)->check(CLI::Range(lo, hi))->capture_default_str();
    };
    bounded("--fd-reserve", o.fd_reserve, "descriptors kept for the control socket and state writes", size_t(1),
            size_t(1024));
    bounded("--dns-admissions-per-sandbox", o.dns.max_admissions_per_sandbox,
            "live DNS admissions one sandbox may hold (the node-wide map holds 262144)", size_t(1), size_t(262144));
    bounded("--dns-tcp-per-sandbox", o.dns.tcp_per_sandbox, "DNS-over-TCP connections per sandbox", size_t(1),
            size_t(1) << 20);
    bounded("--dns-tcp-total", o.dns.tcp_total, "DNS-over-TCP connections, all sandboxes together", size_t(1),
            size_t(1) << 20);
    bounded("--dns-tcp-queue-bytes", o.dns.tcp_queued_bytes,
            "answers queued for one DNS-over-TCP client before reading from it pauses", size_t(512), size_t(16) << 20);
    bounded("--dns-tcp-idle-timeout-ms", dns_tcp_idle_ms,
            "a DNS-over-TCP connection with no progress (nothing read, nothing written) this long is closed", 100u,
            600000u);
    bounded("--dns-owner-lookup-queue", o.dns.owner_lookup_queue,
            "refusal records waiting for their process lookup; beyond: written without a pid", size_t(1),
            size_t(65536));
    bounded("--audit-max-bytes", o.audit.max_file_bytes, "rotate the audit log past this size", size_t(4096),
            size_t(1) << 40);
    bounded("--audit-keep", o.audit.keep_files, "rotated audit logs kept", size_t(1), size_t(1000));
    bounded("--audit-burst", o.audit.burst,
            "identical records per sandbox written per window; the rest are counted in one summary", 1u, 1000000u);
    bounded("--audit-window-ms", audit_window_ms, "rate-limit window of repeated audit records", 100u, 3600000u);
    redir::agent::add_gateway_limit_flags(app, o.gateway_limits);
    app.add_option("--log-format", log_format, "text or json")->check(CLI::IsMember({"text", "json"}))->capture_default_str();
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
        ->capture_default_str();
    CLI11_PARSE(app, argc, argv);
    o.dns.tcp_idle_timeout = std::chrono::milliseconds(dns_tcp_idle_ms);
    o.audit.window = std::chrono::milliseconds(audit_window_ms);

    auto logger = spdlog::stderr_logger_mt("redird");
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(log_level));
    if (log_format == "json")
        spdlog::set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","msg":"%v"})");

    // Every sandbox connection costs a descriptor: run with the hard limit
    // (or --max-open-files), a reserve of which stays for the operator.
    auto nofile = redir::agent::raise_nofile_limit(static_cast<rlim_t>(max_open_files));
    spdlog::info("file descriptor limit {} (hard {}), {} kept in reserve", static_cast<uint64_t>(nofile.soft),
                 static_cast<uint64_t>(nofile.hard), o.fd_reserve);
    spdlog::info("heap allocator: {} (REDIR_MALLOC at build time; docs/operations.md)", REDIR_HEAP);

    asio::io_context io;
    redir::agent::Agent agent(io, o);
    try {
        agent.start();
    } catch (const std::exception& e) {
        std::cerr << "redird: " << e.what() << "\n";
        return 1;
    }

    asio::posix::stream_descriptor events(io, ::dup(agent.datapath().events_poll_fd()));
    watch_events(events, agent);

    // SIGTERM: stop serving; pinned links and maps keep every sandbox enforced.
    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&io](boost::system::error_code, int sig) {
        spdlog::info("signal {}: stopping; enforcement stays pinned", sig);
        io.stop();
    });
    io.run();
    return 0;
}
