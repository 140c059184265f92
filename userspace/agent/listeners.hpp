#pragma once
// Accepting side of REDIRECT: listeners on the agent's loopback, and on the
// agent's address on the side of each sandbox in its own network namespace,
// that learn each connection's original destination from the kernel (4-tuple
// plus the client's namespace, filled by sockops before the SYN left) and hand
// the socket on. A connection without such a record is refused.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "agent/accept_backoff.hpp"
#include "agent/conn_info.hpp"
#include "redir/origdst.h"

namespace redir::agent {

class AuditLog;

using OrigDstLookup = std::function<std::optional<redir_origdst_val>(const redir_tuple_key&)>;
using AcceptHandler = std::function<void(boost::asio::ip::tcp::socket, ConnInfo)>;

// Where redirects of sandboxes in their own network namespace arrive: the
// agent's address on their side, on the interface that holds it (the
// listener binds to it, so only what arrives through it is accepted, and
// replies leave through it even when several interfaces share the address).
struct ListenAddress {
    boost::asio::ip::address addr;
    std::string device;  // empty: not bound to an interface
    bool operator<(const ListenAddress& o) const {
        return addr != o.addr ? addr < o.addr : device < o.device;
    }
};

class RedirectListener {
public:
    // Binds 127.0.0.1 and ::1 on the same port (PORT 0 = pick one).
    RedirectListener(boost::asio::io_context& io, const char* what, uint16_t port, OrigDstLookup lookup,
                     AuditLog& audit, AcceptHandler handler);
    uint16_t port() const { return port_; }
    bool has_v6() const { return acceptors_.size() > 1; }
    // Also accept at TARGET:port() for clients in the network namespace with
    // COOKIE (counted: several sandboxes may share a target). Throws when the
    // address cannot be bound.
    void add_target(const ListenAddress& target, uint64_t netns_cookie);
    // The reverse; the last namespace of a target closes its listener.
    void remove_target(const ListenAddress& target, uint64_t netns_cookie);
    // Failed accept() calls so far (each followed by a backoff wait).
    uint64_t accept_failures() const { return accept_failures_; }
    const std::string& what() const { return what_; }

private:
    // One bound address. Handlers hold it shared: one may still be queued
    // when its target is removed.
    struct Slot {
        explicit Slot(boost::asio::io_context& io) : acceptor(io), timer(io) {}
        boost::asio::ip::tcp::acceptor acceptor;
        boost::asio::steady_timer timer;
        AcceptBackoff backoff;
        std::multiset<uint64_t> netns_cookies;  // namespaces whose clients arrive here
    };
    void accept(const std::shared_ptr<Slot>& slot);
    void serve(boost::asio::ip::tcp::socket s, const Slot& slot);

    boost::asio::io_context& io_;
    std::string what_;
    uint16_t port_ = 0;
    OrigDstLookup lookup_;
    AuditLog& audit_;
    AcceptHandler handler_;
    std::vector<std::shared_ptr<Slot>> acceptors_;  // loopback: v4, then v6
    std::map<ListenAddress, std::shared_ptr<Slot>> targets_;
    uint64_t accept_failures_ = 0;
};

}  // namespace redir::agent
