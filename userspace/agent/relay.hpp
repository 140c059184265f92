#pragma once
// The "inspect" verdict: a redirected connection is relayed byte for byte to
// its original destination, with an audit record when it opens and closes.
// The agent's own socket is outside every sandbox, so it is not redirected
// again. Connections are capped per sandbox and in total, and timed out when
// the upstream connect takes too long or nothing moves for too long.
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <memory>

#include "agent/conn_info.hpp"
#include "agent/listeners.hpp"

namespace redir::agent {

class AuditLog;

struct RelayOptions {
    using ms = std::chrono::milliseconds;
    std::size_t max_connections_per_sandbox = 256;  // 0 = no cap
    std::size_t max_connections_total = 4096;
    ms connect_timeout{10'000};  // accept → upstream connection established (the whole handshake)
    ms idle_timeout{300'000};    // no byte moved in either direction
};

// Counters for --metrics.
struct RelayStats {
    std::atomic<std::uint64_t> connections_accepted{0};
    std::atomic<std::uint64_t> refused_sandbox_connections{0};
    std::atomic<std::uint64_t> refused_total_connections{0};
    std::atomic<std::uint64_t> connect_timeouts{0};
    std::atomic<std::uint64_t> connect_failures{0};
    std::atomic<std::uint64_t> idle_timeouts{0};
};

class Relay {
public:
    // Runs on IO's (single) thread. AUDIT must outlive the Relay, not its
    // connections: destroying the Relay closes them and detaches them from AUDIT.
    Relay(boost::asio::io_context& io, AuditLog& audit, RelayOptions opts = {});
    ~Relay();
    Relay(const Relay&) = delete;
    Relay& operator=(const Relay&) = delete;

    void serve(boost::asio::ip::tcp::socket s, ConnInfo info);
    AcceptHandler handler() {
        return [this](boost::asio::ip::tcp::socket s, ConnInfo i) { serve(std::move(s), std::move(i)); };
    }

    const RelayStats& stats() const;
    std::uint64_t connections() const;
    std::uint64_t connections_of(std::uint64_t cgroup_id) const;

    struct Shared;

private:
    std::shared_ptr<Shared> shared_;
};

}  // namespace redir::agent
