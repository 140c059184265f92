#include "agent/listeners.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <spdlog/spdlog.h>

#include <array>
#include <chrono>

#include "agent/audit_log.hpp"
#include "agent/json_out.hpp"
#include "common/addr.hpp"

namespace asio = boost::asio;
using asio::ip::tcp;

namespace redir::agent {
namespace {

redir_addr to_redir(const asio::ip::address& a) {
    if (a.is_v4()) {
        in_addr x{};
        auto b = a.to_v4().to_bytes();
        std::memcpy(&x.s_addr, b.data(), 4);
        return addr_from_v4(x);
    }
    auto v6 = a.to_v6();
    in6_addr x{};
    auto b = v6.to_bytes();
    std::memcpy(x.s6_addr, b.data(), 16);
    return addr_from_v6(x);
}

std::string json_record(std::initializer_list<std::pair<const char*, std::string>> strs,
                        std::initializer_list<std::pair<const char*, uint64_t>> nums) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    w.StartObject();
    w.Key("ts_ms");
    w.Uint64(now_ms());
    for (auto& [k, v] : strs) {
        w.Key(k);
        w.String(v.c_str());
    }
    for (auto& [k, v] : nums) {
        w.Key(k);
        w.Uint64(v);
    }
    w.EndObject();
    return sb.GetString();
}

}  // namespace

RedirectListener::RedirectListener(asio::io_context& io, const char* what, uint16_t port, OrigDstLookup lookup,
                                   AuditLog& audit, AcceptHandler handler)
    : io_(io), what_(what), lookup_(std::move(lookup)), audit_(audit), handler_(std::move(handler)) {
    auto v4 = std::make_unique<tcp::acceptor>(io_);
    tcp::endpoint ep4(asio::ip::address_v4::loopback(), port);
    v4->open(tcp::v4());
    v4->set_option(tcp::acceptor::reuse_address(true));
    v4->bind(ep4);
    v4->listen(4096);
    port_ = v4->local_endpoint().port();
    acceptors_.push_back(std::move(v4));
    try {
        auto v6 = std::make_unique<tcp::acceptor>(io_);
        v6->open(tcp::v6());
        v6->set_option(asio::ip::v6_only(true));
        v6->set_option(tcp::acceptor::reuse_address(true));
        v6->bind(tcp::endpoint(asio::ip::address_v6::loopback(), port_));
        v6->listen(4096);
        acceptors_.push_back(std::move(v6));
    } catch (const std::exception& e) {
        spdlog::warn("{}: no IPv6 loopback listener ({}); IPv6 redirects will fail closed", what_, e.what());
    }
    for (auto& a : acceptors_) accept(*a);
}

void RedirectListener::accept(tcp::acceptor& a) {
    a.async_accept([this, &a](boost::system::error_code ec, tcp::socket s) {
        if (ec == asio::error::operation_aborted) return;
        if (!ec) {
            boost::system::error_code e1, e2;
            auto peer = s.remote_endpoint(e1);
            auto local = s.local_endpoint(e2);
            if (!e1 && !e2) {
                redir_tuple_key k{};
                k.peer_addr = to_redir(peer.address());
                k.local_addr = to_redir(local.address());
                k.peer_port = peer.port();
                k.local_port = local.port();
                auto v = lookup_(k);
                ConnInfo ci;
                ci.client = endpoint_to_string(k.peer_addr, k.peer_port);
                if (!v) {
                    // Not redirected by us (someone dialled the listener directly,
                    // or the entry was evicted): nothing to serve, say so.
                    audit_.write(json_record({{"event", "redirect"}, {"listener", what_}, {"verdict", "refused"},
                                              {"reason", "no original destination recorded"},
                                              {"client", ci.client}},
                                             {}));
                    s.close(e1);
                } else {
                    ci.orig_addr = v->orig_addr;
                    ci.orig_port = v->orig_port;
                    ci.pid = v->pid;
                    ci.cgroup_id = v->cgroup_id;
                    ci.policy_id = v->policy_id;
                    ci.orig = endpoint_to_string(v->orig_addr, v->orig_port);
                    handler_(std::move(s), std::move(ci));
                }
            }
        } else {
            spdlog::warn("{}: accept failed: {}", what_, ec.message());
        }
        accept(a);
    });
}

namespace {

struct RelaySession : std::enable_shared_from_this<RelaySession> {
    RelaySession(asio::io_context& io, tcp::socket c, ConnInfo i, AuditLog& a)
        : client(std::move(c)), upstream(io), info(std::move(i)), audit(a),
          start(std::chrono::steady_clock::now()) {}

    tcp::socket client, upstream;
    ConnInfo info;
    AuditLog& audit;
    std::array<char, 16384> up_buf{}, down_buf{};
    uint64_t bytes_up = 0, bytes_down = 0;
    int open_dirs = 2;
    std::chrono::steady_clock::time_point start;
    std::string result = "closed";

    void run() {
        auto self = shared_from_this();
        asio::ip::address dst;
        if (addr_is_v4(info.orig_addr)) {
            asio::ip::address_v4::bytes_type b;
            std::memcpy(b.data(), &info.orig_addr.b[12], 4);
            dst = asio::ip::address_v4(b);
        } else {
            asio::ip::address_v6::bytes_type b;
            std::memcpy(b.data(), info.orig_addr.b, 16);
            dst = asio::ip::address_v6(b);
        }
        upstream.async_connect(tcp::endpoint(dst, info.orig_port), [self](boost::system::error_code ec) {
            if (ec) {
                self->result = "upstream connect failed: " + ec.message();
                self->finish();
                return;
            }
            self->pump(self->client, self->upstream, self->up_buf, self->bytes_up);
            self->pump(self->upstream, self->client, self->down_buf, self->bytes_down);
        });
    }

    void pump(tcp::socket& from, tcp::socket& to, std::array<char, 16384>& buf, uint64_t& counter) {
        auto self = shared_from_this();
        from.async_read_some(asio::buffer(buf), [self, &from, &to, &buf, &counter](boost::system::error_code ec,
                                                                                  size_t n) {
            if (ec) {
                boost::system::error_code ig;
                to.shutdown(tcp::socket::shutdown_send, ig);  // pass the half-close on
                if (--self->open_dirs == 0) self->finish();
                return;
            }
            counter += n;
            asio::async_write(to, asio::buffer(buf.data(), n),
                              [self, &from, &to, &buf, &counter](boost::system::error_code ec2, size_t) {
                                  if (ec2) {
                                      boost::system::error_code ig;
                                      from.close(ig);
                                      to.close(ig);
                                      if (--self->open_dirs == 0) self->finish();
                                      return;
                                  }
                                  self->pump(from, to, buf, counter);
                              });
        });
    }

    void finish() {
        boost::system::error_code ig;
        client.close(ig);
        upstream.close(ig);
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
        audit.write(json_record({{"event", "relay"}, {"verdict", "inspect"}, {"client", info.client},
                                 {"orig_dst", info.orig}, {"result", result}},
                                {{"pid", info.pid},
                                 {"cgroup_id", info.cgroup_id},
                                 {"bytes_up", bytes_up},
                                 {"bytes_down", bytes_down},
                                 {"duration_ms", static_cast<uint64_t>(ms.count())}}));
    }
};

}  // namespace

AcceptHandler make_relay_handler(asio::io_context& io, AuditLog& audit) {
    return [&io, &audit](tcp::socket s, ConnInfo info) {
        audit.write(json_record({{"event", "relay"}, {"verdict", "inspect"}, {"phase", "open"}, {"client", info.client},
                                 {"orig_dst", info.orig}},
                                {{"pid", info.pid}, {"cgroup_id", info.cgroup_id}}));
        std::make_shared<RelaySession>(io, std::move(s), std::move(info), audit)->run();
    };
}

}  // namespace redir::agent
