#include "agent/listeners.hpp"

#include <boost/asio/ip/v6_only.hpp>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <system_error>

#include "agent/audit_log.hpp"
#include "agent/conn_audit.hpp"
#include "common/addr.hpp"
#include "common/error.hpp"
#include "common/netns_cookie.hpp"

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

}  // namespace

RedirectListener::RedirectListener(asio::io_context& io, const char* what, uint16_t port, OrigDstLookup lookup,
                                   AuditLog& audit, AcceptHandler handler)
    : io_(io), what_(what), lookup_(std::move(lookup)), audit_(audit), handler_(std::move(handler)) {
    auto v4 = std::make_shared<Slot>(io_);
    tcp::endpoint ep4(asio::ip::address_v4::loopback(), port);
    v4->acceptor.open(tcp::v4());
    v4->acceptor.set_option(tcp::acceptor::reuse_address(true));
    v4->acceptor.bind(ep4);
    v4->acceptor.listen(4096);
    port_ = v4->acceptor.local_endpoint().port();
    // Loopback clients share the agent's namespace: their records carry its cookie.
    const uint64_t own = socket_netns_cookie(v4->acceptor.native_handle());
    v4->netns_cookies.insert(own);
    acceptors_.push_back(std::move(v4));
    try {
        auto v6 = std::make_shared<Slot>(io_);
        v6->acceptor.open(tcp::v6());
        v6->acceptor.set_option(asio::ip::v6_only(true));
        v6->acceptor.set_option(tcp::acceptor::reuse_address(true));
        v6->acceptor.bind(tcp::endpoint(asio::ip::address_v6::loopback(), port_));
        v6->acceptor.listen(4096);
        v6->netns_cookies.insert(own);
        acceptors_.push_back(std::move(v6));
    } catch (const std::exception& e) {
        spdlog::warn("{}: no IPv6 loopback listener ({}); IPv6 redirects will fail closed", what_, e.what());
    }
    for (auto& a : acceptors_) accept(a);
}

void RedirectListener::add_target(const ListenAddress& target, uint64_t netns_cookie) {
    auto it = targets_.find(target);
    if (it == targets_.end()) {
        auto slot = std::make_shared<Slot>(io_);
        tcp::endpoint ep(target.addr, port_);
        const std::string where = what_ + " listener on " + endpoint_to_string(to_redir(target.addr), port_) +
                                  (target.device.empty() ? "" : " (" + target.device + ")");
        try {
            slot->acceptor.open(ep.protocol());
            if (target.addr.is_v6()) slot->acceptor.set_option(asio::ip::v6_only(true));
            slot->acceptor.set_option(tcp::acceptor::reuse_address(true));
            if (!target.device.empty() &&
                ::setsockopt(slot->acceptor.native_handle(), SOL_SOCKET, SO_BINDTODEVICE, target.device.c_str(),
                             static_cast<socklen_t>(target.device.size())) != 0)
                throw std::system_error(errno, std::generic_category(), "SO_BINDTODEVICE");
            slot->acceptor.bind(ep);
            slot->acceptor.listen(4096);
        } catch (const std::exception& e) {
            throw Error("cannot open the " + where + ": " + e.what() +
                        " (is the address on that interface in redird's network namespace, and the port free?)");
        }
        it = targets_.emplace(target, slot).first;
        accept(slot);
    }
    it->second->netns_cookies.insert(netns_cookie);
}

void RedirectListener::remove_target(const ListenAddress& target, uint64_t netns_cookie) {
    auto it = targets_.find(target);
    if (it == targets_.end()) return;
    auto& cookies = it->second->netns_cookies;
    if (auto c = cookies.find(netns_cookie); c != cookies.end()) cookies.erase(c);
    if (!cookies.empty()) return;
    boost::system::error_code ec;
    it->second->acceptor.close(ec);
    it->second->timer.cancel();
    targets_.erase(it);
}

void RedirectListener::accept(const std::shared_ptr<Slot>& slot) {
    slot->acceptor.async_accept([this, slot](boost::system::error_code ec, tcp::socket s) {
        if (ec == asio::error::operation_aborted || !slot->acceptor.is_open()) return;
        if (ec) {
            // EMFILE/ENFILE leave the connection queued: accepting again at
            // once would spin. Wait, and say so once per streak.
            ++accept_failures_;
            if (slot->backoff.streak() == 0)
                spdlog::warn("{}: accept failed: {}; retrying with backoff (raise the open-file limit if this is "
                             "EMFILE/ENFILE)",
                             what_, ec.message());
            slot->timer.expires_after(slot->backoff.failed());
            slot->timer.async_wait([this, slot](boost::system::error_code tec) {
                if (tec == asio::error::operation_aborted || !slot->acceptor.is_open()) return;
                accept(slot);
            });
            return;
        }
        if (auto n = slot->backoff.succeeded())
            spdlog::info("{}: accepting again after {} failed accepts", what_, n);
        serve(std::move(s), *slot);
        accept(slot);
    });
}

// The record is looked up under every namespace whose clients arrive on this
// address; exactly one must hold it. Two would mean two namespaces sharing an
// interface used the same addresses and ports (one spoofing the other): the
// agent cannot tell whose connection this is, so it serves neither.
void RedirectListener::serve(tcp::socket s, const Slot& slot) {
    boost::system::error_code e1, e2;
    auto peer = s.remote_endpoint(e1);
    auto local = s.local_endpoint(e2);
    if (e1 || e2) return;
    redir_tuple_key k{};
    k.peer_addr = to_redir(peer.address());
    k.local_addr = to_redir(local.address());
    k.peer_port = peer.port();
    k.local_port = local.port();
    std::optional<redir_origdst_val> v;
    size_t found = 0;
    uint64_t last = 0;
    for (uint64_t cookie : slot.netns_cookies) {
        if (cookie == last) continue;  // a multiset: one lookup per namespace
        last = cookie;
        k.netns_cookie = cookie;
        if (auto hit = lookup_(k)) {
            v = hit;
            ++found;
        }
    }
    ConnInfo ci;
    ci.client = endpoint_to_string(k.peer_addr, k.peer_port);
    if (found != 1) {
        // Not redirected by us (someone dialled the listener directly, or the
        // entry was evicted), or ambiguous: nothing to serve, say so.
        JsonOut j;
        conn_record(j, "redirect", "refused")
            .str("listener", what_)
            .str("reason", found ? "original destination recorded in several network namespaces"
                                 : "no original destination recorded")
            .str("client", ci.client)
            .str("local", endpoint_to_string(k.local_addr, k.local_port))
            .end();
        audit_.write(j.take());
        s.close(e1);
        return;
    }
    ci.orig_addr = v->orig_addr;
    ci.orig_port = v->orig_port;
    ci.pid = v->pid;
    ci.cgroup_id = v->cgroup_id;
    ci.policy_id = v->policy_id;
    ci.orig = endpoint_to_string(v->orig_addr, v->orig_port);
    handler_(std::move(s), std::move(ci));
}

}  // namespace redir::agent
