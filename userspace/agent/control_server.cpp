#include "agent/control_server.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>
#include <deque>
#include <istream>

#include "common/error.hpp"

namespace asio = boost::asio;
using asio::local::stream_protocol;

namespace redir::agent {
namespace {

constexpr size_t kMaxRequest = 64 << 20;  // a 100k-rule policy is a few MB

class Conn : public ControlConn, public std::enable_shared_from_this<Conn> {
public:
    Conn(stream_protocol::socket s, ControlHandler& h) : sock_(std::move(s)), handler_(h), buf_(kMaxRequest) {}

    void start() { read(); }

    bool send(std::string line) override {
        if (!alive_) return false;
        auto self = shared_from_this();
        asio::post(sock_.get_executor(), [self, line = std::move(line)]() mutable {
            bool idle = self->out_.empty();
            self->out_.push_back(std::move(line) + "\n");
            if (idle) self->flush();
        });
        return true;
    }
    bool alive() const override { return alive_; }

private:
    void read() {
        auto self = shared_from_this();
        asio::async_read_until(sock_, buf_, '\n', [self](boost::system::error_code ec, size_t) {
            if (ec) {
                self->alive_ = false;
                return;
            }
            std::istream is(&self->buf_);
            std::string line;
            std::getline(is, line);
            std::string resp;
            try {
                resp = self->handler_(line, self);
            } catch (const std::exception& e) {
                resp = std::string("{\"ok\":false,\"error\":\"internal error: ") + e.what() + "\"}";
            }
            self->send(std::move(resp));
            self->read();
        });
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
    asio::streambuf buf_;
    std::deque<std::string> out_;
    bool alive_ = true;
};

}  // namespace

ControlServer::ControlServer(asio::io_context& io, const std::string& path, ControlHandler handler)
    : io_(io), path_(path), acceptor_(io), handler_(std::move(handler)) {
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
        if (!ec) {
            struct ucred cred {};
            socklen_t len = sizeof(cred);
            if (::getsockopt(s.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.uid == 0) {
                std::make_shared<Conn>(std::move(s), handler_)->start();
            } else {
                std::string msg = "{\"ok\":false,\"error\":\"the control API is for root only\"}\n";
                boost::system::error_code ig;
                asio::write(s, asio::buffer(msg), ig);
            }
        }
        accept();
    });
}

}  // namespace redir::agent
