#include "agent/listeners.hpp"

#include <boost/asio/ip/v6_only.hpp>
#include <boost/asio/post.hpp>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <system_error>

#include "agent/audit_log.hpp"
#include "agent/conn_audit.hpp"
#include "common/addr.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
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

// The namespaces whose clients arrive on a slot, as its accept loops read
// them: replaced whole by the agent's thread, read by the loops' threads.
struct CookieSet {
    std::atomic<std::shared_ptr<const std::vector<uint64_t>>> v{std::make_shared<const std::vector<uint64_t>>()};
};

struct RedirectListener::Core {
    Core(const char* w, OrigDstLookup l, AuditLog& a, AcceptHandler h, ContextAcceptHandler ch = {})
        : what(w), lookup(std::move(l)), audit(a), handler(std::move(h)), context_handler(std::move(ch)) {}
    const std::string what;
    const OrigDstLookup lookup;
    AuditLog& audit;
    const AcceptHandler handler;
    const ContextAcceptHandler context_handler;  // when set: accept into io_context sockets
    std::atomic<uint64_t> accept_failures{0};

    static void accept(const std::shared_ptr<Core>& core, const std::shared_ptr<Loop>& loop,
                       const std::shared_ptr<CookieSet>& cookies);
    template <class Socket>
    static void accepted(const std::shared_ptr<Core>& core, const std::shared_ptr<Loop>& loop,
                         const std::shared_ptr<CookieSet>& cookies, boost::system::error_code ec, Socket s);
    template <class Socket>
    void serve(Socket s, const tcp::endpoint& peer, const tcp::endpoint& bound, const std::vector<uint64_t>& cookies);
};

// Lives on its executor: created there (posted), closed there (posted), and
// its last reference dropped there.
struct RedirectListener::Loop {
    Loop(const asio::any_io_executor& ex, const tcp::endpoint& bound) : acceptor(ex), timer(ex), local(bound) {}
    tcp::acceptor acceptor;
    asio::steady_timer timer;
    AcceptBackoff backoff;
    // The connection's two ends without asking the kernel again: the peer as
    // accept() returned it, the local end the specific address the listening
    // socket is bound to (never a wildcard).
    tcp::endpoint peer;
    const tcp::endpoint local;
};

struct RedirectListener::Slot {
    // Bound and listening, in no reactor: accepted from only through the
    // loops' dups (a registration here would wake the agent's thread for
    // every connection).
    UniqueFd listen;
    tcp::endpoint local;
    std::vector<std::shared_ptr<Loop>> loops;
    std::multiset<uint64_t> netns_cookies;  // agent's thread only; counted: several sandboxes may share a target
    std::shared_ptr<CookieSet> published = std::make_shared<CookieSet>();
    void publish() {
        auto v = std::make_shared<std::vector<uint64_t>>(netns_cookies.begin(), netns_cookies.end());
        v->erase(std::unique(v->begin(), v->end()), v->end());
        published->v.store(std::move(v));
    }
};

RedirectListener::RedirectListener(asio::io_context& io, const char* what, uint16_t port, OrigDstLookup lookup,
                                   AuditLog& audit, AcceptHandler handler, std::vector<asio::any_io_executor> accept_on)
    : io_(io), accept_on_(std::move(accept_on)),
      core_(std::make_shared<Core>(what, std::move(lookup), audit, std::move(handler))) {
    if (accept_on_.empty()) accept_on_.push_back(io_.get_executor());
    open_loopback(port);
}

RedirectListener::RedirectListener(asio::io_context& io, const char* what, uint16_t port, OrigDstLookup lookup,
                                   AuditLog& audit, ContextAcceptHandler handler,
                                   std::vector<asio::io_context::executor_type> accept_on)
    : io_(io), core_(std::make_shared<Core>(what, std::move(lookup), audit, AcceptHandler{}, std::move(handler))) {
    for (const auto& ex : accept_on) accept_on_.push_back(ex);
    if (accept_on_.empty()) accept_on_.push_back(io_.get_executor());
    open_loopback(port);
}

void RedirectListener::open_loopback(uint16_t port) {
    auto v4 = open_slot(tcp::endpoint(asio::ip::address_v4::loopback(), port), "", core_->what + " listener on 127.0.0.1");
    port_ = v4->local.port();
    // Loopback clients share the agent's namespace: their records carry its cookie.
    own_netns_ = socket_netns_cookie(v4->listen.get());
    acceptors_.push_back(std::move(v4));
    try {
        acceptors_.push_back(open_slot(tcp::endpoint(asio::ip::address_v6::loopback(), port_), "",
                                       core_->what + " listener on [::1]"));
    } catch (const std::exception& e) {
        spdlog::warn("{}: no IPv6 loopback listener ({}); IPv6 redirects will fail closed", core_->what, e.what());
    }
    for (auto& slot : acceptors_) {
        slot->netns_cookies.insert(own_netns_);
        slot->publish();
    }
}

uint64_t RedirectListener::accept_failures() const { return core_->accept_failures; }
const std::string& RedirectListener::what() const { return core_->what; }

RedirectListener::~RedirectListener() {
    for (auto& slot : acceptors_) close_slot(*slot);
    for (auto& [target, slot] : targets_) close_slot(*slot);
}

// Binds EP (on DEVICE when not empty), listens, and starts one accept loop
// per accepting executor, each over its own dup of the listening socket.
std::shared_ptr<RedirectListener::Slot> RedirectListener::open_slot(const tcp::endpoint& ep, const std::string& device,
                                                                    const std::string& where) {
    auto slot = std::make_shared<Slot>();
    try {
        tcp::acceptor a(io_);
        a.open(ep.protocol());
        if (ep.address().is_v6()) a.set_option(asio::ip::v6_only(true));
        a.set_option(tcp::acceptor::reuse_address(true));
        if (!device.empty() && ::setsockopt(a.native_handle(), SOL_SOCKET, SO_BINDTODEVICE, device.c_str(),
                                            static_cast<socklen_t>(device.size())) != 0)
            throw std::system_error(errno, std::generic_category(), "SO_BINDTODEVICE");
        a.bind(ep);
        a.listen(4096);
        slot->local = a.local_endpoint();
        slot->listen.reset(a.release());
        for (const auto& ex : accept_on_) {
            int fd = ::fcntl(slot->listen.get(), F_DUPFD_CLOEXEC, 0);
            if (fd < 0) throw std::system_error(errno, std::generic_category(), "dup of the listening socket");
            auto loop = std::make_shared<Loop>(ex, slot->local);
            boost::system::error_code ec;
            loop->acceptor.assign(ep.protocol(), fd, ec);
            if (ec) {
                ::close(fd);
                throw boost::system::system_error(ec, "assign");
            }
            slot->loops.push_back(loop);
        }
    } catch (const std::exception& e) {
        close_slot(*slot);
        throw Error("cannot open the " + where + ": " + e.what() +
                    " (is the address on that interface in redird's network namespace, and the port free?)");
    }
    for (auto& loop : slot->loops)
        asio::post(loop->acceptor.get_executor(),
                   [core = core_, loop, cookies = slot->published] { Core::accept(core, loop, cookies); });
    return slot;
}

// Each loop is closed on its own executor; the listening socket here. A loop
// on another thread may still hand on a connection it accepted just before:
// its lookup then runs against the namespaces left (none: refused).
void RedirectListener::close_slot(Slot& slot) {
    slot.netns_cookies.clear();
    slot.publish();
    for (auto& loop : slot.loops) {
        const asio::any_io_executor ex = loop->acceptor.get_executor();
        asio::post(ex, [loop = std::move(loop)] {
            boost::system::error_code ec;
            loop->acceptor.close(ec);
            loop->timer.cancel();
        });
    }
    slot.loops.clear();
    slot.listen.reset();
}

void RedirectListener::add_target(const ListenAddress& target, uint64_t netns_cookie) {
    auto it = targets_.find(target);
    if (it == targets_.end()) {
        const std::string where = core_->what + " listener on " + endpoint_to_string(to_redir(target.addr), port_) +
                                  (target.device.empty() ? "" : " (" + target.device + ")");
        it = targets_.emplace(target, open_slot(tcp::endpoint(target.addr, port_), target.device, where)).first;
    }
    it->second->netns_cookies.insert(netns_cookie);
    it->second->publish();
}

void RedirectListener::remove_target(const ListenAddress& target, uint64_t netns_cookie) {
    auto it = targets_.find(target);
    if (it == targets_.end()) return;
    auto& cookies = it->second->netns_cookies;
    if (auto c = cookies.find(netns_cookie); c != cookies.end()) cookies.erase(c);
    it->second->publish();
    if (!cookies.empty()) return;
    close_slot(*it->second);
    targets_.erase(it);
}

void RedirectListener::Core::accept(const std::shared_ptr<Core>& core, const std::shared_ptr<Loop>& loop,
                                    const std::shared_ptr<CookieSet>& cookies) {
    if (core->context_handler) {
        // The loop's executor is an io_context's (the constructor took only those).
        auto& ctx = loop->acceptor.get_executor().target<asio::io_context::executor_type>()->context();
        loop->acceptor.async_accept(ctx, loop->peer, [core, loop, cookies](boost::system::error_code ec, ContextSocket s) {
            accepted(core, loop, cookies, ec, std::move(s));
        });
        return;
    }
    loop->acceptor.async_accept(loop->peer, [core, loop, cookies](boost::system::error_code ec, tcp::socket s) {
        accepted(core, loop, cookies, ec, std::move(s));
    });
}

template <class Socket>
void RedirectListener::Core::accepted(const std::shared_ptr<Core>& core, const std::shared_ptr<Loop>& loop,
                                      const std::shared_ptr<CookieSet>& cookies, boost::system::error_code ec,
                                      Socket s) {
    {
        if (ec == asio::error::operation_aborted || !loop->acceptor.is_open()) return;
        if (ec == asio::error::would_block || ec == asio::error::try_again) {
            // Another loop over the same listening socket took the connection.
            accept(core, loop, cookies);
            return;
        }
        if (ec) {
            // EMFILE/ENFILE leave the connection queued: accepting again at
            // once would spin. Wait, and say so once per streak.
            ++core->accept_failures;
            if (loop->backoff.streak() == 0)
                spdlog::warn("{}: accept failed: {}; retrying with backoff (raise the open-file limit if this is "
                             "EMFILE/ENFILE)",
                             core->what, ec.message());
            loop->timer.expires_after(loop->backoff.failed());
            loop->timer.async_wait([core, loop, cookies](boost::system::error_code tec) {
                if (tec == asio::error::operation_aborted || !loop->acceptor.is_open()) return;
                accept(core, loop, cookies);
            });
            return;
        }
        if (auto n = loop->backoff.succeeded())
            spdlog::info("{}: accepting again after {} failed accepts", core->what, n);
        core->serve(std::move(s), loop->peer, loop->local, *cookies->v.load());
        accept(core, loop, cookies);
    }
}

// The record is looked up under every namespace whose clients arrive on this
// address; exactly one must hold it. Two would mean two namespaces sharing an
// interface used the same addresses and ports (one spoofing the other): the
// agent cannot tell whose connection this is, so it serves neither.
template <class Socket>
void RedirectListener::Core::serve(Socket s, const tcp::endpoint& peer, const tcp::endpoint& bound,
                                   const std::vector<uint64_t>& cookies) {
    boost::system::error_code e1;
    // A wildcard bind would leave the local address to the kernel: ask it then.
    const tcp::endpoint local = bound.address().is_unspecified() ? s.local_endpoint(e1) : bound;
    if (e1) return;
    redir_tuple_key k{};
    k.peer_addr = to_redir(peer.address());
    k.local_addr = to_redir(local.address());
    k.peer_port = peer.port();
    k.local_port = local.port();
    std::optional<redir_origdst_val> v;
    size_t found = 0;
    for (uint64_t cookie : cookies) {
        k.netns_cookie = cookie;
        if (auto hit = lookup(k)) {
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
            .str("listener", what)
            .str("reason", found ? "original destination recorded in several network namespaces"
                                 : "no original destination recorded")
            .str("client", ci.client)
            .str("local", endpoint_to_string(k.local_addr, k.local_port))
            .end();
        audit.write(j.take());
        s.close(e1);
        return;
    }
    ci.orig_addr = v->orig_addr;
    ci.orig_port = v->orig_port;
    ci.pid = v->pid;
    ci.cgroup_id = v->cgroup_id;
    ci.policy_id = v->policy_id;
    ci.orig = endpoint_to_string(v->orig_addr, v->orig_port);
    if constexpr (std::is_same_v<Socket, ContextSocket>)
        context_handler(std::move(s), std::move(ci));
    else
        handler(std::move(s), std::move(ci));
}

}  // namespace redir::agent
