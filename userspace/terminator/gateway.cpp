// All of the terminator's Beast code lives in this one translation unit: it
// is by far the heaviest thing to compile, and the agent links it once.
#include "terminator/gateway.hpp"
#include "terminator/provider_fetch.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <spdlog/spdlog.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ip/basic_resolver.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <deque>
#include <filesystem>
#include <limits>
#include <span>
#include <thread>

#include "common/error.hpp"
#include "terminator/arena.hpp"
#include "terminator/flat_fields.hpp"
#include "terminator/head.hpp"
#include "terminator/mock.hpp"
#include "terminator/tls_stream.hpp"
#include "terminator/upstream_tls.hpp"
#include "terminator/wire.hpp"

namespace redir::terminator {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
// Coroutines on the io thread's own executor type: no type-erased executor
// is copied, compared or destroyed on the hot path.
template <class T>
using Task = asio::awaitable<T, Executor>;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable_t<Executor>{});
// Header fields of the request path's parsed messages (flat_fields.hpp),
// and the heads it writes, live in the connection's RequestArena (see ClientConn).
using ArenaAlloc = RequestArena::Alloc;
// The provider's answer header: at most this many bytes.
constexpr std::uint32_t kProviderHeaderLimit = 64 * 1024;
// At most this much is read from a provider at once (Beast's read operations' size).
constexpr std::size_t kProviderReadSize = 64 * 1024;
// Room the provider request's head starts with in the arena (a usual one
// fits; a larger one grows it by doubling).
constexpr std::size_t kHeadReserve = 1024;

namespace {

std::string seconds(std::chrono::milliseconds d) {
    if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
    return std::to_string(d.count()) + " ms";
}

// Which idle provider connections a request may take: same host, port and
// trust. Looked up through a view of the request's own strings, so finding a
// pooled connection builds no string; a connection owns its key.
struct PoolKeyRef {
    std::string_view host;
    std::uint16_t port = 0;
    std::string_view ca_file;
};
struct PoolKey {
    std::string host;
    std::uint16_t port = 0;
    std::string ca_file;
    explicit PoolKey(const PoolKeyRef& r) : host(r.host), port(r.port), ca_file(r.ca_file) {}
};
struct PoolKeyLess {
    using is_transparent = void;
    static PoolKeyRef view(const PoolKey& k) { return {k.host, k.port, k.ca_file}; }
    static PoolKeyRef view(const PoolKeyRef& k) { return k; }
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
        const PoolKeyRef x = view(a), y = view(b);
        return std::tie(x.host, x.port, x.ca_file) < std::tie(y.host, y.port, y.ca_file);
    }
};

struct UpstreamConn {
    std::shared_ptr<asio::ssl::context> ctx;
    TlsStream s;
    beast::flat_buffer buf;
    std::optional<PoolKey> key;
    Clock::time_point idle_since{};
    bool reused = false;
    UpstreamConn(const Executor& ex, std::shared_ptr<asio::ssl::context> c)
        : ctx(std::move(c)), s(Socket(ex), new_ssl(ctx->native_handle())) {}
    void close() {
        beast::error_code ec;
        s.socket().close(ec);
    }
    static SslPtr new_ssl(SSL_CTX* c) {
        SslPtr ssl(SSL_new(c));
        if (!ssl) throw Error("cannot create a TLS connection to a provider (SSL_new failed: out of memory?)");
        return ssl;
    }
};

// Kept-alive provider connections by (host, port, trust).
class Pool {
public:
    static constexpr std::chrono::seconds kCheckAfter{1};
    std::unique_ptr<UpstreamConn> take(const PoolKeyRef& key, std::chrono::milliseconds idle_timeout) {
        auto it = idle_.find(key);
        if (it == idle_.end()) return nullptr;
        auto& q = it->second;
        while (!q.empty()) {
            auto c = std::move(q.back());
            q.pop_back();
            const auto idle = Clock::now() - c->idle_since;
            if (idle > idle_timeout) continue;
            // Anything readable on an idle connection is the provider closing
            // it (FIN or close_notify): not reusable. Providers close idle
            // connections after seconds, not within one: a connection idle
            // for less is not asked (a system call per request), and if it
            // was closed after all, the stale retry of exchange() covers it.
            if (idle >= kCheckAfter) {
                pollfd pfd{beast::get_lowest_layer(c->s).socket().native_handle(), POLLIN, 0};
                if (::poll(&pfd, 1, 0) != 0) continue;
            }
            c->reused = true;
            return c;
        }
        return nullptr;
    }
    void put(std::unique_ptr<UpstreamConn> c, std::size_t max, std::chrono::milliseconds idle_timeout) {
        auto it = idle_.find(*c->key);
        if (it == idle_.end()) it = idle_.emplace(*c->key, std::deque<std::unique_ptr<UpstreamConn>>{}).first;
        auto& q = it->second;
        auto now = Clock::now();
        while (!q.empty() && now - q.front()->idle_since > idle_timeout) q.pop_front();
        c->idle_since = now;
        q.push_back(std::move(c));
        while (q.size() > max) q.pop_front();
    }
    void clear() { idle_.clear(); }

private:
    std::map<PoolKey, std::deque<std::unique_ptr<UpstreamConn>>, PoolKeyLess> idle_;
};

// The buffer a connection reads its next request's body into: the last
// body's, so a usual request's body costs no allocation. One larger than
// kKept is not kept (a sandbox's huge body does not stay pinned by its idle
// connection); what is kept is counted in GAUGE.
class BodyBuffer {
public:
    // As much as the relay buffer: 1,000 idle connections keep 16 MB at most.
    static constexpr std::size_t kKept = 16 * 1024;
    explicit BodyBuffer(std::atomic<std::uint64_t>* gauge) : gauge_(gauge) {}
    BodyBuffer(const BodyBuffer&) = delete;
    BodyBuffer& operator=(const BodyBuffer&) = delete;
    ~BodyBuffer() { count(0); }
    // Into BODY (a parser's, still empty) before the body is read.
    void lend(std::string& body) {
        if (!body.empty()) return;
        body.swap(kept_);
        count(0);
    }
    // Back from BODY once its bytes are no longer needed.
    void take_back(std::string& body) {
        if (heap_bytes(body) == 0) return;  // no body was read into it: what is kept stays
        body.clear();
        if (body.capacity() > kKept) std::string().swap(body);
        kept_.swap(body);
        count(heap_bytes(kept_));
    }

private:
    static std::size_t heap_bytes(const std::string& s) {
        return s.capacity() > std::string().capacity() ? s.capacity() : 0;
    }
    void count(std::size_t n) {
        if (n == counted_) return;
        if (gauge_) {
            gauge_->fetch_add(n, std::memory_order_relaxed);
            gauge_->fetch_sub(counted_, std::memory_order_relaxed);
        }
        counted_ = n;
    }
    std::string kept_;
    std::size_t counted_ = 0;
    std::atomic<std::uint64_t>* gauge_;
};

// What a client connection keeps from one request to the next: its read
// buffer, the arena of its requests' header fields, its last request body's
// buffer (capped), and the buffer the provider's answers are relayed through
// (allocated on the first provider call, none for idle connections).
struct ClientWatch;
// What the connection's last request was decided under: its sandbox's
// policy (sandbox_inference) and the store's snapshot of its route, with the
// generations read before they were asked. The next request reuses them
// while its cgroup and both generations still read the same; anything else
// (a reload, an attach or detach, `inference set/update`, a provider
// change, a generation that cannot be told: 0) asks again.
struct DecisionCache {
    std::uint64_t cgroup_id = 0;
    std::uint64_t policy_generation = 0;  // 0: never reused
    std::uint64_t store_generation = 0;
    SandboxInference policy;
    std::shared_ptr<const Snapshot> snap;
};

struct ClientConn {
    static constexpr std::size_t kRelayBuffer = 16 * 1024;
    // Holds the two parsed field sets and the two written heads of a usual
    // proxied request (a few dozen fields) without touching the heap.
    static constexpr std::size_t kArenaInline = 8 * 1024;
    ClientConn(std::size_t arena_cap, std::atomic<std::uint64_t>* arena_gauge,
               std::atomic<std::uint64_t>* body_gauge)
        : arena(kArenaInline, arena_cap, arena_gauge), body(body_gauge) {}
    beast::flat_buffer buf;
    RequestArena arena;
    BodyBuffer body;
    ReusedHeaders client_headers;  // the request's headers, lower-cased, for the allowlist and the fetch scan
    std::unique_ptr<char[]> relay;
    std::shared_ptr<ClientWatch> watch;  // the last provider call's, reused when nothing holds it any more
    DecisionCache decision;              // what the request being served (or the last one) was decided under
    std::span<char> relay_buffer() {
        if (!relay) relay.reset(new char[kRelayBuffer]);
        return {relay.get(), kRelayBuffer};
    }
};

struct Failure {
    int status = 502;
    std::string message;
};

// Watches the client while the provider works, so that a sandbox that hangs
// up stops the provider request instead of letting it run (and bill) on.
// Only calls still in flight after kWatchAfter are watched (model calls take
// seconds; a quick answer is not worth a system call): first a readiness
// peek at the socket (no read, no TLS work), and only bytes arriving mid-call
// (a pipelined request, a TLS close_notify) start a real read of the stream.
struct ClientWatch {
    static constexpr std::chrono::milliseconds kWatchAfter{100};
    explicit ClientWatch(const Executor& ex) : done(ex) { done.expires_at(Clock::time_point::max()); }
    bool over = false;      // the call is over: a late completion touches nothing but this object
    bool reading = false;   // a read of the stream is under way (DONE fires when it ends)
    bool finished = false;  // that read has ended
    bool gone = false;
    bool answered = false;  // the whole answer was handed to the sandbox's socket
    UpstreamConn* upstream = nullptr;
    char peeked = 0;  // where the readiness peek puts its byte (left in the socket)
    Timer done;
    // In the io thread's list of calls not watched yet (Impl::await_watch).
    bool watching = false;
    bool queued = false;
    Clock::time_point since{};
    ClientWatch* prev = nullptr;
    ClientWatch* next = nullptr;
    void (*start)(void*) = nullptr;  // starts the watch (its argument lives in the call's frame)
    void* start_arg = nullptr;
    void hung_up() {
        gone = true;
        if (upstream) upstream->close();
    }
    // Ready for the connection's next provider call.
    void reset() {
        over = reading = finished = gone = answered = watching = false;
        upstream = nullptr;
    }
};

template <class Stream>
void close_stream(Stream& s) {
    if constexpr (std::is_same_v<Stream, TlsStream>) {
        s.close();  // what it holds leaves first
    } else {
        beast::error_code ec;
        auto& sock = beast::get_lowest_layer(s).socket();
        sock.shutdown(Socket::shutdown_both, ec);
        sock.close(ec);
    }
}

}  // namespace

// What every io thread of the gateway shares: configuration, caps, counters.
// Everything here is safe to use from any thread.
struct Gateway::Shared {
    Shared(std::shared_ptr<Store> st, GatewayOptions o)
        : store(std::move(st)), opts(std::move(o)),
          conns(Quota::make({opts.max_connections_per_sandbox, opts.max_connections_total})),
          body_bytes(Quota::make({opts.body_bytes_per_sandbox, opts.body_bytes_total})) {}

    std::shared_ptr<Store> store;
    const GatewayOptions opts;
    std::shared_ptr<Quota> conns;       // connections per sandbox and in total
    std::shared_ptr<Quota> body_bytes;  // request bodies in memory
    RefusalThrottle throttle;
    GatewayStats stats;
    std::atomic<bool> stopped{false};

    void refused(const ConnInfo& info, std::string limit, std::uint64_t cap) {
        LimitRefusal r{std::move(limit), cap, 0};
        if (opts.on_refused && throttle.should_record(info.cgroup_id, r.suppressed)) opts.on_refused(info, r);
    }

    // A connection ticket for INFO's sandbox, or an empty one (refusal reported).
    Quota::Ticket admit(const ConnInfo& info) {
        Quota::Refusal why{};
        auto t = conns->try_acquire(info.cgroup_id, 1, &why);
        if (t) {
            ++stats.connections_accepted;
        } else if (why == Quota::Refusal::Sandbox) {
            ++stats.refused_sandbox_connections;
            refused(info, "connections_per_sandbox", conns->caps().per_sandbox);
        } else {
            ++stats.refused_total_connections;
            refused(info, "connections_total", conns->caps().total);
        }
        return t;
    }

    void record(const RequestLog& r) {
        const auto& lg = opts.access_log ? opts.access_log : spdlog::default_logger();
        // The line is only built for a logger that writes it (the agent's
        // records go to the audit log through on_request, built there once).
        if (lg && lg->should_log(spdlog::level::info)) lg->info("{}", request_log_line(r));
        if (opts.on_request) opts.on_request(r);
    }
};

// One io thread's part of the gateway (or, without threads of its own, the
// the caller's io_context's): its executor, its provider connections and TLS contexts.
// Touched only from that executor, so none of it needs a lock.
struct Gateway::Impl : std::enable_shared_from_this<Gateway::Impl> {
    Impl(std::shared_ptr<Shared> sh, Executor e)
        : shared(std::move(sh)), ex(std::move(e)), store(shared->store), opts(shared->opts), stats(shared->stats),
          body_bytes(shared->body_bytes), sweep_timer(ex) {}

    std::shared_ptr<Shared> shared;
    Executor ex;
    // Whether this Impl's streams hold their records to the end of the loop
    // turn (ConnCore::hold_sends): only on an io_context of the gateway's
    // own, which one thread runs (the caller's may have several).
    bool hold_sends = false;
    // Requests being served on this thread now (from the header's first
    // byte to the end of the answer). Its io thread polls for work before
    // sleeping only while there are few (poll_loop.hpp): one call's answer
    // comes after a short, predictable gap; many calls' work comes as a
    // stream on a busy machine.
    std::size_t calls = 0;
    static constexpr std::size_t kPollWhileCallsAtMost = 4;
    // The shared parts under the names the request code uses.
    std::shared_ptr<Store> store;
    const GatewayOptions& opts;
    GatewayStats& stats;
    std::shared_ptr<Quota> body_bytes;
    Pool pool;
    struct CtxEntry {
        std::shared_ptr<asio::ssl::context> ctx;
        std::filesystem::file_time_type mtime;
    };
    std::map<std::string, CtxEntry> ctxs;

    // Provider calls whose sandbox is not watched yet, oldest first; one
    // timer for all of them starts the watch of those past kWatchAfter.
    ClientWatch* unwatched_head = nullptr;
    ClientWatch* unwatched_tail = nullptr;
    Timer sweep_timer;
    bool sweep_armed = false;

    void await_watch(ClientWatch& w) {
        w.since = Clock::now();
        w.queued = true;
        w.prev = unwatched_tail;
        w.next = nullptr;
        (unwatched_tail ? unwatched_tail->next : unwatched_head) = &w;
        unwatched_tail = &w;
        if (!sweep_armed) arm_sweep(w.since + ClientWatch::kWatchAfter);
    }
    void forget_watch(ClientWatch& w) {
        if (!w.queued) return;
        w.queued = false;
        (w.prev ? w.prev->next : unwatched_head) = w.next;
        (w.next ? w.next->prev : unwatched_tail) = w.prev;
        w.prev = w.next = nullptr;
    }
    void arm_sweep(Clock::time_point at) {
        sweep_armed = true;
        sweep_timer.expires_at(at);
        sweep_timer.async_wait([self = shared_from_this()](const beast::error_code& ec) {
            self->sweep_armed = false;
            if (!ec) self->sweep();
        });
    }
    void sweep() {
        const auto now = Clock::now();
        while (unwatched_head && unwatched_head->since + ClientWatch::kWatchAfter <= now) {
            ClientWatch& w = *unwatched_head;
            forget_watch(w);
            w.watching = true;
            w.start(w.start_arg);
        }
        if (unwatched_head) arm_sweep(unwatched_head->since + ClientWatch::kWatchAfter);
    }

    bool stopped() const { return shared->stopped; }
    void refused(const ConnInfo& info, std::string limit, std::uint64_t cap) {
        shared->refused(info, std::move(limit), cap);
    }
    void record(const RequestLog& r) { shared->record(r); }

    // Rebuilt when the CA file changes, so a rotated provider CA applies
    // without a restart.
    std::shared_ptr<asio::ssl::context> client_ctx(const std::string& ca_file) {
        std::filesystem::file_time_type mtime{};
        if (!ca_file.empty()) {
            std::error_code ec;
            mtime = std::filesystem::last_write_time(ca_file, ec);
            if (ec) throw Error("cannot read CA file " + ca_file + ": " + ec.message());
        }
        auto it = ctxs.find(ca_file);
        if (it != ctxs.end() && it->second.mtime == mtime) return it->second.ctx;
        auto ctx = make_client_ssl_ctx(ca_file);
        ctxs[ca_file] = CtxEntry{ctx, mtime};
        return ctx;
    }
};

namespace {

using Impl = Gateway::Impl;

// How a request ends early: an error answer (STATUS != 0), or the connection
// simply closed (STATUS 0: nothing sensible can be sent any more).
struct Stop {
    int status = 0;
    std::string message;
    bool keep_alive = false;
    HeaderList headers;
};
Stop close_silently() { return {}; }
Stop refuse(int status, std::string message, bool keep_alive = false, HeaderList headers = {}) {
    return Stop{status, std::move(message), keep_alive, std::move(headers)};
}

// A write to the sandbox that hit the write timeout: the sandbox stopped
// reading, and the connection (with its bounded output) is dropped.
void note_write(Impl& gw, const beast::error_code& ec) {
    if (ec == beast::error::timeout) ++gw.stats.write_timeouts;
}

// A read that failed because the connection's held records, left to a
// background flush at the end of a turn, did not leave in time
// (ConnCore::held_flush_limit): the sandbox stopped reading its last answer
// while the session already waited for its next request. A write timeout.
template <class Stream>
void note_held_output(Impl& gw, const Stream& s) {
    if (s.output_timed_out()) ++gw.stats.write_timeouts;
}

// Hands SR's message to S's socket without waiting, as far as the socket
// takes it: on a TLS stream each record goes to the socket at once, so the
// common case costs no coroutine frame, no operation and no scheduler pass
// (an asynchronous write that completes at once is completed through a
// post, and at one connection the sandbox's next request is usually
// waiting by then). True: done, EC says how (need_buffer: a buffer_body's
// piece went out whole); false: records wait in the stream's queue, or S is
// cleartext — finish with write_message().
template <class Stream, bool isRequest, class Body, class Fields>
bool write_at_once(Stream& s, http::serializer<isRequest, Body, Fields>& sr, beast::error_code& ec) {
    ec = {};
    if constexpr (!std::is_same_v<Stream, TlsStream>) {
        return false;
    } else {
        sr.split(false);
        while (!sr.is_done()) {
            std::size_t n = 0;
            sr.next(ec, [&](beast::error_code& e, const auto& buffers) { n = s.write_now(buffers, e); });
            if (ec) return true;
            sr.consume(n);
            if (s.output_pending()) return false;
        }
        return true;
    }
}

// Up to three buffers written as one message (a head or a chunk's framing,
// the data, the framing after it), consumed from the front as the stream
// takes them. Empty parts are left out: TlsStream writes a lone buffer
// without gathering it into its scratch copy.
class Gather {
public:
    Gather(std::initializer_list<std::string_view> parts) {
        for (auto p : parts)
            if (!p.empty() && n_ < b_.size()) b_[n_++] = asio::const_buffer(p.data(), p.size());
    }
    explicit Gather(const wire::BodyFramer::Parts& p) : Gather({p.before, p.data, p.after}) {}
    std::span<const asio::const_buffer> buffers() const { return {b_.data() + first_, n_ - first_}; }
    bool empty() const { return first_ == n_; }
    void consume(std::size_t n) {
        while (n != 0 && first_ < n_) {
            const std::size_t take = std::min(n, b_[first_].size());
            b_[first_] += take;
            n -= take;
            if (b_[first_].size() == 0) ++first_;
        }
    }

private:
    std::array<asio::const_buffer, 3> b_{};
    std::size_t n_ = 0;
    std::size_t first_ = 0;
};

// write_at_once() for bytes already framed: one record per write_now, as
// many as the socket takes without waiting.
template <class Stream>
bool write_at_once(Stream& s, Gather& out, beast::error_code& ec) {
    ec = {};
    if constexpr (!std::is_same_v<Stream, TlsStream>) {
        return false;
    } else {
        while (!out.empty()) {
            const std::size_t n = s.write_now(out.buffers(), ec);
            if (ec) return true;
            out.consume(n);
            if (s.output_pending()) return false;
        }
        return true;
    }
}

// A whole message on a cleartext stream: Beast's write for a serializer,
// Asio's for bytes already framed.
template <class Stream, bool isRequest, class Body, class Fields>
auto write_plain(Stream& s, http::serializer<isRequest, Body, Fields>& sr) {
    return http::async_write(s, sr, use_tuple);
}
template <class Stream>
auto write_plain(Stream& s, Gather& out) {
    return asio::async_write(s, out.buffers(), use_tuple);
}

// The rest of MSG (a serializer's message, or bytes already framed),
// waiting for the socket as long as the write deadline allows (what
// http::async_write does).
template <class Stream, class Message>
Task<beast::error_code> write_message(Stream& s, Message& msg) {
    if constexpr (!std::is_same_v<Stream, TlsStream>) {
        auto [ec, n] = co_await write_plain(s, msg);
        co_return ec;
    } else {
        for (;;) {
            if (s.output_pending()) {
                auto [fec, fn] = co_await s.async_flush(use_tuple);
                if (fec) co_return fec;
            }
            beast::error_code ec;
            if (write_at_once(s, msg, ec)) co_return ec;
        }
    }
}

// The next part of a message into P from bytes already read, parsed here
// (no read operation, no scheduler pass). True: done, EC says how; false:
// nothing buffered, or not enough — read with http::async_read_some.
template <class Parser>
bool parse_buffered(beast::flat_buffer& buf, Parser& p, beast::error_code& ec) {
    ec = {};
    if (buf.size() == 0) return false;
    buf.consume(p.put(buf.data(), ec));
    return ec != http::error::need_more;
}

template <class Stream>
Task<bool> send_body(Impl& gw, Stream& s, int status, std::string content_type, std::string body,
                          bool keep_alive, RequestLog& log, const HeaderList& extra = {}) {
    http::response<http::string_body> res{static_cast<http::status>(status), 11};
    res.set(http::field::content_type, content_type);
    for (const auto& [n, v] : extra) res.set(n, v);
    res.body() = std::move(body);
    res.keep_alive(keep_alive);
    res.prepare_payload();
    log.status = status;
    log.bytes_out += res.body().size();
    beast::get_lowest_layer(s).expires_after(gw.opts.write_timeout);
    http::response_serializer<http::string_body> sr{res};
    beast::error_code ec;
    if (!write_at_once(s, sr, ec)) ec = co_await write_message(s, sr);
    note_write(gw, ec);
    co_return !ec && keep_alive;
}

template <class Stream>
Task<bool> send_error(Impl& gw, Stream& s, ApiShape shape, int status, std::string message, bool keep_alive,
                           RequestLog& log, const HeaderList& extra = {}) {
    if (log.error.empty()) log.error = message;
    co_return co_await send_body(gw, s, status, "application/json",
                                 error_json(shape, error_type_for_status(shape, status), message), keep_alive, log,
                                 extra);
}

// Sends STOP's answer, if it has one. Returns whether the connection stays open.
template <class Stream>
Task<bool> answer(Impl& gw, Stream& s, ApiShape shape, Stop stop, RequestLog& log) {
    if (stop.status == 0) co_return false;
    co_return co_await send_error(gw, s, shape, stop.status, std::move(stop.message), stop.keep_alive, log,
                                  stop.headers);
}

template <class Stream>
Task<void> read_client(Stream& s, beast::flat_buffer& buf, std::shared_ptr<ClientWatch> w) {
    auto [ec, n] = co_await s.async_read_some(buf.prepare(4096), use_tuple);
    if (!ec) {
        // The next pipelined request: keep it for the session.
        buf.commit(n);
    } else if (ec != asio::error::operation_aborted) {
        w->hung_up();
    }
    w->finished = true;
    w->done.cancel();
}

// A one-byte MSG_PEEK receive on the socket: Asio queues it without a system
// call when the socket is known drained (an async_wait would cost an
// epoll_ctl per request) and performs it when bytes or the FIN arrive.
template <class Stream>
void watch_client(Impl& gw, Stream& s, beast::flat_buffer& buf, std::shared_ptr<ClientWatch> w) {
    auto& sock = beast::get_lowest_layer(s).socket();
    sock.async_receive(asio::buffer(&w->peeked, 1), Socket::message_peek,
                       [&gw, &s, &buf, w](beast::error_code ec, std::size_t n) {
                           // Over: S and BUF may be gone already.
                           if (w->over || ec == asio::error::operation_aborted) return;
                           if (ec || n == 0) return w->hung_up();  // FIN, or an error such as a reset
                           // Bytes (a pipelined request, a TLS close_notify): read them.
                           // Reads are unbounded while watching; writes get their own timeout.
                           beast::get_lowest_layer(s).expires_never();
                           w->reading = true;
                           asio::co_spawn(gw.ex, read_client(s, buf, w), asio::detached);
                       });
}

// Both sides of the proxy: requests and answers are small writes that must
// leave at once (no Nagle), and every read learns whether it emptied the
// socket (TCP_INQ: draining_read.hpp). Failures cost only speed.
void tune(Socket& s) {
    beast::error_code ig;
    s.set_option(tcp::no_delay(true), ig);
    s.set_option(QueueHint(true), ig);
}

std::string provider_where(const Provider& p, const BaseUrl& b) {
    return "provider " + p.name + " (" + b.host_header + ")";
}

// ---- Provider connections: resolve, connect, verify ----

// Endpoints for B's host (an override, an IP literal, or DNS within the deadline).
Task<std::vector<tcp::endpoint>> resolve_upstream(Impl& gw, const BaseUrl& b, Clock::time_point deadline,
                                                       const std::string& where, Failure& f) {
    const auto& o = gw.opts;
    std::vector<tcp::endpoint> eps;
    std::string host = b.host;
    if (auto ov = o.resolve_overrides.find(b.host); ov != o.resolve_overrides.end()) host = ov->second;
    beast::error_code aec;
    auto literal = asio::ip::make_address(host, aec);
    if (!aec) {
        eps.emplace_back(literal, b.port);
        co_return eps;
    }
    auto resolver = std::make_shared<asio::ip::basic_resolver<tcp, Executor>>(gw.ex);
    Timer t(gw.ex);
    t.expires_at(deadline);
    t.async_wait([r = resolver](beast::error_code ec) {
        if (!ec) r->cancel();
    });
    auto [ec, res] = co_await resolver->async_resolve(host, std::to_string(b.port), use_tuple);
    t.cancel();
    if (ec) {
        f = ec == asio::error::operation_aborted
                ? Failure{504, "resolving " + where + " timed out after " + seconds(o.upstream_connect_timeout)}
                : Failure{502, "cannot resolve " + where + ": " + ec.message()};
        co_return eps;
    }
    for (const auto& e : res) eps.push_back(e.endpoint());
    co_return eps;
}

Task<std::unique_ptr<UpstreamConn>> connect_upstream(Impl& gw, const Provider& p, const BaseUrl& b,
                                                          const PoolKeyRef& key, ClientWatch& watch,
                                                          Failure& f) {
    const auto& o = gw.opts;
    const std::string where = provider_where(p, b);
    std::shared_ptr<asio::ssl::context> ctx;
    try {
        ctx = gw.client_ctx(p.ca_file);
    } catch (const std::exception& e) {
        f = {502, where + ": " + e.what()};
        co_return nullptr;
    }
    auto conn = std::make_unique<UpstreamConn>(gw.ex, ctx);
    if (gw.hold_sends) conn->s.hold_sends(gw.opts.upstream_write_timeout);
    conn->key.emplace(key);
    watch.upstream = conn.get();
    // Failures below destroy CONN: the watcher must not keep it (the caller
    // sets it again from what is returned).
    struct Forget {
        ClientWatch& w;
        ~Forget() { w.upstream = nullptr; }
    } forget{watch};
    auto& low = beast::get_lowest_layer(conn->s);
    const auto deadline = Clock::now() + o.upstream_connect_timeout;

    auto eps = co_await resolve_upstream(gw, b, deadline, where, f);
    if (eps.empty() || watch.gone) co_return nullptr;
    low.expires_at(deadline);
    beast::error_code cec = asio::error::host_not_found;
    for (const auto& ep : eps) {
        // Past the deadline the socket is closed: no next address is tried.
        if (low.timed_out()) break;
        beast::error_code ig;
        low.socket().close(ig);
        low.socket().open(ep.protocol(), cec);
        if (cec) continue;
        std::tie(cec) = co_await low.socket().async_connect(ep, use_tuple);
        cec = low.map(cec);
        if (!cec || cec == beast::error::timeout) break;
    }
    if (cec) {
        f = cec == beast::error::timeout
                ? Failure{504, "connecting to " + where + " timed out after " + seconds(o.upstream_connect_timeout)}
                : Failure{502, "cannot connect to " + where + ": " + cec.message()};
        co_return nullptr;
    }
    tune(low.socket());
    try {
        prepare_client_ssl(conn->s.native_handle(), b.host, b.ip_literal);
    } catch (const std::exception& e) {
        f = {502, where + ": " + e.what()};
        co_return nullptr;
    }
    low.expires_at(deadline);
    auto [hec, hn] = co_await conn->s.async_handshake(asio::ssl::stream_base::client, use_tuple);
    if (hec) {
        std::string why = verify_failure(conn->s.native_handle());
        if (hec == beast::error::timeout)
            f = {504, "TLS handshake with " + where + " timed out after " + seconds(o.upstream_connect_timeout)};
        else if (!why.empty())
            f = {502, "TLS verification of " + where + " failed: " + why};
        else
            f = {502, "TLS handshake with " + where + " failed: " + hec.message()};
        co_return nullptr;
    }
    co_return conn;
}

// Whether an error on a reused connection means the provider had already
// closed it before seeing the request (safe to send again).
bool stale_connection_error(const beast::error_code& ec) {
    return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
           ec == asio::error::broken_pipe || ec == asio::ssl::error::stream_truncated;
}

// ---- The provider call: exchange, then the relayed response ----

struct ProxyCall {
    const Provider& provider;
    const Profile& profile;
    const BaseUrl& base;
    std::string_view upstream_head;  // the provider request's head (write_upstream_head)
    std::string& upstream_body;      // its body: the rewritten JSON
    ApiShape shape;
    bool client_keep_alive;
    Quota::Ticket* body_room;  // given back once the provider has answered
    std::span<char> piece;     // the session's relay buffer
    ArenaAlloc fields;         // the request's arena: the answer's header fields
    std::string where() const { return provider_where(provider, base); }
    PoolKeyRef pool_key() const { return {base.host, base.port, provider.ca_file}; }
};

// The provider connection holding an answer whose header has been read.
struct Upstream {
    std::unique_ptr<UpstreamConn> conn;
    std::optional<ResponseParser> parser;
};

// How one attempt to send the request and read the answer's header went.
struct Attempt {
    beast::error_code ec;
    bool writing = false;  // failed while sending the request
    std::size_t read = 0;  // bytes read of the answer before the failure
    // A reused connection the provider had closed before seeing the request.
    bool stale() const { return writing || (read == 0 && stale_connection_error(ec)); }
};

// The provider's next bytes into C's buffer, at most what Beast's read
// operations take at once; the caller commits what was read.
auto read_more(UpstreamConn& c) {
    return c.s.async_read_some(c.buf.prepare(beast::read_size_or_throw(c.buf, kProviderReadSize)), use_tuple);
}

// Parses the provider's answer header from the bytes in C's buffer, as
// http::async_read_header would, without its composed operation (a heap
// allocation per request): the caller reads into the buffer until this is
// true, A.ec then saying how it ended.
bool answer_header_parsed(UpstreamConn& c, ResponseParser& p, Attempt& a) {
    a.ec = {};
    if (c.buf.size() == 0) return false;
    c.buf.consume(p.put(c.buf.data(), a.ec));
    if (a.ec == http::error::need_more) {
        a.ec = {};
        return false;
    }
    return true;
}

// A fresh parser for the provider's answer (its fields in the request's arena).
void expect_answer(const ProxyCall& call, Upstream& up) {
    up.parser.emplace(call.fields.resource());
    up.parser->body_limit(boost::none);
    up.parser->header_limit(kProviderHeaderLimit);
}

Stop attempt_failure(Impl& gw, const ProxyCall& call, const Attempt& a) {
    const auto& ka = call.client_keep_alive;
    if (a.writing)
        return refuse(a.ec == beast::error::timeout ? 504 : 502,
                      "sending the request to " + call.where() + " failed: " + a.ec.message(), ka);
    if (a.ec == beast::error::timeout)
        return refuse(504, call.where() + " did not answer within " + seconds(gw.opts.upstream_response_timeout), ka);
    return refuse(502, call.where() + " closed the connection or sent an invalid response: " + a.ec.message(), ka);
}

// Sends the request on a pooled connection or a new one, once more on a new
// one when a pooled connection turns out stale. nullopt: UP holds the answer.
Task<std::optional<Stop>> exchange(Impl& gw, ProxyCall& call, ClientWatch& watch, Upstream& up) {
    const PoolKeyRef key = call.pool_key();
    for (int attempt = 0;; ++attempt) {
        // The watcher must never see a connection that is being destroyed.
        watch.upstream = nullptr;
        up.conn.reset();
        up.conn = attempt == 0 ? gw.pool.take(key, gw.opts.pool_idle_timeout) : nullptr;
        if (!up.conn) {
            Failure f;
            up.conn = co_await connect_upstream(gw, call.provider, call.base, key, watch, f);
            if (watch.gone) co_return close_silently();
            if (!up.conn) co_return refuse(f.status, f.message, call.client_keep_alive);
        }
        watch.upstream = up.conn.get();
        // Send, then read the answer's header (in this frame: no coroutine per attempt).
        Attempt a;
        auto& low = beast::get_lowest_layer(up.conn->s);
        low.expires_after(gw.opts.upstream_write_timeout);
        // Head and body in one write: TlsStream gathers them into one record.
        Gather out{call.upstream_head, call.upstream_body};
        if (!write_at_once(up.conn->s, out, a.ec)) a.ec = co_await write_message(up.conn->s, out);
        a.writing = static_cast<bool>(a.ec);
        if (!a.writing) {
            expect_answer(call, up);
            low.expires_after(gw.opts.upstream_response_timeout);
            while (!answer_header_parsed(*up.conn, *up.parser, a)) {
                std::size_t n = 0;
                std::tie(a.ec, n) = co_await read_more(*up.conn);
                up.conn->buf.commit(n);
                a.read += n;
                if (a.ec) break;
            }
            if (a.ec == asio::error::eof)
                a.ec = a.read == 0 ? http::error::end_of_stream : http::error::partial_message;
        }
        if (watch.gone) co_return close_silently();
        if (!a.ec) co_return std::nullopt;
        if (up.conn->reused && attempt == 0 && a.stale()) continue;
        co_return attempt_failure(gw, call, a);
    }
}

// `Connection: keep-alive`, what most providers send: its one token names a
// header that is hop-by-hop anyway, so it adds nothing to drop (and the token
// set need not be built).
bool names_keep_alive_only(std::string_view v) { return beast::iequals(trim(v), "keep-alive"); }

// The sandbox's response head into OUT: the provider's status and headers,
// less hop-by-hop and origin-specific headers, framed as PLAN says. Names go
// lower-cased (an ASCII branch: the C locale's tolower is a call per byte),
// in ARENA like OUT.
void response_head(wire::Buffer& out, const ResponseParser& uh, const ResponsePlan& plan, bool keep_alive,
                   ArenaAlloc arena) {
    const auto& fields = uh.fields();
    HeaderList conn;  // the Connection headers alone: their tokens name more hop-by-hop headers
    for (const auto& f : fields.equal_range(http::field::connection))
        if (!names_keep_alive_only(f.value())) conn.emplace_back("connection", f.value());
    const auto ctoks = connection_tokens(conn);
    // Room for the whole head at once: a monotonic arena does not reuse
    // what a growing string leaves behind.
    std::size_t room = 128 + uh.reason().size();  // status line, framing, blank line
    for (const auto& f : fields) room += f.name_string().size() + f.value().size() + 4;
    out.reserve(room);
    wire::HeadWriter w(out);
    w.status_line(uh.result_int(), uh.reason(), http::obsolete_reason(uh.result()));
    wire::Buffer n(arena);  // one buffer for every lower-cased name
    n.reserve(64);
    for (const auto& f : fields) {
        const auto name = f.name_string();
        n.resize(name.size());
        std::transform(name.begin(), name.end(), n.begin(), wire::ascii_lower);
        if (relay_response_header(n, ctoks)) w.field(n, f.value());
    }
    w.end({.content_length = plan.content_length, .chunked = plan.chunked, .close = !keep_alive});
}

// The next piece of a relayed body (or, with DATA empty and MORE false, its end).
template <class Fields>
void set_piece(http::response<http::buffer_body, Fields>& res, std::string_view data, bool more) {
    res.body().data = data.empty() ? nullptr : const_cast<char*>(data.data());
    res.body().size = data.size();
    res.body().more = more;
}

// Writes one piece of the response body (or, with DATA empty and MORE false,
// its end) through SR.
template <class Stream, class Fields>
Task<beast::error_code> write_piece(Impl& gw, Stream& s, http::response_serializer<http::buffer_body, Fields>& sr,
                                    http::response<http::buffer_body, Fields>& res, std::string_view data,
                                    bool more) {
    set_piece(res, data, more);
    beast::get_lowest_layer(s).expires_after(gw.opts.write_timeout);
    beast::error_code ec;
    if (!write_at_once(s, sr, ec)) ec = co_await write_message(s, sr);
    if (ec == http::error::need_buffer) ec = {};
    co_return ec;
}

// Writes the next piece of a relayed body through BODY (data empty and not
// LAST: the head alone; LAST: the body ends with DATA, in the same write).
template <class Stream>
Task<beast::error_code> write_relayed(Impl& gw, Stream& s, wire::BodyFramer& body, std::string_view data,
                                      bool last) {
    beast::get_lowest_layer(s).expires_after(gw.opts.write_timeout);
    Gather out(body.next(data, last));
    beast::error_code ec;
    if (!write_at_once(s, out, ec)) ec = co_await write_message(s, out);
    note_write(gw, ec);
    co_return ec;
}

// A stream idles between its events: OpenSSL gives its record buffers
// (~34 KiB a connection) back while it waits, so 1,000 open streams do not
// hold 2,000 sets. Short exchanges keep theirs (no allocation per record).
void release_buffers_when_idle(TlsStream& s) { s.release_buffers_when_idle(); }
void release_buffers_when_idle(PlainStream&) {}
// The stream is over: the connection goes on with short exchanges (the
// sandbox's next request, the provider pool), which keep their buffers.
void keep_buffers(TlsStream& s) { s.keep_buffers(); }
void keep_buffers(PlainStream&) {}

// Done: the answer went whole to the sandbox. Delivered: the provider's
// answer was whole, but the sandbox stopped taking it at the end.
enum class Pumped { Done, Delivered, ClientGone, UpstreamBroke };

// The provider's answer is whole: its connection is reusable even when the
// sandbox hangs up right after the last byte (as `Connection: close` clients
// do), so the watcher lets go of it, and it is back in the pool before the
// last piece is written to the sandbox (another request may use it already).
void release_upstream(Impl& gw, Upstream& up, ClientWatch& watch, bool streamed) {
    watch.upstream = nullptr;
    if (up.conn && up.parser->is_done() && up.parser->keep_alive() && up.conn->buf.size() == 0 && !gw.stopped()) {
        if (streamed) keep_buffers(up.conn->s);
        gw.pool.put(std::move(up.conn), gw.opts.pool_max_idle_per_host, gw.opts.pool_idle_timeout);
    }
}

// After a read into BUF that ended with READ_EC: the provider's answer
// parsed on into P (its body into the piece P's body() points at), as
// http::async_read_some does after its read; an answer delimited by the end
// of the connection ends at EOF. need_more is no error: the caller reads on.
beast::error_code parse_after_read(beast::flat_buffer& buf, ResponseParser& p, const beast::error_code& read_ec) {
    beast::error_code ec;
    if (read_ec == asio::error::eof) {
        p.put_eof(ec);
        return ec;
    }
    if (read_ec) return read_ec;
    parse_buffered(buf, p, ec);
    return ec == http::error::need_more ? beast::error_code{} : ec;
}

// The provider broke off mid-response: an SSE client is told in its API's
// words before the stream ends, rather than left to guess from a cut body.
template <class Stream>
Task<bool> end_broken_response(Impl& gw, Stream& s, ProxyCall& call, const ResponsePlan& plan,
                               wire::BodyFramer& body, const beast::error_code& ec, RequestLog& log) {
    const auto& o = gw.opts;
    log.error = ec == beast::error::timeout
                    ? call.where() + " sent nothing for " + seconds(o.stream_idle_timeout) + " mid-response"
                    : call.where() + " broke off the response: " + ec.message();
    if (!(plan.sse && plan.chunked)) co_return false;
    // The event and the end of the stream in one write.
    const std::string ev = stream_error_event(call.shape, log.error);
    co_await write_relayed(gw, s, body, ev, true);
    co_return false;
}

// The provider call: the request sent and the answer's header read
// (exchange), then the answer relayed: the sandbox's head (a 401 answered in
// our own words), then the body. The provider's connection goes back to the
// pool once the answer is whole.
//
// Exchange is called from here, not next to this, for the allocator's sake:
// a coroutine frame above 1,020 bytes (this one) allocated after the answer
// arrived would evict the block Asio's recycling allocator just got back
// from the read, and the session's next read would allocate again.
template <class Stream>
Task<bool> proxy(Impl& gw, Stream& s, ProxyCall& call, ClientWatch& watch, RequestLog& log) {
    Upstream up;
    if (auto stop = co_await exchange(gw, call, watch, up))
        co_return co_await answer(gw, s, call.shape, std::move(*stop), log);
    // Answered: the request body will not be sent again, and a long stream
    // must not keep its memory (or the sandbox's share of it).
    std::string().swap(call.upstream_body);
    call.body_room->release();

    const auto& uh = *up.parser;
    if (uh.result_int() == 401) {
        // The sandbox's key is never the one that was refused, and provider
        // 401 bodies quote part of the key: answer in our own words.
        up.conn->close();
        co_return co_await send_error(gw, s, call.shape, 401, credential_rejected_message(call.provider),
                                      call.client_keep_alive, log);
    }
    std::optional<std::uint64_t> length;
    if (auto l = up.parser->content_length()) length = *l;
    const auto plan = plan_response(uh.result_int(), uh.fields()[http::field::content_type],
                                    uh.fields()[http::field::content_encoding], length, up.parser->chunked());
    wire::Buffer head(call.fields);
    response_head(head, uh, plan, call.client_keep_alive, call.fields);
    wire::BodyFramer body(head, plan.chunked);
    log.status = uh.result_int();
    if (plan.sse) {
        release_buffers_when_idle(s);
        release_buffers_when_idle(up.conn->s);
    }

    // A body already read (most of a JSON answer) goes in one write with the
    // header; a stream still waiting for its first event gets its header now
    // (written at once when the socket takes it: no operation, no frame).
    if (!plan.no_body && up.conn->buf.size() == 0) {
        beast::get_lowest_layer(s).expires_after(gw.opts.write_timeout);
        Gather out(body.next({}, false));
        beast::error_code hec;
        if (!write_at_once(s, out, hec)) hec = co_await write_message(s, out);
        note_write(gw, hec);
        if (hec) {
            log.error = "client closed the connection";
            up.conn->close();
            co_return false;
        }
    }

    // The body, piece by piece as it arrives (an SSE stream is never
    // buffered), through the session's relay buffer; the last piece carries
    // the end of the body (one write, one TLS record). Pumped in this frame:
    // a coroutine of its own was a heap-allocated frame per request.
    UsageTap tap(plan);
    beast::error_code upstream_ec;
    Pumped pumped = Pumped::Done;
    auto& p = *up.parser;
    const std::span<char> piece = call.piece;
    std::uint64_t left = plan.content_length.value_or(std::numeric_limits<std::uint64_t>::max());
    while (!p.is_done()) {
        p.body().data = piece.data();
        p.body().size = piece.size();
        beast::get_lowest_layer(up.conn->s).expires_after(gw.opts.stream_idle_timeout);
        beast::error_code rec;
        if (!parse_buffered(up.conn->buf, p, rec)) {
            std::size_t n = 0;
            std::tie(rec, n) = co_await read_more(*up.conn);
            up.conn->buf.commit(n);
            rec = parse_after_read(up.conn->buf, p, rec);
        }
        if (rec == http::error::need_buffer) rec = {};
        const std::size_t got = piece.size() - p.body().size;
        const bool whole = !rec && (p.is_done() || got >= left);
        if (whole) release_upstream(gw, up, watch, plan.sse);
        if (watch.gone) {
            pumped = whole ? Pumped::Done : Pumped::ClientGone;
            break;
        }
        if (rec) {
            upstream_ec = rec;
            pumped = Pumped::UpstreamBroke;
            break;
        }
        if (got == 0) continue;
        left -= std::min<std::uint64_t>(left, got);
        std::string_view data(piece.data(), got);
        tap.feed(data);
        if (whole) watch.answered = true;
        // Written here rather than through write_relayed(): one coroutine frame less per piece.
        beast::get_lowest_layer(s).expires_after(gw.opts.write_timeout);
        Gather out(body.next(data, whole));
        beast::error_code wec;
        if (!write_at_once(s, out, wec)) wec = co_await write_message(s, out);
        note_write(gw, wec);
        if (wec) {
            if (!whole) up.conn->close();
            pumped = whole ? Pumped::Delivered : Pumped::ClientGone;
            break;
        }
        log.bytes_out += got;
        if (whole) break;
    }
    if (pumped == Pumped::Done) release_upstream(gw, up, watch, plan.sse);
    if (plan.sse) keep_buffers(s);
    tap.finish(log.usage);  // what the provider reported before any break is still charged
    if (pumped == Pumped::ClientGone) {
        log.error = "client closed the connection";
        co_return false;
    }
    if (pumped == Pumped::Delivered) co_return false;
    if (pumped == Pumped::UpstreamBroke) {
        up.conn->close();
        co_return co_await end_broken_response(gw, s, call, plan, body, upstream_ec, log);
    }
    watch.answered = true;
    if (!body.ended()) {
        // The body was empty, or its end came without data (a last chunk).
        if (co_await write_relayed(gw, s, body, {}, true)) co_return false;
    }
    co_return call.client_keep_alive;
}

// The connection's watcher for its next provider call: the last call's,
// unless a late completion of that call still holds it.
std::shared_ptr<ClientWatch> watch_for_call(Impl& gw, ClientConn& cc) {
    if (cc.watch && cc.watch.use_count() == 1)
        cc.watch->reset();
    else
        cc.watch = std::make_shared<ClientWatch>(gw.ex);
    return cc.watch;
}

// Starts watching the sandbox once the call has run for kWatchAfter (lives
// in the calling frame; Impl::sweep calls run).
template <class Stream>
struct WatchStarter {
    Impl& gw;
    Stream& s;
    beast::flat_buffer& buf;
    std::shared_ptr<ClientWatch> w;
    static void run(void* p) {
        auto* st = static_cast<WatchStarter*>(p);
        watch_client(st->gw, st->s, st->buf, st->w);
    }
    // Bytes already buffered are the sandbox's next request: nothing to watch for.
    void arm() {
        if (buf.size() != 0) return;
        w->start = &WatchStarter::run;
        w->start_arg = this;
        gw.await_watch(*w);
    }
};

// The call is over: the watch stops. True: a read of the sandbox's stream is
// still under way, wait for W.done before the stream is used again.
template <class Stream>
bool stop_watching(Impl& gw, Stream& s, ClientWatch& w) {
    w.upstream = nullptr;
    w.over = true;
    gw.forget_watch(w);
    if (!w.watching) return false;  // never watched: nothing to cancel
    if (!w.reading) {
        beast::error_code ig;
        beast::get_lowest_layer(s).socket().cancel(ig);
        return false;
    }
    if (w.finished) return false;
    beast::get_lowest_layer(s).cancel();
    return true;
}

// Whether the connection stays open after a provider call that answered
// KEEP: not when the sandbox hung up meanwhile.
bool after_call(const ClientWatch& w, bool keep, RequestLog& log) {
    if (!w.gone) return keep;
    // A sandbox that hangs up after the last byte was served in full.
    if (log.error.empty() && !w.answered) log.error = "client closed the connection";
    if (log.status == 0) log.status = 499;
    return false;
}

template <class Stream>
Task<bool> send_mock(Impl& gw, Stream& s, const MockReply& m, bool keep_alive, RequestLog& log) {
    if (!m.stream) {
        // Kept out of the co_await expression: GCC 12 destroys temporaries of
        // a conditional expression there twice.
        std::string body;
        if (!m.pieces.empty()) body = m.pieces[0];
        co_return co_await send_body(gw, s, m.status, m.content_type, std::move(body), keep_alive, log);
    }
    http::response<http::buffer_body> res{static_cast<http::status>(m.status), 11};
    res.set(http::field::content_type, m.content_type);
    res.set(http::field::cache_control, "no-cache");
    res.chunked(true);
    res.keep_alive(keep_alive);
    res.body().data = nullptr;
    res.body().more = true;
    log.status = m.status;
    http::response_serializer<http::buffer_body> sr{res};
    beast::get_lowest_layer(s).expires_after(gw.opts.write_timeout);
    auto [ec, n] = co_await http::async_write_header(s, sr, use_tuple);
    if (ec) co_return false;
    for (const auto& p : m.pieces) {
        auto wec = co_await write_piece(gw, s, sr, res, p, true);
        note_write(gw, wec);
        if (wec) co_return false;
        log.bytes_out += p.size();
    }
    auto fec = co_await write_piece(gw, s, sr, res, {}, false);
    co_return !fec && keep_alive;
}

// ---- One client request: header, decision, body, answer ----

// The request being served: its parser (header, then body) and what its
// header decided.
struct Incoming {
    explicit Incoming(ArenaAlloc fields) : parser(fields.resource()) {}
    RequestParser parser;
    RouteDecision route;
    ApiShape shape = ApiShape::OpenAI;
    // The sandbox's policy (route, provider_fetch, limits) and the snapshot
    // of its route: the connection's DecisionCache holds both until its
    // next request is decided.
    const SandboxInference* policy = nullptr;
    const Snapshot* snap = nullptr;
    ServiceDecision service;
    Quota::Ticket body_room;  // the body's share of the memory budget
};

std::string header_too_large(const GatewayOptions& o) {
    return "request header is larger than " + std::to_string(o.header_limit) + " bytes";
}
std::string body_too_large(const GatewayOptions& o) {
    return "request body is larger than " + std::to_string(o.body_limit) + " bytes";
}

// Checks the bytes gathered in BUF before Beast parses them (bare LF,
// obs-fold, size): a refusal, or whether the header block is whole.
std::optional<Stop> check_header_bytes(Impl& gw, const beast::flat_buffer& buf, bool& whole) {
    const auto& o = gw.opts;
    std::size_t end = 0;
    auto l = lint_header({static_cast<const char*>(buf.data().data()), buf.size()}, end);
    if (l == HeaderLint::BareLf) return refuse(400, "request line or header ends in a bare LF; HTTP requires CRLF");
    if (l == HeaderLint::ObsFold)
        return refuse(400, "request header uses obsolete line folding (a line starting with whitespace); "
                           "send each header on one line");
    whole = l == HeaderLint::Complete && end <= o.header_limit;
    if (!whole && buf.size() > o.header_limit) {
        ++gw.stats.header_too_large;
        return refuse(431, header_too_large(o));
    }
    return std::nullopt;
}

Stop header_parse_failure(Impl& gw, const beast::error_code& ec) {
    if (ec == http::error::body_limit) {
        ++gw.stats.body_too_large;
        return refuse(413, body_too_large(gw.opts));
    }
    if (ec == http::error::header_limit) {
        ++gw.stats.header_too_large;
        return refuse(431, header_too_large(gw.opts));
    }
    return refuse(400, "malformed HTTP request: " + ec.message());
}

// The sandbox's policy and its route's snapshot into IN, from the
// connection's cache when nothing changed since its last request. Asked per
// request otherwise (log.conn is the sandbox the kernel recorded), so a
// policy reload or a route change applies to the next request.
void decide_policy(Impl& gw, DecisionCache& c, Incoming& in, std::uint64_t cgroup_id) {
    const auto& o = gw.opts;
    // Read before asking: an answer newer than the generation read is
    // asked again next time, never an older one kept.
    const std::uint64_t pg = !o.sandbox_inference                ? 1
                             : o.sandbox_inference_generation ? o.sandbox_inference_generation()
                                                              : 0;
    const std::uint64_t sg = gw.store->generation();
    if (pg == 0 || c.policy_generation != pg || c.store_generation != sg || c.cgroup_id != cgroup_id || !c.snap) {
        c.policy_generation = 0;  // until both answers are in
        c.policy = o.sandbox_inference ? o.sandbox_inference(cgroup_id) : SandboxInference{};
        c.snap = gw.store->snapshot(c.policy.route);
        c.cgroup_id = cgroup_id;
        c.store_generation = sg;
        c.policy_generation = pg;
    }
    in.policy = &c.policy;
    in.snap = c.snap.get();
}

// Decides from the parsed header alone where the request goes (route, then
// configuration). Logs method and path.
std::optional<Stop> decide_request(Impl& gw, ClientConn& cc, Incoming& in, RequestLog& log) {
    const auto& o = gw.opts;
    in.route = decide_route(head_of(in.parser), o.log_string_max);
    in.shape = in.route.shape;
    log.method = clip(in.parser.method_string(), 32);
    if (clipped(in.route.path, o.log_string_max))
        log.path = clip(in.route.path, o.log_string_max);
    else
        log.path.assign(in.route.path);  // into the recycled record's buffer
    if (in.route.framing_status) return refuse(in.route.framing_status, std::move(in.route.message));
    decide_policy(gw, cc.decision, in, log.conn.cgroup_id);
    log.route = in.policy->route;
    in.service = decide_service(in.route, *in.snap, o.log_string_max);
    if (clipped(in.route.path, o.log_string_max) || in.service.truncated) ++gw.stats.log_strings_truncated;
    if (in.snap->inference) {
        log.model_used = in.snap->inference->model;
        log.config_version = in.snap->inference->version;
    }
    if (in.snap->provider) {
        log.provider = in.snap->provider->name;
        log.provider_type = in.snap->provider->type;
    }
    // A client waiting to be told whether to send the body is refused now:
    // the body is not read, so the connection cannot be reused.
    if (in.service.status && in.route.expect_continue)
        return refuse(in.service.status, in.service.message, false, in.route.headers);
    return std::nullopt;
}

// Room for the body is reserved before it is read, so one sandbox cannot hold
// more than its share of the agent's memory in request bodies.
std::optional<Stop> reserve_body(Impl& gw, Incoming& in, const ConnInfo& info) {
    if (in.parser.is_done()) return std::nullopt;
    const std::uint64_t want = in.parser.content_length().value_or(gw.opts.body_limit);
    Quota::Refusal why{};
    in.body_room = gw.body_bytes->try_acquire(info.cgroup_id, want, &why);
    if (in.body_room) return std::nullopt;
    ++gw.stats.refused_body_budget;
    const bool mine = why == Quota::Refusal::Sandbox;
    const auto cap = mine ? gw.body_bytes->caps().per_sandbox : gw.body_bytes->caps().total;
    gw.refused(info, mine ? "body_bytes_per_sandbox" : "body_bytes_total", cap);
    HeaderList retry;
    retry.emplace_back("retry-after", "1");
    return refuse(503, body_budget_message(mine, cap), false, std::move(retry));
}

std::optional<Stop> body_read_failure(Impl& gw, const beast::error_code& ec, RequestLog& log) {
    if (ec == http::error::body_limit) {
        ++gw.stats.body_too_large;
        return refuse(413, body_too_large(gw.opts));
    }
    if (ec == beast::error::timeout) {
        log.status = 408;
        log.error = "request body not received within " + seconds(gw.opts.body_timeout);
        return close_silently();
    }
    if (ec == http::error::partial_message || ec == http::error::end_of_stream || ec == asio::error::eof ||
        ec == asio::error::connection_reset)
        return close_silently();
    return refuse(400, "malformed request body: " + ec.message());
}

// The provider request's head into OUT: request line, Host, the headers
// each_upstream_header passes (a field the writer refuses is dropped, see
// wire::HeadWriter::field), the body's length; the connection is kept alive
// (HTTP/1.1's default: no Connection field). False: TARGET cannot be written.
bool write_upstream_head(wire::Buffer& out, std::string_view target, const BaseUrl& base,
                         const HeaderList& client_headers, const Profile& profile,
                         const HeaderList& provider_headers, std::size_t body_size) {
    wire::HeadWriter w(out);
    if (!w.request_line("POST", target)) return false;
    w.field("Host", base.host_header);
    each_upstream_header(client_headers, profile, provider_headers,
                         [&w](std::string_view n, std::string_view v) { w.field(n, v); });
    w.end({.content_length = body_size});
    return true;
}

// A served request: the models list, a mock answer, or the provider call.
template <class Stream>
Task<bool> respond(Impl& gw, Stream& s, ClientConn& cc, Incoming& in, const ConnInfo& info,
                        bool keep_alive, RequestLog& log) {
    const auto& o = gw.opts;
    const auto& cfg = *in.snap->inference;
    const auto& provider = *in.snap->provider;
    const auto& profile = *in.service.profile;
    const Endpoint ep = *in.route.endpoint;
    if (ep == Endpoint::Models)
        co_return co_await send_body(gw, s, 200, "application/json", models_list_json(in.shape, cfg), keep_alive, log);
    if (ep == Endpoint::ModelById)
        co_return co_await send_body(gw, s, 200, "application/json", model_json(in.shape, cfg), keep_alive, log);

    auto& req = in.parser;
    // Fetches the policy allows are not looked for; otherwise the scan rides the rewrite's parse.
    std::optional<FetchScanner> fetch_scan;
    if (!in.policy->provider_fetch) fetch_scan.emplace(o.log_string_max);
    auto rw = rewrite_model(req.body(), cfg.model, o.log_string_max, asks_stream_usage(ep),
                            fetch_scan ? &*fetch_scan : nullptr);
    // The client's body is no longer needed: only the rewritten copy lives
    // on, and its buffer waits for the connection's next body.
    cc.body.take_back(req.body());
    if (rw.truncated) ++gw.stats.log_strings_truncated;
    if (!rw.ok) co_return co_await send_error(gw, s, in.shape, 400, std::move(rw.error), keep_alive, log);
    log.model_requested = std::move(rw.model_requested);
    log.stream = rw.stream;
    // Only what the provider call can use is kept (allowlisted names,
    // connection, anthropic-beta), lower-cased into the connection's reused
    // list: a usual request allocates no string here.
    const HeaderList& client_headers =
        cc.client_headers.fill(req.fields(), [&](std::string_view n) { return client_header_matters(n, profile); });
    if (fetch_scan)
        if (auto fetch = find_provider_fetch(*fetch_scan, client_headers, o.log_string_max))
            co_return co_await send_error(gw, s, in.shape, 400, provider_fetch_refusal(*fetch), keep_alive, log);

    if (auto over = o.admit_request ? o.admit_request(info.cgroup_id, in.policy->limits) : std::nullopt)
        co_return co_await answer(gw, s, in.shape, refuse(429, over->message(), keep_alive, over->headers()), log);
    log.credential = profile.local ? CredentialUse{} : credential_use(profile, provider);
    if (profile.local) {
        auto m = mock_reply(ep, rw.body, cfg.model, rw.stream);
        log.usage = usage_of(m);
        co_return co_await send_mock(gw, s, m, keep_alive, log);
    }

    // The base URL and the provider's own headers were derived when the snapshot was published.
    const auto& base = in.snap->base;
    if (!base)
        co_return co_await send_error(gw, s, in.shape, 502,
                                      "provider " + provider.name + " is misconfigured: " + in.snap->base_error,
                                      keep_alive, log);
    wire::Buffer target(cc.arena.alloc());
    upstream_target(target, *base, profile, in.route.path, in.route.query);
    wire::Buffer head(cc.arena.alloc());
    head.reserve(kHeadReserve);
    if (!write_upstream_head(head, target, *base,
                             client_headers, profile, in.snap->provider_headers, rw.body.size()))
        co_return co_await send_error(gw, s, in.shape, 502,
                                      "the request target for provider " + provider.name +
                                          " holds a space or a control byte: not sent",
                                      keep_alive, log);
    ProxyCall call{provider,      profile,       *base,           head, rw.body, in.shape, keep_alive,
                   &in.body_room, cc.relay_buffer(), cc.arena.alloc()};

    // The provider call, in this frame (a coroutine of its own was a
    // heap-allocated frame per request), the sandbox watched meanwhile.
    WatchStarter<Stream> starter{gw, s, cc.buf, watch_for_call(gw, cc)};
    ClientWatch& watch = *starter.w;
    starter.arm();
    bool keep = false;
    std::exception_ptr err;
    try {
        keep = co_await proxy(gw, s, call, watch, log);
    } catch (...) {
        err = std::current_exception();  // rethrown once the watch has stopped
    }
    if (stop_watching(gw, s, watch)) co_await watch.done.async_wait(use_tuple);
    if (err) std::rethrow_exception(err);
    co_return after_call(watch, keep, log);
}

// One more in N while it lives (Impl::calls).
class Counted {
public:
    explicit Counted(std::size_t& n) : n_(n) { ++n_; }
    ~Counted() { --n_; }
    Counted(const Counted&) = delete;
    Counted& operator=(const Counted&) = delete;

private:
    std::size_t& n_;
};

// One request on a connection, whose first bytes are in CC's buffer (the
// session awaited them): its header gathered and checked as bytes,
// parsed, decided, room for its body reserved, the body read, then the
// answer. All in one coroutine: each coroutine called is a heap-allocated
// frame (above 1 KiB, past Asio's recycling), so the request is read in one.
// Returns whether the connection stays open.
template <class Stream>
Task<bool> serve_one(Impl& gw, Stream& s, ClientConn& cc, RequestLog& log, const ConnInfo& info) {
    const auto& o = gw.opts;
    auto& buf = cc.buf;
    auto& low = beast::get_lowest_layer(s);
    Incoming in(cc.arena.alloc());
    log.method = "-";
    const auto deadline = Clock::now() + o.header_timeout;
    bool whole = false;
    std::optional<Stop> stop;
    while (!(stop = check_header_bytes(gw, buf, whole)) && !whole) {
        low.expires_at(deadline);
        auto [ec, n] = co_await s.async_read_some(buf.prepare(8192), use_tuple);
        // On a timeout the stream has already closed the socket: a slow
        // client gets no answer, just the end of the connection.
        if (ec) {
            note_held_output(gw, s);
            co_return false;
        }
        buf.commit(n);
    }
    if (!stop) {
        // The header is whole in BUF: parsed right here (a read operation on
        // bytes already read would cost a scheduler pass), from the socket
        // only should Beast want more than the check above saw.
        low.expires_at(deadline);
        in.parser.header_limit(static_cast<std::uint32_t>(o.header_limit));
        in.parser.body_limit(o.body_limit);
        beast::error_code ec;
        buf.consume(in.parser.put(buf.data(), ec));
        if (ec == http::error::need_more)
            std::tie(ec, std::ignore) = co_await http::async_read_header(s, buf, in.parser, use_tuple);
        if (ec)
            stop = header_parse_failure(gw, ec);
        else
            stop = decide_request(gw, cc, in, log);
    }
    if (!stop && !in.parser.is_done()) stop = reserve_body(gw, in, info);
    if (!stop && !in.parser.is_done()) {
        // Read into the last body's buffer (the parser reserves the
        // Content-Length in it: no allocation when it fits).
        cc.body.lend(in.parser.body());
        if (in.route.expect_continue) {
            http::response<http::empty_body> cont{http::status::continue_, 11};
            low.expires_after(o.write_timeout);
            http::response_serializer<http::empty_body> csr{cont};
            beast::error_code cec;
            if (!write_at_once(s, csr, cec)) cec = co_await write_message(s, csr);
            if (cec) co_return false;
        }
        // The part of the body that came with the header is parsed here; only
        // the rest is read (as http::async_read does, eagerly).
        in.parser.eager(true);
        beast::error_code ec;
        if (buf.size() != 0) buf.consume(in.parser.put(buf.data(), ec));
        if (ec == http::error::need_more) ec = {};
        if (!ec && !in.parser.is_done()) {
            low.expires_after(o.body_timeout);
            std::tie(ec, std::ignore) = co_await http::async_read(s, buf, in.parser, use_tuple);
        }
        if (ec) stop = body_read_failure(gw, ec, log);
    }
    if (stop) co_return co_await answer(gw, s, in.shape, std::move(*stop), log);
    log.bytes_in = in.parser.body().size();
    const bool keep_alive = in.parser.header_keep_alive() && !gw.stopped();
    if (in.service.status) {
        auto refusal = refuse(in.service.status, std::move(in.service.message), keep_alive, in.route.headers);
        co_return co_await answer(gw, s, in.shape, std::move(refusal), log);
    }
    co_return co_await respond(gw, s, cc, in, info, keep_alive, log);
}

// ---- Connections ----

// What one request's header fields may take from the heap beyond the
// connection's inline arena. The parsers' header limits bound the bytes that
// become fields: the sandbox's header (its parser, and the allowlisted copy
// written to the provider) and the provider's (its parser, and the copy
// written to the sandbox). A parsed field takes 24 bytes and its name and
// value (`a:` is 4 bytes on the wire, 32 in the arena: 8 a byte; Beast's
// basic_fields took ~16), a written head at most ~4 per byte (it grows by
// doubling), and the monotonic arena grows its blocks by half: 32 per header
// byte covers both. Past it the request fails (std::bad_alloc ends the
// session) instead of the agent growing.
std::size_t arena_cap(const GatewayOptions& o) {
    return 32 * (2 * o.header_limit + 2 * std::size_t{kProviderHeaderLimit});
}

// The next request's record: every field at its default (a field added to
// RequestLog later starts fresh too), its strings keeping their buffers and
// the connection's identity kept.
void recycle(RequestLog& log) {
    RequestLog next;
    next.conn = std::move(log.conn);
    for (auto field : {&RequestLog::method, &RequestLog::path, &RequestLog::route, &RequestLog::provider,
                       &RequestLog::provider_type, &RequestLog::model_requested, &RequestLog::model_used,
                       &RequestLog::error}) {
        (log.*field).clear();
        (next.*field).swap(log.*field);
    }
    log = std::move(next);
}

// The request's fields are gone: the arena is empty again for the next one.
void end_of_request(Impl& gw, ClientConn& cc) {
    auto& arena = cc.arena;
    cc.client_headers.release_if_large();
    const std::uint64_t peak = arena.heap_peak();
    auto& seen = gw.stats.arena_heap_peak;
    for (auto cur = seen.load(std::memory_order_relaxed); peak > cur;)
        if (seen.compare_exchange_weak(cur, peak, std::memory_order_relaxed)) break;
    arena.reset();
}

template <class Stream>
Task<void> session(std::shared_ptr<Impl> gw, Stream s, ConnInfo info, Quota::Ticket = {}) {
    ClientConn cc(arena_cap(gw->opts), &gw->stats.arena_heap_bytes, &gw->stats.body_buffer_bytes);
    try {
        RequestLog log;  // one per connection, recycled per request
        log.conn = info;
        for (;; recycle(log)) {
            // One clock read for the record's start and the idle deadline.
            const auto start = Clock::now();
            // The next request's first bytes are awaited here rather than in
            // serve_one: its frame (above 1,020 bytes) allocated between the
            // last request's read and this one would evict the block Asio's
            // recycling allocator keeps for this read.
            if (cc.buf.size() == 0) {
                beast::get_lowest_layer(s).expires_at(start + gw->opts.idle_timeout);
                auto [ec, n] = co_await s.async_read_some(cc.buf.prepare(8192), use_tuple);
                if (ec) {
                    note_held_output(*gw, s);
                    break;
                }
                cc.buf.commit(n);
            }
            bool keep;
            {
                Counted call(gw->calls);
                keep = co_await serve_one(*gw, s, cc, log, info);
            }
            end_of_request(*gw, cc);
            if (log.status != 0) {
                log.duration_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
                gw->record(log);
            }
            if (!keep || gw->stopped()) break;
        }
    } catch (const std::exception& e) {
        spdlog::warn("terminator: session for cgroup {} ended: {}", info.cgroup_id, e.what());
    }
    close_stream(s);
}

// Moves the accepted socket onto the executor of the io thread that serves it
// (nothing to move when that thread's io_context accepted it).
template <class Accepted>
Socket rebind(Impl& gw, Accepted sock) {
    beast::error_code ec;
    if constexpr (std::is_same_v<Accepted, Socket>) {
        if (sock.get_executor() == gw.ex) {
            tune(sock);
            return sock;
        }
    }
    auto proto = sock.local_endpoint(ec).protocol();
    if (ec) proto = tcp::v4();
    int fd = sock.release(ec);
    if (ec) throw beast::system_error(ec);
    Socket out(gw.ex);
    out.assign(proto, fd, ec);
    if (ec) {
        ::close(fd);
        throw beast::system_error(ec);
    }
    tune(out);
    return out;
}

// Each session coroutine owns its connection ticket: the sandbox's slot is
// given back whenever and however the session ends.
Task<void> tls_session(std::shared_ptr<Impl> gw, TlsStream s, ConnInfo info, Quota::Ticket) {
    if (gw->hold_sends) s.hold_sends(gw->opts.write_timeout);
    beast::get_lowest_layer(s).expires_after(gw->opts.handshake_timeout);
    auto [ec, n] = co_await s.async_handshake(asio::ssl::stream_base::server, use_tuple);
    if (ec) {
        if (ec == beast::error::timeout)
            ++gw->stats.tls_handshake_timeouts;
        else
            ++gw->stats.tls_handshake_failures;
        spdlog::debug("terminator: TLS handshake from {} (cgroup {}) failed: {}", info.client, info.cgroup_id,
                      ec.message());
        close_stream(s);
        co_return;
    }
    co_await session(std::move(gw), std::move(s), std::move(info));
}

Task<void> refusal_session(std::shared_ptr<Impl> gw, PlainStream s, ConnInfo info, Quota::Ticket) {
    beast::flat_buffer buf;
    http::request_parser<http::empty_body> p;
    p.header_limit(static_cast<std::uint32_t>(gw->opts.header_limit));
    s.expires_after(gw->opts.header_timeout);
    auto [ec, n] = co_await http::async_read_header(s, buf, p, use_tuple);
    if (ec == beast::error::timeout || ec == http::error::end_of_stream || ec == asio::error::eof) {
        close_stream(s);
        co_return;
    }
    std::string path = ec ? "/" : std::string(p.get().target());
    ApiShape shape = shape_for(normalise_target(path).value_or(Target{"/", ""}).path,
                               !ec && p.get().count("anthropic-version") > 0);
    RequestLog log;
    log.conn = info;
    log.method = ec ? "-" : std::string(p.get().method_string());
    log.method = clip(log.method, 32);
    log.path = clip(path, gw->opts.log_string_max);
    co_await send_error(*gw, s, shape, 400,
                        "inference.local is served over HTTPS only: use https://inference.local/v1 (plain HTTP is "
                        "refused so that prompts and replies never cross the network in clear)",
                        false, log);
    gw->record(log);
    close_stream(s);
}

// Over a cap the connection is closed before any byte is read: cheaper than
// a TLS handshake, and the client's SDK retries as for any dropped connection.
template <class Accepted>
void turn_away(Accepted& socket) {
    beast::error_code ig;
    socket.close(ig);
}

// Admits INFO's connection (or turns it away over a cap), wraps its socket
// with MAKE (nullopt: give up) and runs RUN's session coroutine on it.
template <class Accepted, class Make, class Run>
void launch(const std::shared_ptr<Impl>& gw, Accepted socket, ConnInfo info, Make make, Run run) {
    auto ticket = gw->shared->admit(info);
    if (!ticket) return turn_away(socket);
    auto stream = make(rebind(*gw, std::move(socket)));
    if (!stream) return;
    asio::co_spawn(gw->ex, run(gw, std::move(*stream), std::move(info), std::move(ticket)), asio::detached);
}

}  // namespace

// The gateway's io threads, each running its own io_context (one Impl each),
// or none: then the one Impl runs on the constructor's io_context (one thread).
struct Gateway::Workers {
    std::shared_ptr<Shared> shared;
    std::vector<std::shared_ptr<Impl>> impls;
    std::vector<std::unique_ptr<asio::io_context>> ios;
    std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
    std::vector<std::thread> threads;
    std::atomic<std::size_t> next{0};

    // Whose io thread is running this code, and which one of them (null:
    // not an io thread of any gateway).
    static thread_local const Workers* current;
    static thread_local std::size_t current_index;

    // A connection accepted on one of the io threads stays there; others go
    // round-robin over them.
    const std::shared_ptr<Impl>& pick() {
        if (current == this) return impls[current_index];
        return impls[next.fetch_add(1, std::memory_order_relaxed) % impls.size()];
    }
};

thread_local const Gateway::Workers* Gateway::Workers::current = nullptr;
thread_local std::size_t Gateway::Workers::current_index = 0;

Gateway::Gateway(asio::any_io_executor ex, std::shared_ptr<Store> store, GatewayOptions opts)
    : workers_(std::make_unique<Workers>()) {
    auto& w = *workers_;
    const std::size_t threads = opts.threads;
    w.shared = std::make_shared<Shared>(std::move(store), std::move(opts));
    if (threads == 0) {
        const auto* io = ex.target<Executor>();
        if (!io) throw Error("the terminator runs on an io_context: give it an io_context's executor");
        w.impls.push_back(std::make_shared<Impl>(w.shared, *io));
        return;
    }
    for (std::size_t i = 0; i < threads; ++i) {
        // One thread per io_context: its handlers never need a lock.
        w.ios.push_back(std::make_unique<asio::io_context>(1));
        w.guards.push_back(asio::make_work_guard(*w.ios.back()));
        w.impls.push_back(std::make_shared<Impl>(w.shared, w.ios.back()->get_executor()));
        w.impls.back()->hold_sends = true;
    }
    for (std::size_t i = 0; i < threads; ++i)
        w.threads.emplace_back([ctx = w.ios[i].get(), &w, i] {
            Workers::current = &w;
            Workers::current_index = i;
            auto& shared = *w.shared;
            for (;;) {
                try {
                    run_polling(*ctx, shared.opts.poll_before_sleep, &shared.stats.poll,
                                [&impl = *w.impls[i]] { return impl.calls <= Impl::kPollWhileCallsAtMost; });
                    return;
                } catch (const std::exception& e) {
                    spdlog::error("terminator: an io thread caught an exception and goes on: {}", e.what());
                }
            }
        });
}

Gateway::~Gateway() {
    auto& w = *workers_;
    w.shared->stopped = true;
    if (w.threads.empty()) {
        // Touch the Impl's state on its thread only; sessions in flight
        // finish their current request and close.
        asio::dispatch(w.impls[0]->ex, [impl = w.impls[0]] { impl->pool.clear(); });
        return;
    }
    // Own threads: stop them, then let each io_context destroy what it still
    // holds (sessions in flight end with it).
    for (auto& io : w.ios) io->stop();
    for (auto& t : w.threads) t.join();
    for (auto& impl : w.impls) {
        impl->pool.clear();
        impl->ctxs.clear();
    }
    // Each Impl's timers belong to its io_context: drop our references while
    // the io_contexts live (an Impl a pending handler still holds goes when
    // its io_context destroys that handler). In the other order ~Impl's
    // timer touched a freed timer queue (ASan: heap-use-after-free).
    w.impls.clear();
    w.guards.clear();
    w.ios.clear();
}

namespace {
// Wraps S in a TLS stream made from SERVER_CTX (nullopt: SSL_new failed).
auto tls_maker(SSL_CTX* server_ctx, std::uint64_t cgroup) {
    return [server_ctx, cgroup](Socket s) -> std::optional<TlsStream> {
        SslPtr ssl(SSL_new(server_ctx));
        if (!ssl) {
            spdlog::error("terminator: SSL_new failed for a connection from cgroup {}", cgroup);
            return std::nullopt;
        }
        return std::optional<TlsStream>(std::in_place, std::move(s), std::move(ssl));
    };
}
}  // namespace

void Gateway::serve_tls(tcp::socket socket, SSL_CTX* server_ctx, ConnInfo info) {
    auto make = tls_maker(server_ctx, info.cgroup_id);
    launch(workers_->pick(), std::move(socket), std::move(info), make, tls_session);
}

void Gateway::serve_tls(ContextSocket socket, SSL_CTX* server_ctx, ConnInfo info) {
    auto make = tls_maker(server_ctx, info.cgroup_id);
    launch(workers_->pick(), std::move(socket), std::move(info), make, tls_session);
}

void Gateway::serve_plain_refusal(tcp::socket socket, ConnInfo info) {
    auto make = [](Socket s) { return std::optional<PlainStream>(std::move(s)); };
    launch(workers_->pick(), std::move(socket), std::move(info), make, refusal_session);
}

void Gateway::serve_cleartext_for_tests(tcp::socket socket, ConnInfo info) {
    auto make = [](Socket s) { return std::optional<PlainStream>(std::move(s)); };
    launch(workers_->pick(), std::move(socket), std::move(info), make, session<PlainStream>);
}

const GatewayStats& Gateway::stats() const { return workers_->shared->stats; }
std::uint64_t Gateway::connections() const { return workers_->shared->conns->total_in_use(); }
std::uint64_t Gateway::connections_of(std::uint64_t cgroup_id) const {
    return workers_->shared->conns->in_use(cgroup_id);
}
std::size_t Gateway::threads() const { return workers_->threads.size(); }
std::vector<asio::io_context::executor_type> Gateway::io_executors() const {
    std::vector<asio::io_context::executor_type> out;
    for (auto& io : workers_->ios) out.push_back(io->get_executor());
    return out;
}

}  // namespace redir::terminator
