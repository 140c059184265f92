#include "agent/metrics.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "common/error.hpp"

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

namespace redir::agent {

struct MetricsServer::Impl : std::enable_shared_from_this<Impl> {
    Impl(asio::io_context& io, std::function<std::string()> r) : acceptor(io), render(std::move(r)) {}
    tcp::acceptor acceptor;
    std::function<std::string()> render;

    void accept() {
        acceptor.async_accept([self = shared_from_this()](beast::error_code ec, tcp::socket s) {
            if (ec == asio::error::operation_aborted) return;
            if (!ec) {
                serve(self, std::make_shared<beast::tcp_stream>(std::move(s)));
                return self->accept();
            }
            // EMFILE and the like persist: pause instead of spinning.
            auto t = std::make_shared<asio::steady_timer>(self->acceptor.get_executor(), std::chrono::milliseconds(200));
            t->async_wait([self, t](beast::error_code e) {
                if (!e) self->accept();
            });
        });
    }

    static void serve(std::shared_ptr<Impl> self, std::shared_ptr<beast::tcp_stream> stream) {
        auto buf = std::make_shared<beast::flat_buffer>();
        auto req = std::make_shared<http::request<http::empty_body>>();
        stream->expires_after(std::chrono::seconds(10));
        http::async_read(*stream, *buf, *req, [self, stream, buf, req](beast::error_code ec, size_t) {
            if (ec) return;
            auto res = std::make_shared<http::response<http::string_body>>(http::status::ok, req->version());
            if (req->target() != "/metrics" && req->target() != "/") {
                res->result(http::status::not_found);
                res->body() = "try /metrics\n";
            } else {
                res->set(http::field::content_type, "text/plain; version=0.0.4");
                res->body() = self->render();
            }
            res->keep_alive(false);
            res->prepare_payload();
            http::async_write(*stream, *res, [stream, res](beast::error_code, size_t) {
                beast::error_code ig;
                stream->socket().shutdown(tcp::socket::shutdown_both, ig);
            });
        });
    }
};

MetricsServer::MetricsServer(asio::io_context& io, const std::string& addr_port, std::function<std::string()> render)
    : impl_(std::make_shared<Impl>(io, std::move(render))) {
    auto colon = addr_port.rfind(':');
    if (colon == std::string::npos) throw Error("--metrics " + addr_port + " must be ADDR:PORT");
    std::string host = addr_port.substr(0, colon);
    if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
    beast::error_code ec;
    auto addr = asio::ip::make_address(host, ec);
    if (ec) throw Error("--metrics " + addr_port + ": " + host + " is not an IP address");
    tcp::endpoint ep(addr, static_cast<uint16_t>(std::stoi(addr_port.substr(colon + 1))));
    impl_->acceptor.open(ep.protocol());
    impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
    impl_->acceptor.bind(ep, ec);
    if (ec) throw Error("--metrics: cannot listen on " + addr_port + ": " + ec.message());
    impl_->acceptor.listen();
    impl_->accept();
}

MetricsServer::~MetricsServer() {
    beast::error_code ig;
    impl_->acceptor.close(ig);
}

}  // namespace redir::agent
