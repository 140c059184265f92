#pragma once
// The control API: a root-only unix socket (mode 0600, and the peer's uid is
// checked with SO_PEERCRED) speaking one JSON object per line each way. A
// peer is also refused when the agent's PeerCheck says so (a process inside
// a sandbox, whatever its uid): at accept and again before every request.
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <sys/types.h>
#include <string>

#include "control/dispatcher.hpp"

namespace redir::agent {

class AuditLog;

// The client end of a connection (the protocol's type, so handlers may keep it).
using ControlConn = control::Connection;

// Returns the response line for a request line. May keep CONN to push more
// lines later (events --follow).
using ControlHandler = std::function<std::string(const std::string& line, const std::shared_ptr<ControlConn>& conn)>;

// Why the process PID may not use the control API (one sentence), or nullopt.
using PeerCheck = std::function<std::optional<std::string>(pid_t pid)>;

// `events`: the last REQ.count records of AUDIT and, with REQ.follow, every
// later one as a line on CONN after the reply: none missed between the two,
// none twice, all in the log's order (the server sends a reply before any
// line a handler's followers queued while it ran).
control::EventsReply serve_events(AuditLog& audit, const control::EventsRequest& req,
                                  const std::shared_ptr<ControlConn>& conn);

class ControlServer {
public:
    ControlServer(boost::asio::io_context& io, const std::string& socket_path, ControlHandler handler,
                  PeerCheck check = {});
    ~ControlServer();

private:
    void accept();
    boost::asio::io_context& io_;
    std::string path_;
    boost::asio::local::stream_protocol::acceptor acceptor_;
    ControlHandler handler_;
    PeerCheck check_;
};

}  // namespace redir::agent
