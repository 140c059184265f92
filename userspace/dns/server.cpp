#include "dns/server.hpp"

#include <sys/random.h>
#include <sys/socket.h>

#include <array>
#include <atomic>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <deque>
#include <mutex>
#include <random>
#include <map>
#include <optional>

#include "common/error.hpp"
#include "dns/core.hpp"

namespace redir::dns {

namespace asio = boost::asio;
using asio::ip::tcp;
using asio::ip::udp;
using boost::system::error_code;
using Strand = asio::strand<asio::io_context::executor_type>;
using Bytes = std::vector<uint8_t>;

namespace {

// Unpredictable IDs are half of the defence against spoofed upstream answers
// (the fresh ephemeral source port of each lookup is the other half).
uint16_t random_id() {
    uint16_t v = 0;
    if (::getrandom(&v, sizeof v, 0) == static_cast<ssize_t>(sizeof v)) return v;
    thread_local std::random_device rd;
    return static_cast<uint16_t>(rd());
}

Bytes framed(const Bytes& msg) {
    Bytes out;
    out.reserve(msg.size() + 2);
    out.push_back(static_cast<uint8_t>(msg.size() >> 8));
    out.push_back(static_cast<uint8_t>(msg.size()));
    out.insert(out.end(), msg.begin(), msg.end());
    return out;
}

}  // namespace

struct Responder::Impl : std::enable_shared_from_this<Impl> {
    struct Lookup;
    struct TcpConn;

    Impl(asio::io_context& io, ResponderConfig c, SandboxView v, Admitter& a, EventHook e)
        : strand(asio::make_strand(io)),
          cfg(std::move(c)),
          view(std::make_shared<const SandboxView>(std::move(v))),
          admitter(a),
          on_event(std::move(e)),
          udp_sock(strand),
          acceptor(strand),
          accept_backoff(strand) {}

    Strand strand;
    ResponderConfig cfg;

    mutable std::mutex view_mu;
    std::shared_ptr<const SandboxView> view;

    // Held while calling out, so stop() returning means no call is running.
    std::mutex cb_mu;
    bool stopped = false;
    Admitter& admitter;
    EventHook on_event;
    DeferringEventHook on_event_deferring;

    udp::socket udp_sock;
    tcp::acceptor acceptor;
    asio::steady_timer accept_backoff;
    std::array<uint8_t, 65536> udp_buf{};
    udp::endpoint udp_peer;
    uint16_t bound_port = 0;

    // Weak: lookups and connections live as long as their pending handlers
    // (which hold them and, through them, this). Strong references here would
    // form cycles that outlive an io_context destroyed with work pending.
    std::map<Lookup*, std::weak_ptr<Lookup>> lookups;
    std::map<TcpConn*, std::weak_ptr<TcpConn>> conns;

    std::atomic<uint64_t> n_queries{0}, n_local{0}, n_forwarded{0}, n_refused{0}, n_admissions{0};
    std::atomic<uint64_t> n_tcp_open{0}, n_tcp_refused{0}, n_tcp_cut{0}, n_accept_backoffs{0};
    std::chrono::milliseconds backoff{0};

    std::shared_ptr<const SandboxView> current_view() const {
        std::lock_guard lk(view_mu);
        return view;
    }

    // Reports a refusal, then runs THEN on the strand: posted at once, or
    // when the deferring hook resumes. Never run inline: THEN may re-enter
    // the responder (a TCP connection reads its next query).
    void event_then(std::string_view name, uint16_t qtype, Verdict v, const QueryOrigin& origin,
                    std::function<void()> then) {
        ++n_refused;
        std::unique_lock lk(cb_mu);
        if (stopped || !on_event_deferring) {
            if (!stopped && on_event) on_event(name, qtype, v, origin);
            lk.unlock();
            asio::post(strand, std::move(then));
            return;
        }
        auto once = std::make_shared<std::atomic<bool>>(false);
        std::weak_ptr<Impl> weak = shared_from_this();
        on_event_deferring(name, qtype, v, origin, [weak, once, then = std::move(then)] {
            if (once->exchange(true)) return;
            if (auto self = weak.lock()) asio::post(self->strand, then);
        });
    }

    // Decides one query. Exactly one of the two callbacks runs, at once or when
    // the lookup ends; empty bytes mean nothing is to be sent (Drop, stop()).
    void handle(const uint8_t* data, size_t len, const QueryOrigin& origin, std::function<void(Bytes)> deliver,
                std::function<void(Bytes, const Forward&)> deliver_forwarded);

    void bind();
    void bind_device(int fd, error_code& ec) const;
    void close_all();
    // Every connection cap at once, or none (nullopt).
    std::optional<std::vector<std::shared_ptr<ConnectionBudget>>> take_budgets();
    void udp_receive();
    void tcp_accept();
};

// One upstream resolution: UDP from a fresh socket, then TCP if truncated.
struct Responder::Impl::Lookup : std::enable_shared_from_this<Lookup> {
    Lookup(std::shared_ptr<Impl> o, Forward f, std::function<void(Bytes, const Forward&)> d)
        : owner(std::move(o)),
          fwd(std::move(f)),
          deliver(std::move(d)),
          usock(owner->strand),
          tsock(owner->strand),
          timer(owner->strand) {}

    std::shared_ptr<Impl> owner;
    Forward fwd;
    QueryOrigin origin;  // the sandbox socket that asked
    std::function<void(Bytes, const Forward&)> deliver;
    udp::socket usock;
    tcp::socket tsock;
    asio::steady_timer timer;
    uint16_t upstream_id = 0;
    Bytes query;
    Bytes buf = Bytes(65536);
    std::array<uint8_t, 2> len_buf{};
    bool done = false;
    bool refused = false;  // reported; the reply waits for the report

    void start() {
        upstream_id = random_id();
        query = fwd.query;
        set_message_id(query, upstream_id);
        timer.expires_after(owner->cfg.upstream_timeout);
        timer.async_wait([self = shared_from_this()](error_code ec) {
            if (!ec) self->fail();
        });
        error_code ec;
        // connect() makes the kernel drop datagrams from any other source.
        usock.open(owner->cfg.upstream.protocol(), ec);
        if (!ec) usock.connect(owner->cfg.upstream, ec);
        if (!ec) usock.non_blocking(true, ec);
        if (!ec) usock.send(asio::buffer(query), 0, ec);
        if (ec) return fail();
        receive_udp();
    }

    void receive_udp() {
        usock.async_receive(asio::buffer(buf), [self = shared_from_this()](error_code ec, size_t n) {
            if (self->done) return;
            // ECONNREFUSED from an ICMP port unreachable: nobody listens.
            if (ec) return self->fail();
            std::span<const uint8_t> ans(self->buf.data(), n);
            if (!answer_matches(self->fwd, self->upstream_id, ans)) return self->receive_udp();
            if (n >= 3 && (ans[2] & 0x02)) return self->start_tcp();
            self->complete(ans);
        });
    }

    void start_tcp() {
        error_code ignored;
        usock.close(ignored);
        tcp::endpoint ep(owner->cfg.upstream.address(), owner->cfg.upstream.port());
        tsock.async_connect(ep, [self = shared_from_this()](error_code ec) {
            if (self->done) return;
            if (ec) return self->fail();
            self->query = framed(self->query);
            asio::async_write(self->tsock, asio::buffer(self->query), [self](error_code ec, size_t) {
                if (self->done) return;
                if (ec) return self->fail();
                self->read_tcp();
            });
        });
    }

    void read_tcp() {
        asio::async_read(tsock, asio::buffer(len_buf), [self = shared_from_this()](error_code ec, size_t) {
            if (self->done) return;
            if (ec) return self->fail();
            const size_t len = size_t(self->len_buf[0]) << 8 | self->len_buf[1];
            asio::async_read(self->tsock, asio::buffer(self->buf.data(), len), [self](error_code ec, size_t n) {
                if (self->done) return;
                if (ec) return self->fail();
                std::span<const uint8_t> ans(self->buf.data(), n);
                // A TCP stream is harder to spoof, but the answer must still be ours.
                if (!answer_matches(self->fwd, self->upstream_id, ans)) return self->fail();
                self->complete(ans);
            });
        });
    }

    void complete(std::span<const uint8_t> ans) {
        auto v = owner->current_view();
        std::optional<HostMatch> match;
        {
            // The view's matcher may reference state its owner frees after stop().
            std::lock_guard lk(owner->cb_mu);
            if (owner->stopped) return finish({});
            if (v->match_host) match = v->match_host(fwd.name);
        }
        if (!match || match->deny) {
            // The policy was reloaded during the lookup and no longer allows the name.
            return refuse(Verdict::denied, make_error_reply(fwd, kNxdomain));
        }
        UpstreamResult r = process_upstream_answer(fwd, ans, *match, owner->cfg.ttl);
        if (!r.ok) return refuse(Verdict::upstream_error, std::move(r.reply));
        if (!r.admissions.empty()) {
            std::unique_lock lk(owner->cb_mu);
            if (owner->stopped) return finish({});
            try {
                owner->admitter.admit(r.admissions, *match);
                owner->n_admissions += r.admissions.size();
            } catch (const QuotaExceeded&) {
                lk.unlock();
                return refuse(Verdict::quota, make_servfail(fwd));
            } catch (...) {
                lk.unlock();
                return refuse(Verdict::upstream_error, make_servfail(fwd));
            }
        }
        finish(std::move(r.reply));
    }

    void fail() {
        if (done || refused) return;
        refuse(Verdict::upstream_error, make_servfail(fwd));
    }

    // The refusal is reported first; REPLY goes out once the report is done.
    void refuse(Verdict v, Bytes reply) {
        refused = true;
        error_code ignored;
        timer.cancel();
        usock.close(ignored);
        tsock.close(ignored);
        owner->event_then(fwd.name, fwd.qtype, v, origin,
                          [self = shared_from_this(), reply = std::move(reply)]() mutable { self->finish(std::move(reply)); });
    }

    void cancel() { finish({}); }

    void finish(Bytes reply) {
        if (done) return;
        done = true;
        error_code ignored;
        timer.cancel();
        usock.close(ignored);
        tsock.close(ignored);
        auto keep = shared_from_this();  // through deliver(), which may drop the last other reference
        owner->lookups.erase(this);
        // Always called, empty included: a TCP connection counts its replies.
        deliver(std::move(reply), fwd);
    }
};

struct Responder::Impl::TcpConn : std::enable_shared_from_this<TcpConn> {
    TcpConn(std::shared_ptr<Impl> o, tcp::socket s, std::vector<std::shared_ptr<ConnectionBudget>> b)
        : owner(std::move(o)), sock(std::move(s)), idle(owner->strand), budgets(std::move(b)) {
        ++owner->n_tcp_open;
    }
    ~TcpConn() {
        for (auto& b : budgets) b->give_back();
        --owner->n_tcp_open;
    }

    std::shared_ptr<Impl> owner;
    tcp::socket sock;
    asio::steady_timer idle;
    std::vector<std::shared_ptr<ConnectionBudget>> budgets;  // taken on accept, given back when freed
    std::array<uint8_t, 2> len_buf{};
    Bytes body;
    std::deque<Bytes> out;
    size_t out_bytes = 0;
    size_t pending = 0;  // lookups whose reply is still to come
    bool reading = false;
    bool closed = false;

    void start() {
        arm_idle();
        read_query();
    }

    // Re-armed only by progress (a query read, an answer written). Queued
    // output is not progress: a client that pipelines and never reads is cut
    // off after the idle timeout, however much it still has to receive.
    void arm_idle() {
        idle.expires_after(owner->cfg.tcp_idle_timeout);
        idle.async_wait([self = shared_from_this()](error_code ec) {
            if (ec || self->closed) return;
            // Waiting for the upstream only: lookups end within their own timeout.
            if (self->pending > 0 && self->out.empty()) return self->arm_idle();
            if (!self->out.empty()) ++self->owner->n_tcp_cut;
            self->close();
        });
    }

    bool may_read() const {
        return !closed && !reading && pending < owner->cfg.max_tcp_pipeline &&
               out_bytes < owner->cfg.max_tcp_queued_bytes;
    }

    void read_query() {
        if (!may_read()) return;
        reading = true;
        asio::async_read(sock, asio::buffer(len_buf), [self = shared_from_this()](error_code ec, size_t) {
            if (self->closed) return;
            if (ec) return self->close();
            const size_t len = size_t(self->len_buf[0]) << 8 | self->len_buf[1];
            self->body.resize(len);
            asio::async_read(self->sock, asio::buffer(self->body), [self](error_code ec, size_t) {
                self->reading = false;
                if (self->closed) return;
                if (ec) return self->close();
                self->arm_idle();
                ++self->pending;
                // Strong: the connection must outlive the lookups it awaits.
                auto reply = [self](Bytes b) { self->send(std::move(b)); };
                auto forwarded = [self](Bytes b, const Forward&) { self->send(std::move(b)); };
                Bytes q = std::move(self->body);
                error_code pe;
                auto rp = self->sock.remote_endpoint(pe);
                QueryOrigin origin{rp.address(), rp.port(), true};
                self->owner->handle(q.data(), q.size(), origin, reply, forwarded);
                self->read_query();
            });
        });
    }

    // Every query ends here exactly once (empty: dropped, nothing to write).
    void send(Bytes msg) {
        if (pending > 0) --pending;
        if (closed) return;
        if (!msg.empty()) {
            out.push_back(framed(msg));
            out_bytes += out.back().size();
            if (out.size() == 1) write_next();
        }
        read_query();
    }

    void write_next() {
        asio::async_write(sock, asio::buffer(out.front()), [self = shared_from_this()](error_code ec, size_t) {
            if (self->closed) return;
            if (ec) return self->close();
            self->out_bytes -= self->out.front().size();
            self->out.pop_front();
            self->arm_idle();
            if (!self->out.empty()) self->write_next();
            self->read_query();
        });
    }

    void close() {
        if (closed) return;
        closed = true;
        error_code ignored;
        idle.cancel();
        sock.close(ignored);
        out.clear();
        out_bytes = 0;
        owner->conns.erase(this);
    }
};

void Responder::Impl::handle(const uint8_t* data, size_t len, const QueryOrigin& origin,
                             std::function<void(Bytes)> deliver,
                             std::function<void(Bytes, const Forward&)> deliver_forwarded) {
    ++n_queries;
    auto v = current_view();
    QueryAction act;
    {
        // The view's matcher may reference state its owner frees after stop().
        std::lock_guard lk(cb_mu);
        if (stopped) return deliver({});
        act = handle_query(std::span<const uint8_t>(data, len), *v);
    }
    if (auto* r = std::get_if<Reply>(&act)) {
        if (r->verdict != Verdict::inference) {
            return event_then(r->name, r->qtype, r->verdict, origin,
                              [deliver, w = std::move(r->wire)]() mutable { deliver(std::move(w)); });
        }
        ++n_local;
        deliver(std::move(r->wire));
        return;
    }
    if (std::holds_alternative<Drop>(act)) {
        deliver({});
        return;
    }
    auto& fwd = std::get<Forward>(act);
    if (lookups.size() >= cfg.max_inflight) {
        return event_then(fwd.name, fwd.qtype, Verdict::overloaded, origin,
                          [deliver, w = make_servfail(fwd)]() mutable { deliver(std::move(w)); });
    }
    ++n_forwarded;
    auto l = std::make_shared<Lookup>(shared_from_this(), std::move(fwd), std::move(deliver_forwarded));
    l->origin = origin;
    lookups.emplace(l.get(), l);
    l->start();
}

void Responder::Impl::bind_device(int fd, error_code& ec) const {
    if (cfg.device.empty()) return;
    if (::setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, cfg.device.c_str(), static_cast<socklen_t>(cfg.device.size())))
        ec = error_code(errno, boost::system::system_category());
}

void Responder::Impl::bind() {
    const udp::endpoint uep(cfg.listen, cfg.port);
    const std::string where = cfg.listen.to_string() + ":" + std::to_string(cfg.port);
    // With port 0 the kernel picks a free UDP port that TCP may still hold; retry.
    for (int attempt = 0;; ++attempt) {
        error_code ec;
        udp_sock.close(ec);
        acceptor.close(ec);
        udp_sock.open(uep.protocol(), ec);
        if (!ec) bind_device(udp_sock.native_handle(), ec);
        if (!ec) udp_sock.bind(uep, ec);
        if (ec) throw Error("DNS responder: cannot bind UDP " + where + ": " + ec.message());
        const uint16_t port = udp_sock.local_endpoint().port();
        const tcp::endpoint tep(cfg.listen, port);
        acceptor.open(tep.protocol(), ec);
        if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
        if (!ec) bind_device(acceptor.native_handle(), ec);
        if (!ec) acceptor.bind(tep, ec);
        if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
        if (!ec) {
            bound_port = port;
            break;
        }
        if (cfg.port != 0 || attempt >= 32) {
            throw Error("DNS responder: cannot bind TCP " + cfg.listen.to_string() + ":" + std::to_string(port) +
                        ": " + ec.message());
        }
    }
    // Replies are sent synchronously: a full loopback socket buffer drops the
    // reply as the network would, rather than stalling the strand.
    udp_sock.non_blocking(true);
}

void Responder::Impl::close_all() {
    error_code ignored;
    udp_sock.close(ignored);
    acceptor.close(ignored);
    accept_backoff.cancel();
    std::vector<std::shared_ptr<Lookup>> ls;
    for (auto& [p, w] : lookups)
        if (auto l = w.lock()) ls.push_back(std::move(l));
    for (auto& l : ls) l->cancel();
    std::vector<std::shared_ptr<TcpConn>> cs;
    for (auto& [p, w] : conns)
        if (auto c = w.lock()) cs.push_back(std::move(c));
    for (auto& c : cs) c->close();
}

std::optional<std::vector<std::shared_ptr<ConnectionBudget>>> Responder::Impl::take_budgets() {
    if (conns.size() >= cfg.max_tcp_connections) return std::nullopt;
    std::vector<std::shared_ptr<ConnectionBudget>> taken;
    for (auto& b : cfg.tcp_budgets) {
        if (!b->try_take()) {
            for (auto& t : taken) t->give_back();
            return std::nullopt;
        }
        taken.push_back(b);
    }
    return taken;
}

void Responder::Impl::udp_receive() {
    udp_sock.async_receive_from(asio::buffer(udp_buf), udp_peer, [self = shared_from_this()](error_code ec, size_t n) {
        if (ec == asio::error::operation_aborted || !self->udp_sock.is_open()) return;
        if (!ec) {
            const udp::endpoint peer = self->udp_peer;
            std::weak_ptr<Impl> weak = self;
            auto send = [weak, peer](const Bytes& b) {
                auto s = weak.lock();
                if (!s || b.empty() || !s->udp_sock.is_open()) return;
                error_code ignored;
                s->udp_sock.send_to(asio::buffer(b), peer, 0, ignored);
            };
            auto reply = [send](Bytes b) { send(b); };
            auto forwarded = [send](Bytes b, const Forward& f) {
                if (b.empty()) return;
                send(b.size() > f.client_udp_size ? make_truncated(f) : b);
            };
            self->handle(self->udp_buf.data(), n, QueryOrigin{peer.address(), peer.port(), false}, reply, forwarded);
        }
        // Errors on an unconnected UDP socket (e.g. ICMP from a vanished
        // client) concern one datagram, not the socket: keep serving.
        self->udp_receive();
    });
}

void Responder::Impl::tcp_accept() {
    // Accepted sockets get our strand, so connection state is touched serially.
    acceptor.async_accept(strand, [self = shared_from_this()](error_code ec, auto s) {
        if (ec == asio::error::operation_aborted || !self->acceptor.is_open()) return;
        // Short of file descriptors (EMFILE, ENFILE, or the agent keeping its
        // reserve): the error persists for a while, so back off instead of
        // spinning, doubling the pause up to 1 s.
        const bool fd_short = ec || (self->cfg.accept_allowed && !self->cfg.accept_allowed());
        if (fd_short) {
            if (!ec) ++self->n_tcp_refused;  // `s` closes here
            ++self->n_accept_backoffs;
            self->backoff = std::min<std::chrono::milliseconds>(
                std::chrono::milliseconds(1000),
                self->backoff.count() ? self->backoff * 2 : self->cfg.accept_backoff);
            self->accept_backoff.expires_after(self->backoff);
            self->accept_backoff.async_wait([self](error_code e) {
                if (!e && self->acceptor.is_open()) self->tcp_accept();
            });
            return;
        }
        self->backoff = std::chrono::milliseconds(0);
        if (auto taken = self->take_budgets()) {
            // The kernel's send buffer is output queued for the client too:
            // bound it like ours, or a non-reading client parks megabytes there.
            error_code ignored;
            s.set_option(asio::socket_base::send_buffer_size(
                             static_cast<int>(std::max<size_t>(self->cfg.max_tcp_queued_bytes, 4096))),
                         ignored);
            auto c = std::make_shared<TcpConn>(self, tcp::socket(std::move(s)), std::move(*taken));
            self->conns.emplace(c.get(), c);
            c->start();
        } else {
            ++self->n_tcp_refused;  // over a cap: `s` closes here
        }
        self->tcp_accept();
    });
}

Responder::Responder(asio::io_context& io, ResponderConfig cfg, SandboxView view, Admitter& admitter,
                     EventHook on_event)
    : impl_(std::make_shared<Impl>(io, std::move(cfg), std::move(view), admitter, std::move(on_event))) {}

Responder::~Responder() { stop(); }

void Responder::set_deferring_event_hook(DeferringEventHook hook) {
    std::lock_guard lk(impl_->cb_mu);
    impl_->on_event_deferring = std::move(hook);
}

void Responder::start() {
    auto impl = impl_;
    // Binding happens here, on the caller's thread, so errors reach the caller;
    // nothing else touches the sockets until the handlers below are started.
    impl->bind();
    asio::dispatch(impl->strand, [impl] {
        impl->udp_receive();
        impl->tcp_accept();
    });
}

void Responder::stop() {
    auto impl = impl_;
    {
        std::lock_guard lk(impl->cb_mu);
        if (impl->stopped) return;
        impl->stopped = true;
    }
    asio::dispatch(impl->strand, [impl] { impl->close_all(); });
}

void Responder::set_view(SandboxView view) {
    auto v = std::make_shared<const SandboxView>(std::move(view));
    std::lock_guard lk(impl_->view_mu);
    impl_->view = std::move(v);
}

uint16_t Responder::port() const { return impl_->bound_port; }

ResponderStats Responder::stats() const {
    ResponderStats s;
    s.queries = impl_->n_queries;
    s.answered_locally = impl_->n_local;
    s.forwarded = impl_->n_forwarded;
    s.refused = impl_->n_refused;
    s.admissions = impl_->n_admissions;
    s.tcp_open = impl_->n_tcp_open;
    s.tcp_refused = impl_->n_tcp_refused;
    s.tcp_cut = impl_->n_tcp_cut;
    s.accept_backoffs = impl_->n_accept_backoffs;
    return s;
}

}  // namespace redir::dns
