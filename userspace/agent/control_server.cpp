#include "agent/control_server.hpp"

#include <atomic>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <deque>
#include <istream>

#include <sys/syscall.h>

#include "agent/audit_log.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "agent/fd_reserve.hpp"
#include <boost/asio/steady_timer.hpp>

namespace asio = boost::asio;
using asio::local::stream_protocol;

namespace redir::agent {
namespace {


#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

std::string refusal_line(const std::string& why) { return control::encode_error({why}); }

// Who is at the other end: the pid that connected and, where the kernel has
// SO_PEERPIDFD (6.5+), a pidfd that tells whether that very process still
// lives (so a recycled pid is never mistaken for it).
struct Peer {
    uid_t uid = 65535;
    pid_t pid = 0;
    UniqueFd pidfd;

    static Peer of(int fd) {
        Peer p;
        struct ucred cred {};
        socklen_t len = sizeof(cred);
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
            p.uid = cred.uid;
            p.pid = cred.pid;
        }
        int pfd = -1;
        len = sizeof(pfd);
        if (::getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pfd, &len) == 0) p.pidfd = UniqueFd(pfd);
        return p;
    }

    // Why this peer may not send requests now, or nullopt.
    std::optional<std::string> refusal(const PeerCheck& check) const {
        if (uid != 0) return std::string("the control API is for root only");
        if (!check) return std::nullopt;
        if (pid <= 0) return std::string("cannot tell which process is talking to the control socket; refused");
        auto why = check(pid);
        if (why) return why;
        // Checked after reading /proc/PID: the pid still names the process that connected.
        if (pidfd && ::syscall(SYS_pidfd_send_signal, pidfd.get(), 0, nullptr, 0) != 0)
            return std::string("the process that opened this control connection (pid " + std::to_string(pid) +
                               ") has exited; open a new connection");
        return std::nullopt;
    }
};

class Conn : public ControlConn, public std::enable_shared_from_this<Conn> {
public:
    Conn(stream_protocol::socket s, ControlHandler& h, const PeerCheck& check, Peer peer)
        : sock_(std::move(s)), handler_(h), check_(check), peer_(std::move(peer)), buf_(control::kMaxLine) {}

    void start() { read(); }

    // From any thread: queued on the connection's thread, in call order.
    bool send(std::string line) override {
        if (!alive_) return false;
        auto self = shared_from_this();
        asio::post(sock_.get_executor(), [self, line = std::move(line)]() mutable { self->queue(std::move(line)); });
        return true;
    }
    bool alive() const override { return alive_; }

private:
    void read() {
        auto self = shared_from_this();
        asio::async_read_until(sock_, buf_, '\n', [self](boost::system::error_code ec, size_t) {
            if (ec == asio::error::not_found) {
                // A line longer than the buffer: refused, and the connection ends
                // (what follows is the rest of that line, not a request).
                self->send(control::encode_error(control::ProtocolError(
                    control::ErrorCode::too_large, "",
                    "control request longer than " + std::to_string(control::kMaxLine) + " bytes; refused")));
                return;
            }
            if (ec) {
                self->alive_ = false;
                return;
            }
            std::istream is(&self->buf_);
            std::string line;
            std::getline(is, line);
            std::string resp;
            try {
                // Again per request: the peer's cgroup may have been attached since it connected.
                if (auto why = self->peer_.refusal(self->check_)) {
                    // Queued before the connection is marked dead: queue()
                    // drops lines once it is (send() would post it, and the
                    // posted line would arrive after alive_ went false).
                    self->queue(refusal_line(*why));
                    self->alive_ = false;
                    return;
                }
                resp = self->handler_(line, self);
            } catch (const std::exception& e) {
                resp = control::encode_error({std::string("internal error: ") + e.what()});
            }
            // Into the queue now, not posted as send() does: a line a follower
            // sent while the handler ran (events --follow; posted, so not yet
            // queued) goes after the reply, never before it.
            self->queue(std::move(resp));
            self->read();
        });
    }

    // On the connection's thread.
    void queue(std::string line) {
        if (!alive_) return;
        bool idle = out_.empty();
        out_.push_back(std::move(line) + "\n");
        if (idle) flush();
    }

    void flush() {
        auto self = shared_from_this();
        asio::async_write(sock_, asio::buffer(out_.front()), [self](boost::system::error_code ec, size_t) {
            if (ec) {
                self->alive_ = false;
                self->out_.clear();
                return;
            }
            self->out_.pop_front();
            if (!self->out_.empty()) self->flush();
        });
    }

    stream_protocol::socket sock_;
    ControlHandler& handler_;
    const PeerCheck& check_;
    Peer peer_;
    asio::streambuf buf_;
    std::deque<std::string> out_;
    // send()/alive() are called by audit followers on terminator threads too.
    std::atomic<bool> alive_{true};
};

}  // namespace

control::EventsReply serve_events(AuditLog& audit, const control::EventsRequest& req,
                                  const std::shared_ptr<ControlConn>& conn) {
    control::EventsReply r;
    auto take = [&r](std::vector<std::string> lines) {
        r.events.reserve(lines.size());
        for (auto& l : lines) r.events.push_back({std::move(l)});
    };
    if (!req.follow) {
        take(audit.tail(req.count));
        return r;
    }
    // The tail and the subscription under the log's lock: a record written
    // meanwhile is in exactly one of them. Its line is posted to the
    // connection's thread, where it is queued after this reply.
    std::weak_ptr<ControlConn> w = conn;
    take(audit.subscribe_after_tail(req.count, [w](const std::string& line) {
        auto c = w.lock();
        return c && c->alive() && c->send(line);
    }));
    return r;
}

ControlServer::ControlServer(asio::io_context& io, const std::string& path, ControlHandler handler, PeerCheck check)
    : io_(io), path_(path), acceptor_(io), handler_(std::move(handler)), check_(std::move(check)) {
    ::unlink(path_.c_str());
    // Created with no access for anyone but the owner (root) from the first instant.
    mode_t old = ::umask(0177);
    try {
        acceptor_.open(stream_protocol());
        acceptor_.bind(stream_protocol::endpoint(path_));
        acceptor_.listen(64);
    } catch (const std::exception& e) {
        ::umask(old);
        throw Error("cannot listen on control socket " + path_ + ": " + e.what());
    }
    ::umask(old);
    ::chmod(path_.c_str(), 0600);
    accept();
}

ControlServer::~ControlServer() { ::unlink(path_.c_str()); }

void ControlServer::accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, stream_protocol::socket s) {
        if (ec == asio::error::operation_aborted) return;
        if (ec) {
            // Out of descriptors (EMFILE, ENFILE, ...): the operator must still
            // get in, so free the spare descriptors and retry at once; without
            // spares, pause instead of spinning on an error that persists.
            if (FdReserve::instance().held() > 0) {
                FdReserve::instance().release();
                return accept();
            }
            auto t = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(100));
            t->async_wait([this, t](boost::system::error_code e) {
                if (!e) accept();
            });
            return;
        }
        if (!ec) {
            Peer peer = Peer::of(s.native_handle());
            if (auto why = peer.refusal(check_)) {
                std::string msg = refusal_line(*why) + "\n";
                boost::system::error_code ig;
                asio::write(s, asio::buffer(msg), ig);
            } else {
                std::make_shared<Conn>(std::move(s), handler_, check_, std::move(peer))->start();
            }
        }
        accept();
    });
}

}  // namespace redir::agent
