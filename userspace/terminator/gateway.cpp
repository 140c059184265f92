// All of the terminator's Beast code lives in this one translation unit: it
// is by far the heaviest thing to compile, and the agent links it once.
#include "terminator/gateway.hpp"
#include "terminator/provider_fetch.hpp"

#include <poll.h>
#include <spdlog/spdlog.h>

#include <array>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <deque>
#include <filesystem>

#include "common/error.hpp"
#include "terminator/head.hpp"
#include "terminator/mock.hpp"
#include "terminator/upstream_tls.hpp"

namespace redir::terminator {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using asio::awaitable;
using Clock = std::chrono::steady_clock;
using TlsStream = asio::ssl::stream<beast::tcp_stream>;
constexpr auto use_tuple = asio::as_tuple(asio::use_awaitable);

namespace {

std::string lower(std::string_view s) {
    std::string o(s);
    for (char& c : o) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return o;
}

bool iequals(std::string_view a, std::string_view b) { return beast::iequals(a, b); }

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

std::string seconds(std::chrono::milliseconds d) {
    if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
    return std::to_string(d.count()) + " ms";
}

struct UpstreamConn {
    std::shared_ptr<asio::ssl::context> ctx;
    TlsStream s;
    beast::flat_buffer buf;
    std::string key;
    Clock::time_point idle_since{};
    bool reused = false;
    UpstreamConn(const asio::any_io_executor& ex, std::shared_ptr<asio::ssl::context> c)
        : ctx(std::move(c)), s(ex, *ctx) {}
    void close() {
        beast::error_code ec;
        beast::get_lowest_layer(s).socket().close(ec);
    }
};

// Kept-alive provider connections by (host, port, trust).
class Pool {
public:
    std::unique_ptr<UpstreamConn> take(const std::string& key, std::chrono::milliseconds idle_timeout) {
        auto it = idle_.find(key);
        if (it == idle_.end()) return nullptr;
        auto& q = it->second;
        while (!q.empty()) {
            auto c = std::move(q.back());
            q.pop_back();
            if (Clock::now() - c->idle_since > idle_timeout) continue;
            // Anything readable on an idle connection is the provider closing
            // it (FIN or close_notify): not reusable.
            pollfd pfd{beast::get_lowest_layer(c->s).socket().native_handle(), POLLIN, 0};
            if (::poll(&pfd, 1, 0) != 0) continue;
            c->reused = true;
            return c;
        }
        return nullptr;
    }
    void put(std::unique_ptr<UpstreamConn> c, std::size_t max, std::chrono::milliseconds idle_timeout) {
        auto& q = idle_[c->key];
        auto now = Clock::now();
        while (!q.empty() && now - q.front()->idle_since > idle_timeout) q.pop_front();
        c->idle_since = now;
        q.push_back(std::move(c));
        while (q.size() > max) q.pop_front();
    }
    void clear() { idle_.clear(); }

private:
    std::map<std::string, std::deque<std::unique_ptr<UpstreamConn>>> idle_;
};

struct Failure {
    int status = 502;
    std::string message;
};

// Watches the client while the provider works, so that a sandbox that hangs
// up stops the provider request instead of letting it run (and bill) on.
struct ClientWatch {
    explicit ClientWatch(const asio::any_io_executor& ex) : done(ex) { done.expires_at(Clock::time_point::max()); }
    bool active = false;
    bool finished = false;
    bool gone = false;
    UpstreamConn* upstream = nullptr;
    asio::steady_timer done;
};

template <class Stream>
void close_stream(Stream& s) {
    beast::error_code ec;
    auto& sock = beast::get_lowest_layer(s).socket();
    sock.shutdown(tcp::socket::shutdown_both, ec);
    sock.close(ec);
}

}  // namespace

struct Gateway::Impl {
    Impl(asio::any_io_executor ex, std::shared_ptr<Store> st, GatewayOptions o)
        : strand(asio::make_strand(ex)), store(std::move(st)), opts(std::move(o)),
          conns(Quota::make({opts.max_connections_per_sandbox, opts.max_connections_total})),
          body_bytes(Quota::make({opts.body_bytes_per_sandbox, opts.body_bytes_total})) {}

    asio::strand<asio::any_io_executor> strand;
    std::shared_ptr<Store> store;
    GatewayOptions opts;
    Pool pool;
    struct CtxEntry {
        std::shared_ptr<asio::ssl::context> ctx;
        std::filesystem::file_time_type mtime;
    };
    std::map<std::string, CtxEntry> ctxs;
    bool stopped = false;
    std::shared_ptr<Quota> conns;       // connections per sandbox and in total
    std::shared_ptr<Quota> body_bytes;  // request bodies in memory
    RefusalThrottle throttle;
    GatewayStats stats;

    void refused(const ConnectionInfo& info, std::string limit, std::uint64_t cap) {
        LimitRefusal r{std::move(limit), cap, 0};
        if (opts.on_refused && throttle.should_record(info.cgroup_id, r.suppressed)) opts.on_refused(info, r);
    }

    // A connection ticket for INFO's sandbox, or an empty one (refusal reported).
    Quota::Ticket admit(const ConnectionInfo& info) {
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

    void record(const RequestLog& r) {
        auto line = request_log_json(r);
        auto lg = opts.access_log ? opts.access_log : spdlog::default_logger();
        if (lg) lg->info("{}", line);
        if (opts.on_request) opts.on_request(r);
    }
};

namespace {

using Impl = Gateway::Impl;
using Request = http::request<http::string_body>;

// A write to the sandbox that hit the write timeout: the sandbox stopped
// reading, and the connection (with its bounded output) is dropped.
void note_write(Impl& gw, const beast::error_code& ec) {
    if (ec == beast::error::timeout) ++gw.stats.write_timeouts;
}

template <class Stream>
awaitable<bool> send_body(Impl& gw, Stream& s, int status, std::string content_type, std::string body,
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
    auto [ec, n] = co_await http::async_write(s, res, use_tuple);
    note_write(gw, ec);
    co_return !ec && keep_alive;
}

template <class Stream>
awaitable<bool> send_error(Impl& gw, Stream& s, ApiShape shape, int status, std::string message, bool keep_alive,
                           RequestLog& log, const HeaderList& extra = {}) {
    if (log.error.empty()) log.error = message;
    co_return co_await send_body(gw, s, status, "application/json",
                                 error_json(shape, error_type_for_status(shape, status), message), keep_alive, log,
                                 extra);
}

template <class Stream>
awaitable<void> watch_client(Stream& s, beast::flat_buffer& buf, std::shared_ptr<ClientWatch> w) {
    auto [ec, n] = co_await s.async_read_some(buf.prepare(4096), use_tuple);
    if (!ec) {
        // The next pipelined request: keep it for the session.
        buf.commit(n);
    } else if (ec != asio::error::operation_aborted) {
        w->gone = true;
        if (w->upstream) w->upstream->close();
    }
    w->finished = true;
    w->done.cancel();
}

awaitable<std::unique_ptr<UpstreamConn>> connect_upstream(Impl& gw, const Provider& p, const BaseUrl& b,
                                                          const std::string& key, ClientWatch& watch,
                                                          Failure& f) {
    const auto& o = gw.opts;
    const std::string where = "provider " + p.name + " (" + b.host_header + ")";
    std::shared_ptr<asio::ssl::context> ctx;
    try {
        ctx = gw.client_ctx(p.ca_file);
    } catch (const std::exception& e) {
        f = {502, where + ": " + e.what()};
        co_return nullptr;
    }
    auto conn = std::make_unique<UpstreamConn>(gw.strand, ctx);
    conn->key = key;
    watch.upstream = conn.get();
    // Failures below destroy CONN: the watcher must not keep it (the caller
    // sets it again from what is returned).
    struct Forget {
        ClientWatch& w;
        ~Forget() { w.upstream = nullptr; }
    } forget{watch};
    auto& low = beast::get_lowest_layer(conn->s);
    const auto deadline = Clock::now() + o.upstream_connect_timeout;

    std::vector<tcp::endpoint> eps;
    std::string host = b.host;
    if (auto ov = o.resolve_overrides.find(b.host); ov != o.resolve_overrides.end()) host = ov->second;
    beast::error_code aec;
    auto literal = asio::ip::make_address(host, aec);
    if (!aec) {
        eps.emplace_back(literal, b.port);
    } else {
        auto resolver = std::make_shared<tcp::resolver>(gw.strand);
        asio::steady_timer t(gw.strand);
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
            co_return nullptr;
        }
        for (const auto& e : res) eps.push_back(e.endpoint());
    }
    if (watch.gone) co_return nullptr;
    low.expires_at(deadline);
    auto [cec, ep] = co_await low.async_connect(eps, use_tuple);
    if (cec) {
        f = cec == beast::error::timeout
                ? Failure{504, "connecting to " + where + " timed out after " + seconds(o.upstream_connect_timeout)}
                : Failure{502, "cannot connect to " + where + ": " + cec.message()};
        co_return nullptr;
    }
    low.socket().set_option(tcp::no_delay(true), aec);
    try {
        prepare_client_ssl(conn->s.native_handle(), b.host, b.ip_literal);
    } catch (const std::exception& e) {
        f = {502, where + ": " + e.what()};
        co_return nullptr;
    }
    low.expires_at(deadline);
    auto [hec] = co_await conn->s.async_handshake(asio::ssl::stream_base::client, use_tuple);
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

struct ProxyCall {
    const Provider& provider;
    const Profile& profile;
    const BaseUrl& base;
    http::request<http::string_body>& upstream_req;
    ApiShape shape;
    bool client_keep_alive;
    Quota::Ticket* body_room;  // given back once the provider has answered
};

template <class Stream>
awaitable<bool> relay(Impl& gw, Stream& s, ProxyCall& call, ClientWatch& watch, RequestLog& log) {
    const auto& o = gw.opts;
    const std::string where = "provider " + call.provider.name + " (" + call.base.host_header + ")";
    const std::string key = call.base.host + "|" + std::to_string(call.base.port) + "|" + call.provider.ca_file;

    std::unique_ptr<UpstreamConn> conn;
    std::unique_ptr<http::response_parser<http::buffer_body>> up;
    for (int attempt = 0;; ++attempt) {
        // The watcher must never see a connection that is being destroyed.
        watch.upstream = nullptr;
        conn.reset();
        conn = attempt == 0 ? gw.pool.take(key, o.pool_idle_timeout) : nullptr;
        if (!conn) {
            Failure f;
            conn = co_await connect_upstream(gw, call.provider, call.base, key, watch, f);
            watch.upstream = conn.get();
            if (watch.gone) co_return false;
            if (!conn) co_return co_await send_error(gw, s, call.shape, f.status, f.message, call.client_keep_alive, log);
        }
        watch.upstream = conn.get();
        auto& ulow = beast::get_lowest_layer(conn->s);
        ulow.expires_after(o.upstream_write_timeout);
        auto [wec, wn] = co_await http::async_write(conn->s, call.upstream_req, use_tuple);
        if (watch.gone) co_return false;
        if (wec) {
            if (conn->reused && attempt == 0) continue;
            co_return co_await send_error(gw, s, call.shape, wec == beast::error::timeout ? 504 : 502,
                                          "sending the request to " + where + " failed: " + wec.message(),
                                          call.client_keep_alive, log);
        }
        up = std::make_unique<http::response_parser<http::buffer_body>>();
        up->body_limit(boost::none);
        up->header_limit(64 * 1024);
        ulow.expires_after(o.upstream_response_timeout);
        auto [rec, rn] = co_await http::async_read_header(conn->s, conn->buf, *up, use_tuple);
        if (watch.gone) co_return false;
        if (rec) {
            if (conn->reused && attempt == 0 && rn == 0 && stale_connection_error(rec)) continue;
            if (rec == beast::error::timeout)
                co_return co_await send_error(gw, s, call.shape, 504,
                                              where + " did not answer within " +
                                                  seconds(o.upstream_response_timeout),
                                              call.client_keep_alive, log);
            co_return co_await send_error(gw, s, call.shape, 502,
                                          where + " closed the connection or sent an invalid response: " +
                                              rec.message(),
                                          call.client_keep_alive, log);
        }
        break;
    }
    // Answered: the request body will not be sent again, and a long stream
    // must not keep its memory (or the sandbox's share of it).
    std::string().swap(call.upstream_req.body());
    call.body_room->release();

    const auto& uh = up->get();
    if (uh.result_int() == 401) {
        // The sandbox's key is never the one that was refused, and provider
        // 401 bodies quote part of the key: answer in our own words.
        conn->close();
        co_return co_await send_error(gw, s, call.shape, 401,
                                      "provider " + call.provider.name +
                                          " rejected the credential configured for it: an operator must update it "
                                          "with `redirctl provider update " +
                                          call.provider.name + " --credential KEY=VALUE`",
                                      call.client_keep_alive, log);
    }
    HeaderList rh;
    for (const auto& f : uh) rh.emplace_back(lower(f.name_string()), std::string(f.value()));
    const auto ctoks = connection_tokens(rh);
    http::response<http::buffer_body> res;
    res.version(11);
    res.result(uh.result_int());
    res.reason(uh.reason());
    for (const auto& [n, v] : rh)
        if (relay_response_header(n, ctoks)) res.insert(n, v);
    const auto ct = uh[http::field::content_type];
    const bool sse = ct.size() >= 17 && iequals(ct.substr(0, 17), "text/event-stream");
    const auto ce = trim(uh[http::field::content_encoding]);
    const bool encoded = !ce.empty() && !iequals(ce, "identity");
    const int status = uh.result_int();
    const bool no_body = status / 100 == 1 || status == 204 || status == 304;
    const bool has_length = up->content_length().has_value() && !up->chunked();
    if (no_body) {
    } else if (has_length) {
        res.content_length(*up->content_length());
    } else {
        res.chunked(true);
    }
    res.keep_alive(call.client_keep_alive);
    log.status = status;

    auto& low = beast::get_lowest_layer(s);
    res.body().data = nullptr;
    res.body().more = !no_body;
    http::response_serializer<http::buffer_body> sr{res};
    low.expires_after(o.write_timeout);
    auto [hec, hn] = co_await http::async_write_header(s, sr, use_tuple);
    note_write(gw, hec);
    if (hec) {
        log.error = "client closed the connection";
        conn->close();
        co_return false;
    }

    SseUsageScanner scanner;
    std::string json_copy;
    constexpr std::size_t kMaxUsageCopy = 4 << 20;
    const bool json_body = !sse && !encoded && ct.find("json") != std::string_view::npos;
    std::array<char, 16 * 1024> piece;
    beast::error_code upstream_ec;
    while (!up->is_done()) {
        up->get().body().data = piece.data();
        up->get().body().size = piece.size();
        beast::get_lowest_layer(conn->s).expires_after(o.stream_idle_timeout);
        auto [rec, rn] = co_await http::async_read_some(conn->s, conn->buf, *up, use_tuple);
        if (watch.gone) {
            log.error = "client closed the connection";
            co_return false;
        }
        if (rec == http::error::need_buffer) rec = {};
        if (rec) {
            upstream_ec = rec;
            break;
        }
        const std::size_t got = piece.size() - up->get().body().size;
        if (got == 0) continue;
        std::string_view data(piece.data(), got);
        if (sse && !encoded) scanner.feed(data);
        if (json_body && json_copy.size() + got <= kMaxUsageCopy) json_copy.append(data);
        res.body().data = piece.data();
        res.body().size = got;
        res.body().more = true;
        low.expires_after(o.write_timeout);
        auto [wec, wn] = co_await http::async_write(s, sr, use_tuple);
        if (wec == http::error::need_buffer) wec = {};
        note_write(gw, wec);
        if (wec) {
            log.error = "client closed the connection";
            conn->close();
            co_return false;
        }
        log.bytes_out += got;
    }
    if (sse) log.usage = scanner.usage();
    if (json_body && !json_copy.empty()) extract_usage(json_copy, log.usage);

    if (upstream_ec) {
        conn->close();
        const std::string why = upstream_ec == beast::error::timeout
                                    ? where + " sent nothing for " + seconds(o.stream_idle_timeout) + " mid-response"
                                    : where + " broke off the response: " + upstream_ec.message();
        log.error = why;
        if (!(sse && res.chunked())) co_return false;
        // Tell the SDK in its own words before ending the stream, rather
        // than leaving it to guess from a truncated body.
        std::string ev = "event: error\ndata: " +
                         error_json(call.shape, "api_error", why) +
                         "\n\n";
        res.body().data = ev.data();
        res.body().size = ev.size();
        res.body().more = true;
        low.expires_after(o.write_timeout);
        auto [e1, n1] = co_await http::async_write(s, sr, use_tuple);
        if (e1 && e1 != http::error::need_buffer) co_return false;
        res.body().data = nullptr;
        res.body().size = 0;
        res.body().more = false;
        co_await http::async_write(s, sr, use_tuple);
        co_return false;
    }

    res.body().data = nullptr;
    res.body().size = 0;
    res.body().more = false;
    low.expires_after(o.write_timeout);
    auto [fec, fn] = co_await http::async_write(s, sr, use_tuple);
    watch.upstream = nullptr;
    if (up->keep_alive() && conn->buf.size() == 0 && !gw.stopped)
        gw.pool.put(std::move(conn), o.pool_max_idle_per_host, o.pool_idle_timeout);
    co_return !fec && call.client_keep_alive;
}

template <class Stream>
awaitable<bool> proxy(Impl& gw, Stream& s, beast::flat_buffer& buf, ProxyCall& call, RequestLog& log) {
    auto watch = std::make_shared<ClientWatch>(gw.strand);
    if (buf.size() == 0) {
        // Reads are unbounded while watching; writes get their own timeout.
        beast::get_lowest_layer(s).expires_never();
        watch->active = true;
        asio::co_spawn(gw.strand, watch_client(s, buf, watch), asio::detached);
    }
    bool keep = false;
    std::exception_ptr err;
    try {
        keep = co_await relay(gw, s, call, *watch, log);
    } catch (...) {
        err = std::current_exception();
    }
    watch->upstream = nullptr;
    if (watch->active && !watch->finished) {
        beast::get_lowest_layer(s).cancel();
        co_await watch->done.async_wait(use_tuple);
    }
    if (err) std::rethrow_exception(err);
    if (watch->gone) {
        if (log.error.empty()) log.error = "client closed the connection";
        if (log.status == 0) log.status = 499;
        co_return false;
    }
    co_return keep;
}

template <class Stream>
awaitable<bool> send_mock(Impl& gw, Stream& s, const MockReply& m, bool keep_alive, RequestLog& log) {
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
    auto& low = beast::get_lowest_layer(s);
    low.expires_after(gw.opts.write_timeout);
    auto [ec, n] = co_await http::async_write_header(s, sr, use_tuple);
    if (ec) co_return false;
    for (const auto& p : m.pieces) {
        res.body().data = const_cast<char*>(p.data());
        res.body().size = p.size();
        res.body().more = true;
        low.expires_after(gw.opts.write_timeout);
        auto [wec, wn] = co_await http::async_write(s, sr, use_tuple);
        note_write(gw, wec);
        if (wec && wec != http::error::need_buffer) co_return false;
        log.bytes_out += p.size();
    }
    res.body().data = nullptr;
    res.body().size = 0;
    res.body().more = false;
    auto [fec, fn] = co_await http::async_write(s, sr, use_tuple);
    co_return !fec && keep_alive;
}

// One request on a connection. Returns whether the connection stays open.
template <class Stream>
awaitable<bool> serve_one(Impl& gw, Stream& s, beast::flat_buffer& buf, RequestLog& log, const ConnectionInfo& info) {
    const auto& o = gw.opts;
    auto& low = beast::get_lowest_layer(s);
    if (buf.size() == 0) {
        low.expires_after(o.idle_timeout);
        auto [ec, n] = co_await s.async_read_some(buf.prepare(8192), use_tuple);
        if (ec) co_return false;
        buf.commit(n);
    }
    log.method = "-";
    const auto deadline = Clock::now() + o.header_timeout;
    ApiShape shape = ApiShape::OpenAI;
    const std::string header_too_large = "request header is larger than " + std::to_string(o.header_limit) + " bytes";

    // Header: gathered whole first so it can be checked as bytes before Beast
    // parses it.
    for (;;) {
        std::size_t end = 0;
        auto l = lint_header({static_cast<const char*>(buf.data().data()), buf.size()}, end);
        if (l == HeaderLint::BareLf)
            co_return co_await send_error(gw, s, shape, 400, "request line or header ends in a bare LF; HTTP requires CRLF",
                                          false, log);
        if (l == HeaderLint::ObsFold)
            co_return co_await send_error(gw, s, shape, 400,
                                          "request header uses obsolete line folding (a line starting with "
                                          "whitespace); send each header on one line",
                                          false, log);
        if (l == HeaderLint::Complete && end <= o.header_limit) break;
        if (buf.size() > o.header_limit) {
            ++gw.stats.header_too_large;
            co_return co_await send_error(gw, s, shape, 431, header_too_large, false, log);
        }
        low.expires_at(deadline);
        auto [ec, n] = co_await s.async_read_some(buf.prepare(8192), use_tuple);
        // On a timeout Beast has already closed the socket: a slow client
        // gets no answer, just the end of the connection.
        if (ec) co_return false;
        buf.commit(n);
    }

    http::request_parser<http::string_body> p;
    p.header_limit(static_cast<std::uint32_t>(o.header_limit));
    p.body_limit(o.body_limit);
    low.expires_at(deadline);
    auto [hec, hn] = co_await http::async_read_header(s, buf, p, use_tuple);
    if (hec) {
        if (hec == http::error::body_limit) {
            ++gw.stats.body_too_large;
            co_return co_await send_error(gw, s, shape, 413,
                                          "request body is larger than " + std::to_string(o.body_limit) + " bytes",
                                          false, log);
        }
        if (hec == http::error::header_limit) {
            ++gw.stats.header_too_large;
            co_return co_await send_error(gw, s, shape, 431, header_too_large, false, log);
        }
        co_return co_await send_error(gw, s, shape, 400, "malformed HTTP request: " + hec.message(), false, log);
    }
    auto& req = p.get();
    auto route = decide_route(head_of(req), o.log_string_max);
    log.method = clip(req.method_string(), 32);
    log.path = clip(route.path, o.log_string_max);
    bool truncated = clipped(route.path, o.log_string_max);
    shape = route.shape;
    if (route.framing_status)
        co_return co_await send_error(gw, s, shape, route.framing_status, std::move(route.message), false, log);
    const bool expect_continue = route.expect_continue;

    // Decide from the header alone whether the request can be served.
    int reject_status = route.route_status;
    std::string reject_msg = std::move(route.message);
    HeaderList reject_headers = std::move(route.headers);
    const std::string& model_id = route.model_id;
    const std::optional<Endpoint> ep = route.endpoint;
    auto snap = gw.store->snapshot();
    const Profile* profile = nullptr;
    if (reject_status) {
        // decided by the route
    } else if (!snap->inference || !snap->provider) {
        reject_status = 503;
        reject_msg = "no inference provider is configured on this node: an operator must run `redirctl inference "
                     "set --provider NAME --model MODEL`";
    } else if (!(profile = find_profile(snap->provider->type))) {
        reject_status = 503;
        reject_msg = "provider " + snap->provider->name + " has an unknown type " + snap->provider->type;
    } else if (!profile->serves(*ep)) {
        reject_status = 400;
        reject_msg = "provider " + snap->provider->name + " (type " + snap->provider->type +
                     ") does not speak " + std::string(endpoint_description(*ep)) + " (" +
                     std::string(endpoint_path(*ep)) + "); call an endpoint it serves or configure another "
                     "provider with `redirctl inference set`";
    } else if (*ep == Endpoint::ModelById && model_id != snap->inference->model) {
        reject_status = 404;
        truncated |= clipped(model_id, o.log_string_max);
        reject_msg = "model " + clip(model_id, o.log_string_max) + " is not served here; inference.local serves " +
                     snap->inference->model + " (requests for any model are answered by it)";
    }
    if (snap->inference) {
        log.model_used = snap->inference->model;
        log.config_version = snap->inference->version;
    }
    if (snap->provider) {
        log.provider = snap->provider->name;
        log.provider_type = snap->provider->type;
    }

    if (truncated) ++gw.stats.log_strings_truncated;
    if (reject_status && expect_continue) {
        // The client is waiting to be told whether to send the body: it is
        // not read, so the connection cannot be reused.
        co_return co_await send_error(gw, s, shape, reject_status, reject_msg, false, log, reject_headers);
    }
    // Room for the body is reserved before it is read, so one sandbox cannot
    // hold more than its share of the agent's memory in request bodies.
    Quota::Ticket body_room;
    if (!p.is_done()) {
        const std::uint64_t want = p.content_length().value_or(o.body_limit);
        Quota::Refusal why{};
        body_room = gw.body_bytes->try_acquire(info.cgroup_id, want, &why);
        if (!body_room) {
            ++gw.stats.refused_body_budget;
            const bool mine = why == Quota::Refusal::Sandbox;
            const auto cap = mine ? gw.body_bytes->caps().per_sandbox : gw.body_bytes->caps().total;
            gw.refused(info, mine ? "body_bytes_per_sandbox" : "body_bytes_total", cap);
            // Named, not braced in the call: GCC 12 cannot build the
            // coroutine frame around an initializer-list temporary.
            HeaderList retry;
            retry.emplace_back("retry-after", "1");
            std::string why_msg = std::string(mine ? "this sandbox's" : "all sandboxes'") +
                                  " request bodies in flight would pass " + std::to_string(cap) +
                                  " bytes: retry when earlier requests have finished";
            co_return co_await send_error(gw, s, shape, 503, std::move(why_msg), false, log, retry);
        }
    }
    if (expect_continue && !p.is_done()) {
        http::response<http::empty_body> cont{http::status::continue_, 11};
        low.expires_after(o.write_timeout);
        auto [cec, cn] = co_await http::async_write(s, cont, use_tuple);
        if (cec) co_return false;
    }
    if (!p.is_done()) {
        low.expires_after(o.body_timeout);
        auto [bec, bn] = co_await http::async_read(s, buf, p, use_tuple);
        if (bec == http::error::body_limit) ++gw.stats.body_too_large;
        if (bec == http::error::body_limit)
            co_return co_await send_error(gw, s, shape, 413,
                                          "request body is larger than " + std::to_string(o.body_limit) + " bytes",
                                          false, log);
        if (bec == beast::error::timeout) {
            log.status = 408;
            log.error = "request body not received within " + seconds(o.body_timeout);
            co_return false;
        }
        if (bec == http::error::partial_message || bec == http::error::end_of_stream ||
            bec == asio::error::eof || bec == asio::error::connection_reset)
            co_return false;
        if (bec) co_return co_await send_error(gw, s, shape, 400, "malformed request body: " + bec.message(), false, log);
    }
    log.bytes_in = req.body().size();
    const bool keep_alive = req.keep_alive() && !gw.stopped;
    if (reject_status)
        co_return co_await send_error(gw, s, shape, reject_status, reject_msg, keep_alive, log, reject_headers);

    const auto& cfg = *snap->inference;
    const auto& provider = *snap->provider;
    if (*ep == Endpoint::Models)
        co_return co_await send_body(gw, s, 200, "application/json", models_list_json(shape, cfg), keep_alive, log);
    if (*ep == Endpoint::ModelById)
        co_return co_await send_body(gw, s, 200, "application/json", model_json(shape, cfg), keep_alive, log);

    auto rw = rewrite_model(req.body(), cfg.model, o.log_string_max);
    // The client's body is no longer needed: only the rewritten copy lives on.
    std::string().swap(req.body());
    if (rw.truncated) ++gw.stats.log_strings_truncated;
    if (!rw.ok) co_return co_await send_error(gw, s, shape, 400, std::move(rw.error), keep_alive, log);
    log.model_requested = std::move(rw.model_requested);
    log.stream = rw.stream;
    HeaderList client_headers;
    for (const auto& f : req) client_headers.emplace_back(lower(f.name_string()), std::string(f.value()));
    if (!(o.provider_fetch_allowed && o.provider_fetch_allowed(info.cgroup_id)))
        if (auto fetch = find_provider_fetch(rw.body, client_headers, o.log_string_max))
            co_return co_await send_error(gw, s, shape, 400, provider_fetch_refusal(*fetch), keep_alive, log);

    if (profile->local) {
        auto m = mock_reply(*ep, rw.body, cfg.model, rw.stream);
        co_return co_await send_mock(gw, s, m, keep_alive, log);
    }

    std::string err;
    auto base = parse_base_url(provider.base_url, &err);
    if (!base)
        co_return co_await send_error(gw, s, shape, 502, "provider " + provider.name + " is misconfigured: " + err,
                                      keep_alive, log);
    http::request<http::string_body> ureq{http::verb::post, upstream_target(*base, *profile, route.path, route.query),
                                          11};
    ureq.set(http::field::host, base->host_header);
    for (const auto& [n, v] : upstream_headers(client_headers, *profile, provider)) ureq.insert(n, v);
    ureq.body() = std::move(rw.body);
    ureq.keep_alive(true);
    ureq.prepare_payload();
    ProxyCall call{provider, *profile, *base, ureq, shape, keep_alive, &body_room};
    co_return co_await proxy(gw, s, buf, call, log);
}

template <class Stream>
awaitable<void> session(std::shared_ptr<Impl> gw, Stream s, ConnectionInfo info, Quota::Ticket = {}) {
    beast::flat_buffer buf;
    try {
        for (;;) {
            RequestLog log;
            log.cgroup_id = info.cgroup_id;
            log.pid = info.pid;
            log.client = info.client;
            const auto start = Clock::now();
            bool keep = co_await serve_one(*gw, s, buf, log, info);
            if (log.status != 0) {
                log.duration_ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
                gw->record(log);
            }
            if (!keep || gw->stopped) break;
        }
    } catch (const std::exception& e) {
        spdlog::warn("terminator: session for cgroup {} ended: {}", info.cgroup_id, e.what());
    }
    close_stream(s);
}

// Moves the accepted socket onto the gateway's strand.
tcp::socket rebind(Impl& gw, tcp::socket sock) {
    beast::error_code ec;
    auto proto = sock.local_endpoint(ec).protocol();
    if (ec) proto = tcp::v4();
    int fd = sock.release(ec);
    if (ec) throw beast::system_error(ec);
    tcp::socket out(gw.strand);
    out.assign(proto, fd, ec);
    if (ec) {
        ::close(fd);
        throw beast::system_error(ec);
    }
    out.set_option(tcp::no_delay(true), ec);
    return out;
}

// Each session coroutine owns its connection ticket: the sandbox's slot is
// given back whenever and however the session ends.
awaitable<void> tls_session(std::shared_ptr<Impl> gw, TlsStream s, ConnectionInfo info, Quota::Ticket) {
    beast::get_lowest_layer(s).expires_after(gw->opts.handshake_timeout);
    auto [ec] = co_await s.async_handshake(asio::ssl::stream_base::server, use_tuple);
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

awaitable<void> refusal_session(std::shared_ptr<Impl> gw, beast::tcp_stream s, ConnectionInfo info, Quota::Ticket) {
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
    log.cgroup_id = info.cgroup_id;
    log.pid = info.pid;
    log.client = info.client;
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

}  // namespace

Gateway::Gateway(asio::any_io_executor ex, std::shared_ptr<Store> store, GatewayOptions opts)
    : impl_(std::make_shared<Impl>(std::move(ex), std::move(store), std::move(opts))) {}

Gateway::~Gateway() {
    // Touch the shared state on its strand only.
    asio::dispatch(impl_->strand, [impl = impl_] {
        impl->stopped = true;
        impl->pool.clear();
    });
}

namespace {
// Over a cap the connection is closed before any byte is read: cheaper than
// a TLS handshake, and the client's SDK retries as for any dropped connection.
void turn_away(tcp::socket& socket) {
    beast::error_code ig;
    socket.close(ig);
}
}  // namespace

void Gateway::serve_tls(tcp::socket socket, SSL_CTX* server_ctx, ConnectionInfo info) {
    auto ticket = impl_->admit(info);
    if (!ticket) return turn_away(socket);
    SSL* ssl = SSL_new(server_ctx);
    if (!ssl) {
        spdlog::error("terminator: SSL_new failed for a connection from cgroup {}", info.cgroup_id);
        return;
    }
    TlsStream s(beast::tcp_stream(rebind(*impl_, std::move(socket))), ssl);
    asio::co_spawn(impl_->strand, tls_session(impl_, std::move(s), std::move(info), std::move(ticket)),
                   asio::detached);
}

void Gateway::serve_plain_refusal(tcp::socket socket, ConnectionInfo info) {
    auto ticket = impl_->admit(info);
    if (!ticket) return turn_away(socket);
    beast::tcp_stream s(rebind(*impl_, std::move(socket)));
    asio::co_spawn(impl_->strand, refusal_session(impl_, std::move(s), std::move(info), std::move(ticket)),
                   asio::detached);
}

void Gateway::serve_cleartext_for_tests(tcp::socket socket, ConnectionInfo info) {
    auto ticket = impl_->admit(info);
    if (!ticket) return turn_away(socket);
    beast::tcp_stream s(rebind(*impl_, std::move(socket)));
    asio::co_spawn(impl_->strand, session(impl_, std::move(s), std::move(info), std::move(ticket)), asio::detached);
}

const GatewayStats& Gateway::stats() const { return impl_->stats; }
std::uint64_t Gateway::connections() const { return impl_->conns->total_in_use(); }
std::uint64_t Gateway::connections_of(std::uint64_t cgroup_id) const { return impl_->conns->in_use(cgroup_id); }

}  // namespace redir::terminator
