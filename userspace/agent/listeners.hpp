#pragma once
// Accepting side of REDIRECT: listeners on the agent's loopback, and on the
// agent's address on the side of each sandbox in its own network namespace,
// that learn each connection's original destination from the kernel (4-tuple
// plus the client's namespace, filled by sockops before the SYN left) and hand
// the socket on. A connection without such a record is refused.
//
// The accept loops, the lookup and the hand-off run on the io context given,
// or on each of the executors in ACCEPT_ON (the terminator's io threads):
// every one of them then accepts from the same listening socket (a dup of its
// descriptor: no SO_REUSEPORT, whose group another process of the same user
// could join) and serves what it accepted on its own thread, with no hop
// through the agent's thread.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <atomic>
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
// A socket of the io_context that accepted it (the terminator's own type):
// nothing to move between reactors afterwards.
using ContextSocket = boost::asio::basic_stream_socket<boost::asio::ip::tcp, boost::asio::io_context::executor_type>;
using ContextAcceptHandler = std::function<void(ContextSocket, ConnInfo)>;

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
    // LOOKUP, AUDIT and HANDLER are called on the accepting executors: with
    // ACCEPT_ON not empty they must be thread-safe, and HANDLER gets a socket
    // bound to the executor that accepted it.
    RedirectListener(boost::asio::io_context& io, const char* what, uint16_t port, OrigDstLookup lookup,
                     AuditLog& audit, AcceptHandler handler,
                     std::vector<boost::asio::any_io_executor> accept_on = {});
    // The same, accepting on the io_contexts of ACCEPT_ON straight into
    // sockets of their own executor type.
    RedirectListener(boost::asio::io_context& io, const char* what, uint16_t port, OrigDstLookup lookup,
                     AuditLog& audit, ContextAcceptHandler handler,
                     std::vector<boost::asio::io_context::executor_type> accept_on);
    ~RedirectListener();
    RedirectListener(const RedirectListener&) = delete;
    RedirectListener& operator=(const RedirectListener&) = delete;
    uint16_t port() const { return port_; }
    bool has_v6() const { return acceptors_.size() > 1; }
    // Also accept at TARGET:port() for clients in the network namespace with
    // COOKIE (counted: several sandboxes may share a target). Throws when the
    // address cannot be bound.
    void add_target(const ListenAddress& target, uint64_t netns_cookie);
    // The reverse; the last namespace of a target closes its listener.
    void remove_target(const ListenAddress& target, uint64_t netns_cookie);
    // Failed accept() calls so far (each followed by a backoff wait).
    uint64_t accept_failures() const;
    const std::string& what() const;

private:
    // What the accept loops use, shared with them: a loop on another thread
    // may still complete after this listener is gone.
    struct Core;
    // One accept loop on one executor, over its own dup of a listening socket.
    struct Loop;
    // One bound address: its listening socket (owned here, on the agent's
    // thread), its accept loops, and the namespaces whose clients arrive on it.
    struct Slot;

    void open_loopback(uint16_t port);
    std::shared_ptr<Slot> open_slot(const boost::asio::ip::tcp::endpoint& ep, const std::string& device,
                                    const std::string& where);
    void close_slot(Slot& slot);

    boost::asio::io_context& io_;
    std::vector<boost::asio::any_io_executor> accept_on_;
    std::shared_ptr<Core> core_;
    uint16_t port_ = 0;
    uint64_t own_netns_ = 0;
    std::vector<std::shared_ptr<Slot>> acceptors_;  // loopback: v4, then v6
    std::map<ListenAddress, std::shared_ptr<Slot>> targets_;
};

}  // namespace redir::agent
