// The inspect relay (see relay.hpp): one RelaySession per connection, every
// callback holding the session, and the session holding the relay's shared
// state, so nothing a callback touches can be freed under it.
#include "agent/relay.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <spdlog/spdlog.h>

#include <array>
#include <cstring>
#include <list>

#include "agent/audit_log.hpp"
#include "agent/conn_audit.hpp"
#include "common/addr.hpp"
#include "terminator/limits.hpp"

namespace asio = boost::asio;
using asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace redir::agent {

struct RelaySession;

struct Relay::Shared {
    Shared(asio::io_context& i, AuditLog& a, RelayOptions o)
        : io(i), audit(&a), opts(o),
          conns(terminator::Quota::make({opts.max_connections_per_sandbox, opts.max_connections_total})) {}
    asio::io_context& io;
    AuditLog* audit;  // nullptr once the Relay is gone
    RelayOptions opts;
    std::shared_ptr<terminator::Quota> conns;
    terminator::RefusalThrottle throttle;
    RelayStats stats;
    std::list<std::weak_ptr<RelaySession>> live;

    void write(const std::string& line) {
        if (audit) audit->write(line);
    }
};

namespace {

asio::ip::address to_asio(const redir_addr& a) {
    if (addr_is_v4(a)) {
        asio::ip::address_v4::bytes_type b;
        std::memcpy(b.data(), &a.b[12], 4);
        return asio::ip::address_v4(b);
    }
    asio::ip::address_v6::bytes_type b;
    std::memcpy(b.data(), a.b, 16);
    return asio::ip::address_v6(b);
}

}  // namespace

struct RelaySession : std::enable_shared_from_this<RelaySession> {
    using Buf = std::array<char, 16384>;

    RelaySession(std::shared_ptr<Relay::Shared> sh, tcp::socket c, ConnInfo i, terminator::Quota::Ticket t)
        : shared(std::move(sh)), client(std::move(c)), upstream(shared->io), timer(shared->io), info(std::move(i)),
          ticket(std::move(t)), start(Clock::now()), last_activity(start) {}

    std::shared_ptr<Relay::Shared> shared;
    tcp::socket client, upstream;
    asio::steady_timer timer;
    ConnInfo info;
    terminator::Quota::Ticket ticket;
    // One buffer per direction, refilled only after it was written out: the
    // relay holds at most 2 x 16 KiB per connection whatever either side does.
    Buf up_buf{}, down_buf{};
    uint64_t bytes_up = 0, bytes_down = 0;
    int open_dirs = 2;
    bool connected = false;
    bool done = false;
    Clock::time_point start, last_activity;
    std::string result = "closed";
    std::list<std::weak_ptr<RelaySession>>::iterator where;

    void run() {
        auto self = shared_from_this();
        arm(shared->opts.connect_timeout);
        upstream.async_connect(tcp::endpoint(to_asio(info.orig_addr), info.orig_port),
                               [self](boost::system::error_code ec) {
                                   if (self->done) return;
                                   if (ec) {
                                       if (self->result == "closed") {
                                           ++self->shared->stats.connect_failures;
                                           self->result = "upstream connect failed: " + ec.message();
                                       }
                                       self->finish();
                                       return;
                                   }
                                   self->connected = true;
                                   self->touch();
                                   self->arm(self->shared->opts.idle_timeout);
                                   self->pump(self->client, self->upstream, self->up_buf, self->bytes_up);
                                   self->pump(self->upstream, self->client, self->down_buf, self->bytes_down);
                               });
    }

    void touch() { last_activity = Clock::now(); }

    // One timer serves both deadlines: the connect one, then the idle one,
    // re-armed only when it fires (never per transfer).
    void arm(std::chrono::milliseconds d) {
        auto self = shared_from_this();
        timer.expires_after(d);
        timer.async_wait([self](boost::system::error_code ec) {
            if (ec || self->done) return;
            self->on_timer();
        });
    }

    void on_timer() {
        const auto& o = shared->opts;
        if (!connected) {
            ++shared->stats.connect_timeouts;
            result = "upstream connect timed out after " + std::to_string(o.connect_timeout.count()) + " ms";
            abort();
            return;
        }
        const auto quiet = Clock::now() - last_activity;
        if (quiet < o.idle_timeout) {
            arm(std::chrono::duration_cast<std::chrono::milliseconds>(o.idle_timeout - quiet) +
                std::chrono::milliseconds(1));
            return;
        }
        ++shared->stats.idle_timeouts;
        result = "idle for " + std::to_string(o.idle_timeout.count()) + " ms";
        abort();
    }

    // Closing both sockets ends every pending operation; the last one to
    // complete calls finish().
    void abort() {
        boost::system::error_code ig;
        client.close(ig);
        upstream.close(ig);
    }

    void pump(tcp::socket& from, tcp::socket& to, Buf& buf, uint64_t& counter) {
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
            self->touch();
            asio::async_write(to, asio::buffer(buf.data(), n),
                              [self, &from, &to, &buf, &counter](boost::system::error_code ec2, size_t) {
                                  if (ec2) {
                                      self->abort();
                                      if (--self->open_dirs == 0) self->finish();
                                      return;
                                  }
                                  self->touch();
                                  self->pump(from, to, buf, counter);
                              });
        });
    }

    void finish() {
        if (done) return;
        done = true;
        boost::system::error_code ig;
        timer.cancel();
        abort();
        shared->live.erase(where);
        ticket.release();
        auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
        JsonOut j;
        conn_record(j, "relay", "inspect")
            .str("result", result)
            .num("bytes_up", bytes_up)
            .num("bytes_down", bytes_down)
            .num("duration_ms", static_cast<uint64_t>(ms.count()));
        shared->write(conn_record_end(j, info, true));
    }
};

Relay::Relay(asio::io_context& io, AuditLog& audit, RelayOptions opts)
    : shared_(std::make_shared<Shared>(io, audit, opts)) {}

Relay::~Relay() {
    // Sessions may outlive the relay in the io_context's queue: they keep the
    // shared state alive, but must not write to an audit log that is going away.
    shared_->audit = nullptr;
    for (auto& w : shared_->live)
        if (auto s = w.lock()) s->abort();
}

void Relay::serve(tcp::socket s, ConnInfo info) {
    auto& sh = *shared_;
    terminator::Quota::Refusal why{};
    auto ticket = sh.conns->try_acquire(info.cgroup_id, 1, &why);
    if (!ticket) {
        const bool mine = why == terminator::Quota::Refusal::Sandbox;
        ++(mine ? sh.stats.refused_sandbox_connections : sh.stats.refused_total_connections);
        boost::system::error_code ig;
        s.close(ig);
        uint64_t suppressed = 0;
        if (sh.throttle.should_record(info.cgroup_id, suppressed)) {
            CapRefusal r{mine ? "over the per-sandbox relay connection cap" : "over the relay's total connection cap",
                         mine ? "relay_connections_per_sandbox" : "relay_connections_total",
                         mine ? sh.opts.max_connections_per_sandbox : sh.opts.max_connections_total, suppressed};
            sh.write(refusal_record("relay", r, info, true));
        }
        return;
    }
    ++sh.stats.connections_accepted;
    JsonOut j;
    conn_record(j, "relay", "inspect").str("phase", "open");
    sh.write(conn_record_end(j, info, true));
    auto session = std::make_shared<RelaySession>(shared_, std::move(s), std::move(info), std::move(ticket));
    session->where = sh.live.insert(sh.live.end(), session);
    session->run();
}

const RelayStats& Relay::stats() const { return shared_->stats; }
std::uint64_t Relay::connections() const { return shared_->conns->total_in_use(); }
std::uint64_t Relay::connections_of(std::uint64_t cgroup_id) const { return shared_->conns->in_use(cgroup_id); }

}  // namespace redir::agent
