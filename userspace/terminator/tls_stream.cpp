// The BIO under the terminator's TLS streams, their deadline and their flush.
#include "terminator/tls_stream.hpp"

#include <openssl/bio.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <boost/asio/defer.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/beast/core/error.hpp>
#include <cerrno>
#include <stdexcept>
#include <vector>

namespace redir::terminator {

namespace asio = boost::asio;

namespace {

ConnCore* core_of(BIO* b) { return static_cast<ConnCore*>(BIO_get_data(b)); }

// OpenSSL reads ciphertext Asio already received; nothing there yet is a retry
// (SSL_ERROR_WANT_READ), after which the stream waits for the socket.
int bio_read(BIO* b, char* out, int len) {
    BIO_clear_retry_flags(b);
    ConnCore* c = core_of(b);
    const std::size_t avail = c->in_end - c->in_begin;
    if (avail == 0) {
        if (c->in_eof) return 0;
        BIO_set_retry_read(b);
        return -1;
    }
    const std::size_t n = std::min<std::size_t>(avail, static_cast<std::size_t>(len));
    std::memcpy(out, c->in.get() + c->in_begin, n);
    c->in_begin += n;
    return static_cast<int>(n);
}

// The loop turn of this thread, while one is under way: the connections
// whose records wait for its end. Owned by the handler deferred to end it
// (an io_context destroyed before it runs takes them along). Only for an
// io_context one thread runs: that handler runs where the records were held.
struct HeldTurn {
    std::vector<std::shared_ptr<ConnCore>> cores;
    ~HeldTurn();
};
thread_local HeldTurn* t_turn = nullptr;
thread_local std::unique_ptr<HeldTurn> t_spare;  // a finished turn's list, for the next (no allocation a turn)
HeldTurn::~HeldTurn() {
    if (t_turn == this) t_turn = nullptr;
}

// The turn begins with its first held record and ends when the handlers
// ready now (and those the reactor's look finds) have run: boost::asio::defer,
// on this thread, with no wake-up.
void begin_turn(const Executor& ex) {
    auto turn = t_spare ? std::move(t_spare) : std::make_unique<HeldTurn>();
    t_turn = turn.get();
    asio::defer(ex, [turn = std::move(turn)]() mutable {
        t_turn = nullptr;  // a record made from here on begins the next turn
        for (auto& c : turn->cores) c->send_held();
        turn->cores.clear();
        if (!t_spare) t_spare = std::move(turn);
    });
}

// Records go straight to the socket (or, with hold_sends, wait for the end of
// the turn); what it does not take now is queued in order and flushed by the
// stream (never a retry: SSL_write completes).
int bio_write(BIO* b, const char* data, int len) {
    BIO_clear_retry_flags(b);
    ConnCore* c = core_of(b);
    if (c->out_error) return -1;
    if (c->hold_sends && (c->out.empty() || c->held)) {
        if (c->held_bytes + static_cast<std::size_t>(len) <= ConnCore::kHoldMax) {
            c->out.emplace_back(data, static_cast<std::size_t>(len));
            c->held_bytes += static_cast<std::size_t>(len);
            c->hold();
            return len;
        }
        c->send_held();
        if (c->out_error) return -1;
    }
    std::size_t sent = 0;
    if (c->out.empty()) {
        const ssize_t n = ::send(c->socket.native_handle(), data, static_cast<std::size_t>(len),
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n >= 0) {
            sent = static_cast<std::size_t>(n);
        } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            c->out_error = boost::system::error_code(errno, boost::system::system_category());
            return -1;
        }
    }
    if (sent < static_cast<std::size_t>(len)) c->out.emplace_back(data + sent, static_cast<std::size_t>(len) - sent);
    return len;
}

long bio_ctrl(BIO*, int cmd, long, void*) {
    switch (cmd) {
    case BIO_CTRL_FLUSH:  // records already left (or are queued for) the socket
    case BIO_CTRL_PUSH:
    case BIO_CTRL_POP:
        return 1;
    default:
        return 0;
    }
}

int bio_create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
}

const BIO_METHOD* bio_method() {
    static BIO_METHOD* m = [] {
        BIO_METHOD* meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "redir terminator stream");
        if (!meth || !BIO_meth_set_write(meth, bio_write) || !BIO_meth_set_read(meth, bio_read) ||
            !BIO_meth_set_ctrl(meth, bio_ctrl) || !BIO_meth_set_create(meth, bio_create))
            throw std::runtime_error("cannot create the terminator's OpenSSL BIO method (out of memory?)");
        return meth;
    }();
    return m;
}

}  // namespace

char* detail::write_scratch() {
    thread_local char buf[kWriteScratch];
    return buf;
}

ConnCore::ConnCore(Socket s) : socket(std::move(s)), flush_event(socket.get_executor()), timer_(socket.get_executor()) {
    flush_event.expires_at(Clock::time_point::max());
}

ConnCore::~ConnCore() { left_over(false); }

void ConnCore::attach(SslPtr s) {
    BIO* bio = BIO_new(bio_method());
    if (!bio) throw std::runtime_error("cannot create a BIO for a terminator connection (out of memory?)");
    BIO_set_data(bio, this);
    SSL_set_bio(s.get(), bio, bio);  // the SSL owns the BIO
    ssl = std::move(s);
}

void ConnCore::expires_at(Clock::time_point t) {
    deadline_ = t;
    arm_if_sooner();
}

void ConnCore::flush_due_at(Clock::time_point t) {
    flush_due_ = t;
    arm_if_sooner();
}

void ConnCore::arm_if_sooner() {
    const auto d = due();
    if (d != Clock::time_point::max() && (!armed_ || d < armed_at_)) arm(d);
}

void ConnCore::arm(Clock::time_point t) {
    armed_ = true;
    armed_at_ = t;
    const unsigned gen = ++gen_;
    timer_.expires_at(t);  // cancels a wait armed for later: its handler sees an old generation
    timer_.async_wait([self = shared_from_this(), gen](const error_code& ec) {
        if (gen != self->gen_) return;
        self->armed_ = false;
        const auto due = self->due();
        if (ec || !self->socket.is_open() || due == Clock::time_point::max()) return;
        if (Clock::now() < due) return self->arm(due);
        self->output_timed_out_ = due == self->flush_due_ && due < self->deadline_;
        self->expire();
    });
}

void ConnCore::expire() {
    timed_out_ = true;
    error_code ig;
    socket.close(ig);
}

ConnCore::error_code ConnCore::map(const error_code& ec) const {
    if (timed_out_ && ec && (ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor))
        return boost::beast::error::timeout;
    return ec;
}

void ConnCore::stop() {
    error_code ig;
    socket.close(ig);
    ++gen_;
    timer_.cancel();
    flush_event.cancel();
}

DrainingBuffer ConnCore::in_space() {
    if (!in) in.reset(new char[kReadBuffer]);
    if (in_begin == in_end) in_begin = in_end = 0;
    return DrainingBuffer(asio::buffer(in.get() + in_end, kReadBuffer - in_end));
}

bool ConnCore::may_have_input() const {
    return in_begin != in_end || in_eof || !SSL_is_init_finished(ssl.get()) || SSL_get_shutdown(ssl.get()) != 0 ||
           SSL_has_pending(ssl.get()) != 0;
}

void ConnCore::maybe_release() {
    if (release_when_idle && in && in_begin == in_end) {
        released_.fetch_add(1, std::memory_order_relaxed);
        in.reset();
        in_begin = in_end = 0;
    }
}

void ConnCore::hold() {
    if (held) return;
    held = true;
    if (!t_turn) begin_turn(socket.get_executor());
    t_turn->cores.push_back(shared_from_this());
}

void ConnCore::send_held() {
    if (!held) return;
    held = false;
    held_bytes = 0;
    if (out_error || out.empty()) return;
    if (!socket.is_open()) {
        out.clear();
        out_off = 0;
        return;
    }
    // The held records in one sendmsg(2) (another per 16 records), until
    // the socket takes no more; the rest goes through the flush.
    constexpr std::size_t kMax = 16;
    while (!out.empty()) {
        iovec iov[kMax];
        std::size_t n = 0, total = 0;
        for (auto it = out.begin(); it != out.end() && n < kMax; ++it, ++n) {
            const std::size_t off = n == 0 ? out_off : 0;
            iov[n] = {it->data() + off, it->size() - off};
            total += iov[n].iov_len;
        }
        msghdr msg{};
        msg.msg_iov = iov;
        msg.msg_iovlen = n;
        const ssize_t r = ::sendmsg(socket.native_handle(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return fail_output(error_code(errno, boost::system::system_category()));
        }
        consume_sent(static_cast<std::size_t>(r));
        if (static_cast<std::size_t>(r) < total) break;  // the socket is full
    }
    if (!out.empty()) {
        left_over(true);
        if (held_flush_limit != Clock::duration::max()) flush_due_at(Clock::now() + held_flush_limit);
        return kick_flush();
    }
    flush_event.cancel();  // an async_flush may be waiting
}

void ConnCore::kick_flush() {
    held = false;  // a flush asked for now sends what was held
    held_bytes = 0;
    if (flushing || out.empty() || out_error) return;
    flushing = true;
    const std::string& f = out.front();
    socket.async_write_some(asio::buffer(f.data() + out_off, f.size() - out_off),
                            [self = shared_from_this()](const error_code& ec, std::size_t n) {
                                self->flushed_some(ec, n);
                            });
}

void ConnCore::flushed_some(const error_code& ec, std::size_t n) {
    flushing = false;
    if (ec) return fail_output(map(ec));
    consume_sent(n);
    if (!out.empty()) return kick_flush();
    left_over(false);
    flush_event.cancel();
}

void ConnCore::consume_sent(std::size_t n) {
    while (n != 0 && !out.empty()) {
        const std::size_t rest = out.front().size() - out_off;
        if (n < rest) {
            out_off += n;
            return;
        }
        n -= rest;
        out.pop_front();
        out_off = 0;
    }
}

void ConnCore::left_over(bool on) {
    if (!on) flush_due_ = Clock::time_point::max();  // the timer, if it fires for it, re-arms for the deadline
    if (on == left_over_now_) return;
    left_over_now_ = on;
    left_over_.fetch_add(on ? 1 : -1, std::memory_order_relaxed);
}

void ConnCore::fail_output(const error_code& ec) {
    left_over(false);
    out_error = ec;
    out.clear();
    out_off = 0;
    flush_event.cancel();  // an async_flush may be waiting
}

ConnCore::error_code ConnCore::ssl_error(int e) const {
    error_code ec;
    if (e == SSL_ERROR_ZERO_RETURN) {
        ec = asio::error::eof;  // close_notify, as asio::ssl::stream reports it
    } else if (out_error) {
        ec = map(out_error);
    } else if (e == SSL_ERROR_SSL || e == SSL_ERROR_SYSCALL) {
        const unsigned long err = ERR_get_error();
        if (err == 0 || ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING)
            ec = asio::ssl::error::stream_truncated;  // the peer closed without close_notify
        else
            ec = error_code(static_cast<int>(err), asio::error::get_ssl_category());
    } else {
        ec = error_code(static_cast<int>(ERR_get_error()), asio::error::get_ssl_category());
        if (!ec) ec = asio::error::fault;
    }
    ERR_clear_error();
    return ec;
}

TlsStream::TlsStream(Socket s, SslPtr ssl) : StreamBase(std::move(s)) { core_->attach(std::move(ssl)); }

void TlsStream::release_buffers_when_idle() {
    SSL_set_mode(core_->ssl.get(), SSL_MODE_RELEASE_BUFFERS);
    core_->release_when_idle = true;
    core_->maybe_release();
}

void TlsStream::keep_buffers() {
    SSL_clear_mode(core_->ssl.get(), SSL_MODE_RELEASE_BUFFERS);
    core_->release_when_idle = false;
}

}  // namespace redir::terminator
