#pragma once
// The terminator's connection streams (Beast AsyncReadStream/AsyncWriteStream)
// on a concrete io_context executor: TlsStream runs OpenSSL over a minimal BIO
// (ciphertext read by Asio into one lazily allocated buffer, records sent
// straight to the socket or, with hold_sends, at the end of the loop turn),
// instead of asio::ssl::stream's fixed 2 x 17 KiB buffers, BIO pair and
// engine; PlainStream is the cleartext one. Both carry a per-connection
// deadline that costs no timer operation per I/O.
#include <openssl/err.h>
#include <openssl/ssl.h>

#include <boost/asio/basic_stream_socket.hpp>
#include <boost/asio/basic_waitable_timer.hpp>
#include <boost/asio/buffer.hpp>
#include <boost/asio/compose.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/stream_base.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <iterator>
#include <cstddef>
#include <deque>
#include <memory>
#include <string>

#include "terminator/draining_read.hpp"

namespace redir::terminator {

using Executor = boost::asio::io_context::executor_type;
using Socket = boost::asio::basic_stream_socket<boost::asio::ip::tcp, Executor>;
using Clock = std::chrono::steady_clock;
using Timer = boost::asio::basic_waitable_timer<Clock, boost::asio::wait_traits<Clock>, Executor>;

struct SslFree {
    void operator()(SSL* s) const { SSL_free(s); }
};
using SslPtr = std::unique_ptr<SSL, SslFree>;

// One connection's state, shared with the handlers the stream starts on its
// own (the deadline timer, the flush of records the socket did not take at
// once), so that they may complete safely after the stream is gone.
class ConnCore : public std::enable_shared_from_this<ConnCore> {
public:
    using error_code = boost::system::error_code;
    static constexpr std::size_t kReadBuffer = 17 * 1024;  // one TLS record and its overhead

    explicit ConnCore(Socket s);
    ~ConnCore();

    Socket socket;

    // -- Deadline: one timer armed lazily. Moving the deadline later costs a
    // store; the timer, when it fires early, re-arms for the current one.
    // Past it, the socket is closed (as beast::basic_stream does) and the
    // operations it aborts report beast::error::timeout.
    void expires_at(Clock::time_point t);
    bool timed_out() const { return timed_out_; }
    // Whether the deadline that closed the connection was held output's
    // (held_flush_limit), not the caller's.
    bool output_timed_out() const { return output_timed_out_; }
    error_code map(const error_code& ec) const;
    void stop();  // the stream is gone: close, cancel what is pending

    // -- TLS (null for a cleartext connection).
    SslPtr ssl;
    void attach(SslPtr s);
    // Ciphertext received and not yet consumed by OpenSSL.
    std::unique_ptr<char[]> in;
    std::size_t in_begin = 0, in_end = 0;
    bool in_eof = false;
    // The free end of IN, for the next socket read (one the kernel says
    // emptied the socket marks it drained: see draining_read.hpp).
    DrainingBuffer in_space();
    // Records the socket did not take at once, in order; element references
    // stay valid while more are appended (the flush writes from the front).
    std::deque<std::string> out;
    std::size_t out_off = 0;
    bool flushing = false;
    error_code out_error;   // the socket refused a write: every later one fails
    Timer flush_event;      // never expires: cancel() wakes operations waiting for the flush
    bool release_when_idle = false;
    // -- Sends held to the end of the loop turn (hold_sends): records wait
    // in OUT, unoffered (held), until the handlers that are ready now have
    // run; then every held connection of the thread is sent, each in one
    // sendmsg(2). Sent as they were made, a turn's records woke the peer
    // (wrk, the provider) once each while it kept falling asleep between
    // them; held, it wakes once for the turn and finds them in one batch.
    // (Sending a turn's first record at once, for one connection's sake,
    // gained nothing there and lost 0-4% under load: not done.) Only on a
    // socket whose io_context one thread runs (the turn is per thread).
    bool hold_sends = false;
    // Held records the socket does not take whole at the end of the turn are
    // flushed in the background while the connection goes on (the session
    // is already waiting for the next request, under the idle deadline):
    // they must leave within this, or the connection is closed as by the
    // deadline. The write timeout of the side, set with hold_sends.
    Clock::duration held_flush_limit = Clock::duration::max();
    bool held = false;  // OUT's records are held, not yet offered to the socket
    std::size_t held_bytes = 0;
    // More than this in one turn (a large request body) is not held: what is
    // held goes at once and the rest is written as without holding, so a
    // turn never keeps more than this of a connection's output in memory.
    static constexpr std::size_t kHoldMax = 64 * 1024;
    void hold();        // marks OUT held and joins this turn's send
    void send_held();   // offers what is held to the socket now
    // Records in OUT that a writer or reader must wait for (held ones leave
    // at the end of the turn, before the loop waits again).
    bool unsent() const { return !out.empty() && !held; }
    // Whether an SSL_read could return anything without more from the socket:
    // ciphertext of ours not yet taken, the end of the stream to report,
    // plaintext or a record OpenSSL holds, or a state (handshake, failure,
    // shutdown) in which it answers without input.
    bool may_have_input() const;
    void kick_flush();
    void maybe_release();
    // Read buffers given back by maybe_release(), all connections of the
    // process: a connection left in release mode after its stream shows up
    // here once per record (the gateway's tests watch it).
    static std::uint64_t read_buffers_released() { return released_.load(std::memory_order_relaxed); }
    // Connections whose held records the socket did not take whole at the
    // end of a turn and that are still flushing the rest in the background
    // (under held_flush_limit), all of the process (the gateway's tests
    // watch it).
    static std::int64_t held_flushes_waiting() { return left_over_.load(std::memory_order_relaxed); }
    // Why an SSL call returned R (after SSL_get_error gave E).
    error_code ssl_error(int e) const;

private:
    void arm(Clock::time_point t);
    void expire();
    Clock::time_point due() const { return std::min(deadline_, flush_due_); }
    void flush_due_at(Clock::time_point t);
    void arm_if_sooner();  // the timer for due(), unless it already fires at or before it
    void left_over(bool on);  // held output is (no longer) left to the background flush
    void flushed_some(const error_code& ec, std::size_t n);
    void consume_sent(std::size_t n);         // N bytes of OUT left: drop them from the front
    void fail_output(const error_code& ec);  // the socket refused: every later write fails with EC

    static inline std::atomic<std::uint64_t> released_{0};
    static inline std::atomic<std::int64_t> left_over_{0};
    bool left_over_now_ = false;
    Timer timer_;
    Clock::time_point deadline_ = Clock::time_point::max();
    Clock::time_point flush_due_ = Clock::time_point::max();  // held output's background flush
    Clock::time_point armed_at_{};
    bool armed_ = false;
    unsigned gen_ = 0;
    bool timed_out_ = false;
    bool output_timed_out_ = false;
};

namespace detail {

// Before an SSL call: SSL_get_error blames any error already queued on this
// thread, so a stale one must go. ERR_clear_error alone would do, but
// OpenSSL 3.0's walks all 16 slots and calls CRYPTO_free twice on each even
// when the queue is empty (~6 calls a keep-alive request, 1.8% of redird's
// CPU); ERR_peek_error is what SSL_get_error consults, so a queue it finds
// empty needs no clearing.
inline void clear_stale_errors() {
    if (ERR_peek_error() != 0) ERR_clear_error();
}

// This thread's buffer for gathering a buffer sequence into one record
// (SSL_write copies it at once, so one per thread is enough).
constexpr std::size_t kWriteScratch = 16 * 1024;
char* write_scratch();

template <class Self>
void wait_flush(ConnCore& c, Self&& self) {
    c.kick_flush();
    c.flush_event.async_wait(std::move(self));
}

// Completes SELF: through a post when nothing was awaited yet (a handler is
// never called from inside its initiating function), else at once.
struct Finish {
    bool started = false;
    bool posted = false;
    boost::system::error_code ec;
    std::size_t n = 0;
    template <class Self>
    void operator()(Self& self, const boost::system::error_code& e, std::size_t bytes) {
        if (started) return self.complete(e, bytes);
        posted = true;
        ec = e;
        n = bytes;
        boost::asio::post(std::move(self));
    }
};

enum class Wait { None, Read, Flush };

// After an awaited step: takes in the ciphertext that arrived, or looks at
// the flush. Fail: FAIL says why; Again: the flush is still under way.
enum class Resume { Go, Again, Fail };
inline Resume resume(ConnCore& c, Wait w, const boost::system::error_code& ec, std::size_t got,
                     boost::system::error_code& fail) {
    if (w == Wait::Read) {
        if (ec == boost::asio::error::eof) {
            c.in_eof = true;
        } else if (ec) {
            fail = c.map(ec);
            return Resume::Fail;
        } else {
            c.in_end += got;
        }
    } else if (w == Wait::Flush) {
        if (c.out_error) {
            fail = c.map(c.out_error);
            return Resume::Fail;
        }
        if (!c.out.empty()) return Resume::Again;
    }
    return Resume::Go;
}

// OpenSSL wants more ciphertext: what we owe the peer goes out first (our
// handshake flight, a post-handshake message), then the socket is read.
template <class Self>
void await_input(ConnCore& c, Wait& w, Self&& self) {
    // Held records leave at the end of this turn, before any answer to them
    // can arrive: the read need not wait for them.
    if (c.unsent() || c.out_error) {
        w = Wait::Flush;
        return wait_flush(c, std::move(self));
    }
    w = Wait::Read;
    c.socket.async_read_some(c.in_space(), std::move(self));
}

// What the read and handshake operations share: where they wait, and how
// they come back from it.
struct TlsStep {
    ConnCore* c;
    Wait waiting = Wait::None;
    Finish finish;
    explicit TlsStep(ConnCore* core) : c(core) {}

    // Back from a wait (or the first call); false: SELF was completed or
    // waits again.
    template <class Self>
    bool resumed(Self& self, const boost::system::error_code& ec, std::size_t got) {
        if (finish.posted) {
            self.complete(finish.ec, finish.n);
            return false;
        }
        finish.started = waiting != Wait::None;
        boost::system::error_code fail;
        switch (resume(*c, waiting, ec, got, fail)) {
        case Resume::Fail:
            finish(self, fail, 0);
            return false;
        case Resume::Again:
            wait_flush(*c, std::move(self));
            return false;
        case Resume::Go:
            break;
        }
        return true;
    }
};

// Plaintext out of the connection.
struct TlsReadOp : TlsStep {
    boost::asio::mutable_buffer buf;
    TlsReadOp(ConnCore* core, boost::asio::mutable_buffer b) : TlsStep(core), buf(b) {}

    template <class Self>
    void operator()(Self& self, boost::system::error_code ec = {}, std::size_t got = 0) {
        if (!resumed(self, ec, got)) return;
        if (buf.size() == 0) return finish(self, {}, 0);
        for (;;) {
            // Nothing for OpenSSL to decrypt: the socket first (an SSL_read
            // now would only find that out, at the cost of a failed call).
            if (!c->may_have_input()) return await_input(*c, waiting, std::move(self));
            clear_stale_errors();
            std::size_t n = 0;
            const int r = SSL_read_ex(c->ssl.get(), buf.data(), buf.size(), &n);
            if (r == 1) {
                c->maybe_release();
                return finish(self, {}, n);
            }
            const int e = SSL_get_error(c->ssl.get(), r);
            if (e != SSL_ERROR_WANT_READ) return finish(self, c->ssl_error(e), 0);
            return await_input(*c, waiting, std::move(self));
        }
    }
};

// Encrypts up to one record's worth of BUFS (a buffer sequence gathered into
// one SSL_write) and hands it to the socket, which queues what it does not
// take at once; returns the plaintext bytes taken, or 0 with EC set (0
// without an error: BUFS was empty).
template <class ConstBuffers>
std::size_t write_record(ConnCore& c, const ConstBuffers& bufs, boost::system::error_code& ec) {
    ec = {};
    constexpr std::size_t kRecord = kWriteScratch;
    const void* data = nullptr;
    std::size_t size = 0;
    auto it = boost::asio::buffer_sequence_begin(bufs);
    const auto end = boost::asio::buffer_sequence_end(bufs);
    while (it != end && boost::asio::const_buffer(*it).size() == 0) ++it;
    if (it == end) return 0;
    boost::asio::const_buffer first(*it);
    if (first.size() >= kRecord || std::next(it) == end) {
        data = first.data();
        size = std::min(first.size(), kRecord);
    } else {
        char* const scratch = write_scratch();
        for (; it != end && size < kRecord; ++it) {
            boost::asio::const_buffer b(*it);
            const std::size_t take = std::min(b.size(), kRecord - size);
            std::memcpy(scratch + size, b.data(), take);
            size += take;
        }
        data = scratch;
    }
    if (c.out_error) {
        ec = c.map(c.out_error);
        return 0;
    }
    clear_stale_errors();
    std::size_t written = 0;
    const int r = SSL_write_ex(c.ssl.get(), data, size, &written);
    if (r != 1) {
        ec = c.ssl_error(SSL_get_error(c.ssl.get(), r));
        return 0;
    }
    if (c.out_error) {
        ec = c.map(c.out_error);
        return 0;
    }
    return written;
}

// Plaintext into the connection: at most one record per call (Beast's write
// loops call again); done once the socket took every byte, so a sandbox that
// stops reading is seen by the write timeout.
template <class ConstBuffers>
struct TlsWriteOp {
    ConnCore* c;
    ConstBuffers bufs;
    std::size_t written = 0;
    bool flushing = false;
    Finish finish;

    template <class Self>
    void operator()(Self& self, boost::system::error_code = {}, std::size_t = 0) {
        if (finish.posted) return self.complete(finish.ec, finish.n);
        if (flushing) {
            finish.started = true;
            if (c->out_error) return finish(self, c->map(c->out_error), 0);
            if (!c->out.empty()) return detail::wait_flush(*c, std::move(self));
            return finish(self, {}, written);
        }
        boost::system::error_code ec;
        written = write_record(*c, bufs, ec);
        // Nothing taken without an error: BUFS was empty.
        if (ec || written == 0 || c->out.empty()) return finish(self, ec, written);
        flushing = true;
        detail::wait_flush(*c, std::move(self));
    }
};

// Completes once the records queued behind the socket have left (or the
// connection failed, or its deadline closed it).
struct TlsFlushOp {
    ConnCore* c;
    Finish finish;
    template <class Self>
    void operator()(Self& self, boost::system::error_code = {}, std::size_t = 0) {
        if (finish.posted) return self.complete(finish.ec, finish.n);
        if (c->out_error) return finish(self, c->map(c->out_error), 0);
        if (c->out.empty()) return finish(self, {}, 0);
        finish.started = true;  // set before SELF moves into the wait
        detail::wait_flush(*c, std::move(self));
    }
};

struct TlsHandshakeOp : TlsStep {
    bool done = false;
    explicit TlsHandshakeOp(ConnCore* core) : TlsStep(core) {}

    template <class Self>
    void operator()(Self& self, boost::system::error_code ec = {}, std::size_t got = 0) {
        if (!resumed(self, ec, got)) return;
        if (done) return finish(self, {}, 0);  // our last flight went out
        clear_stale_errors();
        const int r = SSL_do_handshake(c->ssl.get());
        if (r == 1) {
            done = true;
            if (c->out_error) return finish(self, c->map(c->out_error), 0);
            if (c->out.empty()) return finish(self, {}, 0);
            waiting = Wait::Flush;
            return detail::wait_flush(*c, std::move(self));
        }
        const int e = SSL_get_error(c->ssl.get(), r);
        if (e != SSL_ERROR_WANT_READ) return finish(self, c->ssl_error(e), 0);
        await_input(*c, waiting, std::move(self));
    }
};

// Cleartext: the socket's own operations, with the deadline's error mapping.
template <bool Read, class Buffers>
struct PlainOp {
    ConnCore* c;
    Buffers bufs;
    bool started = false;
    template <class Self>
    void operator()(Self& self, boost::system::error_code ec = {}, std::size_t n = 0) {
        if (started) return self.complete(c->map(ec), n);
        started = true;
        if constexpr (Read)
            c->socket.async_read_some(bufs, std::move(self));
        else
            c->socket.async_write_some(bufs, std::move(self));
    }
};

}  // namespace detail

// What both streams share: the socket, the deadline (beast::basic_stream's
// names, so the gateway's code reads the same for both).
class StreamBase {
public:
    using executor_type = Executor;
    explicit StreamBase(Socket s) : core_(std::make_shared<ConnCore>(std::move(s))) {}
    StreamBase(StreamBase&&) noexcept = default;
    StreamBase& operator=(StreamBase&&) noexcept = default;
    ~StreamBase() {
        if (core_) core_->stop();
    }

    executor_type get_executor() { return core_->socket.get_executor(); }
    Socket& socket() { return core_->socket; }
    void expires_after(Clock::duration d) { core_->expires_at(Clock::now() + d); }
    void expires_at(Clock::time_point t) { core_->expires_at(t); }
    void expires_never() { core_->expires_at(Clock::time_point::max()); }
    void cancel() {
        boost::system::error_code ig;
        core_->socket.cancel(ig);
    }
    // Whether the deadline closed the connection.
    bool timed_out() const { return core_->timed_out(); }
    // Whether it was the background flush of held records that timed out
    // (ConnCore::held_flush_limit): the peer stopped reading.
    bool output_timed_out() const { return core_->output_timed_out(); }
    // EC as the deadline makes it: an operation it aborted is a timeout.
    boost::system::error_code map(const boost::system::error_code& ec) const { return core_->map(ec); }

protected:
    std::shared_ptr<ConnCore> core_;
};

class PlainStream : public StreamBase {
public:
    explicit PlainStream(Socket s) : StreamBase(std::move(s)) {}

    template <class MutableBuffers, class Token>
    auto async_read_some(const MutableBuffers& b, Token&& token) {
        return boost::asio::async_compose<Token, void(boost::system::error_code, std::size_t)>(
            detail::PlainOp<true, MutableBuffers>{core_.get(), b}, token, core_->socket);
    }
    template <class ConstBuffers, class Token>
    auto async_write_some(const ConstBuffers& b, Token&& token) {
        return boost::asio::async_compose<Token, void(boost::system::error_code, std::size_t)>(
            detail::PlainOp<false, ConstBuffers>{core_.get(), b}, token, core_->socket);
    }
};

class TlsStream : public StreamBase {
public:
    // SSL must be fresh; the stream owns it from here on.
    TlsStream(Socket s, SslPtr ssl);

    SSL* native_handle() { return core_->ssl.get(); }
    // Long-lived, mostly idle connections (SSE): OpenSSL's record buffers and
    // ours are given back whenever they are empty.
    void release_buffers_when_idle();
    // Back to keeping them, for a connection whose SSE answer ended and that
    // goes on with short exchanges (the sandbox's next request, the provider
    // pool): left on, the release costs each of its records an allocation
    // and a free of OpenSSL's ~17 KiB buffers and of ours.
    void keep_buffers();

    // Completes with (error, 0).
    template <class Token>
    auto async_handshake(boost::asio::ssl::stream_base::handshake_type type, Token&& token) {
        if (type == boost::asio::ssl::stream_base::client)
            SSL_set_connect_state(core_->ssl.get());
        else
            SSL_set_accept_state(core_->ssl.get());
        return boost::asio::async_compose<Token, void(boost::system::error_code, std::size_t)>(
            detail::TlsHandshakeOp{core_.get()}, token, core_->socket);
    }
    template <class MutableBuffers, class Token>
    auto async_read_some(const MutableBuffers& b, Token&& token) {
        boost::asio::mutable_buffer first;
        for (auto it = boost::asio::buffer_sequence_begin(b); it != boost::asio::buffer_sequence_end(b); ++it)
            if (boost::asio::mutable_buffer(*it).size() != 0) {
                first = *it;
                break;
            }
        return boost::asio::async_compose<Token, void(boost::system::error_code, std::size_t)>(
            detail::TlsReadOp{core_.get(), first}, token, core_->socket);
    }
    template <class ConstBuffers, class Token>
    auto async_write_some(const ConstBuffers& b, Token&& token) {
        return boost::asio::async_compose<Token, void(boost::system::error_code, std::size_t)>(
            detail::TlsWriteOp<ConstBuffers>{core_.get(), b}, token, core_->socket);
    }

    // Writing without a completion handler, for the answer's critical path:
    // an asynchronous write that completes at once still costs a post, i.e.
    // a pass of the scheduler (and an epoll_wait) before the code after it
    // runs. write_now encrypts up to one record of B and hands it to the
    // socket at once, queueing what the socket does not take; it returns the
    // plaintext bytes taken (0 with EC set on failure) and never waits. While
    // output_pending(), records wait in that queue: async_flush completes when
    // they have left, or fails (a sandbox that stops reading meets the deadline
    // there, as with async_write_some). Records held for the end of the turn
    // (hold_sends) are not pending: they leave before the loop waits again.
    template <class ConstBuffers>
    std::size_t write_now(const ConstBuffers& b, boost::system::error_code& ec) {
        return detail::write_record(*core_, b, ec);
    }
    bool output_pending() const { return core_->unsent(); }
    // Records written from now on may wait for the end of the loop turn
    // (ConnCore::hold_sends); what the socket then does not take must leave
    // within FLUSH_LIMIT (the side's write timeout).
    void hold_sends(Clock::duration flush_limit = Clock::duration::max()) {
        core_->hold_sends = true;
        core_->held_flush_limit = flush_limit;
    }
    // Ends the connection: what is held leaves first (the last answer of a
    // Connection: close), then both directions are shut and the socket closed.
    void close() {
        core_->send_held();
        boost::system::error_code ig;
        core_->socket.shutdown(Socket::shutdown_both, ig);
        core_->socket.close(ig);
    }
    template <class Token>
    auto async_flush(Token&& token) {
        return boost::asio::async_compose<Token, void(boost::system::error_code, std::size_t)>(
            detail::TlsFlushOp{core_.get()}, token, core_->socket);
    }
};

}  // namespace redir::terminator
