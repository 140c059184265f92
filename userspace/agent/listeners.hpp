#pragma once
// Accepting side of REDIRECT: listeners on the agent's loopback that learn each
// connection's original destination from the kernel (4-tuple map filled by
// sockops before the SYN left) and hand the socket on.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "agent/accept_backoff.hpp"
#include "agent/conn_info.hpp"
#include "redir/origdst.h"

namespace redir::agent {

class AuditLog;

using OrigDstLookup = std::function<std::optional<redir_origdst_val>(const redir_tuple_key&)>;
using AcceptHandler = std::function<void(boost::asio::ip::tcp::socket, ConnInfo)>;

class RedirectListener {
public:
    // Binds 127.0.0.1 and ::1 on the same port (PORT 0 = pick one).
    RedirectListener(boost::asio::io_context& io, const char* what, uint16_t port, OrigDstLookup lookup,
                     AuditLog& audit, AcceptHandler handler);
    uint16_t port() const { return port_; }
    bool has_v6() const { return acceptors_.size() > 1; }
    // Failed accept() calls so far (each followed by a backoff wait).
    uint64_t accept_failures() const { return accept_failures_; }
    const std::string& what() const { return what_; }

private:
    struct Slot {
        explicit Slot(boost::asio::io_context& io) : acceptor(io), timer(io) {}
        boost::asio::ip::tcp::acceptor acceptor;
        boost::asio::steady_timer timer;
        AcceptBackoff backoff;
    };
    void accept(Slot& slot);

    boost::asio::io_context& io_;
    std::string what_;
    uint16_t port_ = 0;
    OrigDstLookup lookup_;
    AuditLog& audit_;
    AcceptHandler handler_;
    std::vector<std::unique_ptr<Slot>> acceptors_;
    uint64_t accept_failures_ = 0;
};

}  // namespace redir::agent
