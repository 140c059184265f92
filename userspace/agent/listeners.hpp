#pragma once
// Accepting side of REDIRECT: listeners on the agent's loopback that learn each
// connection's original destination from the kernel (4-tuple map filled by
// sockops before the SYN left) and hand the socket on.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

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

private:
    void accept(boost::asio::ip::tcp::acceptor& a);

    boost::asio::io_context& io_;
    std::string what_;
    uint16_t port_ = 0;
    OrigDstLookup lookup_;
    AuditLog& audit_;
    AcceptHandler handler_;
    std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> acceptors_;
};

// "inspect" verdict: relay bytes to the original destination, with an audit
// record per connection. The agent's own socket is outside every sandbox, so
// it is not redirected again.
AcceptHandler make_relay_handler(boost::asio::io_context& io, AuditLog& audit);

}  // namespace redir::agent
