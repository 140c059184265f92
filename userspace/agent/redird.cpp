// redird: the privileged node agent.
#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <iostream>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "agent/agent.hpp"

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
    app.add_option("--dns-upstream", o.dns_upstream, "IP:PORT; default: first nameserver of /etc/resolv.conf");
    app.add_option("--metrics", o.metrics, "ADDR:PORT for Prometheus text exposition (off unless given)");
    app.add_option("--audit-log", o.audit_log, "audit records, one JSON object per line; default <state-dir>/audit.log");
    app.add_option("--stream-idle-timeout", o.stream_idle_timeout_s,
                   "seconds of provider silence allowed inside a streamed answer (no total cap)")
        ->check(CLI::Range(1u, 86400u))
        ->capture_default_str();
    app.add_option("--log-format", log_format, "text or json")->check(CLI::IsMember({"text", "json"}))->capture_default_str();
    app.add_option("--log-level", log_level, "trace, debug, info, warn, error")
        ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error"}))
        ->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    auto logger = spdlog::stderr_logger_mt("redird");
    spdlog::set_default_logger(logger);
    spdlog::set_level(spdlog::level::from_str(log_level));
    if (log_format == "json")
        spdlog::set_pattern(R"({"ts":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","msg":"%v"})");

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
