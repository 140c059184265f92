#pragma once
// The per-sandbox DNS responder: UDP and TCP on one agent address and port
// that the sandbox's port-53 traffic is redirected to. The port identifies
// the sandbox, so every query on it is decided with that sandbox's view.
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/udp.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <atomic>
#include <string_view>
#include <vector>

#include "dns/types.hpp"

namespace redir::dns {

// Thrown by an Admitter when the sandbox holds its quota of admissions: the
// answer becomes SERVFAIL and the event's verdict is `quota`.
struct QuotaExceeded : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Receives the addresses a sandbox may now reach. Called before the answer is
// sent to the sandbox, so a connect() right after resolution is admitted.
// Throwing turns the answer into SERVFAIL (an answer the sandbox cannot use
// is worse than none).
class Admitter {
public:
    virtual ~Admitter() = default;
    virtual void admit(const std::vector<Admission>& admissions, const HostMatch& match) = 0;
};

// Every query not answered normally: verdicts denied, refused, malformed,
// upstream_error, overloaded. `name` is lower-case without the trailing dot
// ("" if the query could not be parsed).
// `client` is the sandbox socket that asked, so the agent can name the
// process (its pid and comm) in the audit record.
struct QueryOrigin {
    boost::asio::ip::address address;
    uint16_t port = 0;
    bool tcp = false;
};
using EventHook =
    std::function<void(std::string_view name, uint16_t qtype, Verdict verdict, const QueryOrigin& client)>;
// Like EventHook, but the reply to the sandbox waits until RESUME is called
// (from any thread, at most once; it is posted to the responder's strand), so
// the hook can name the asking process while its socket still exists without
// blocking the responder. A refusal whose RESUME never comes gets no reply.
using DeferringEventHook = std::function<void(std::string_view name, uint16_t qtype, Verdict verdict,
                                              const QueryOrigin& client, std::function<void()> resume)>;

// A connection count shared by several responders (both address families of
// one sandbox; every sandbox of the node), so one sandbox cannot take all.
class ConnectionBudget {
public:
    explicit ConnectionBudget(size_t limit) : limit_(limit) {}
    bool try_take() {
        size_t n = used_.load();
        while (n < limit_)
            if (used_.compare_exchange_weak(n, n + 1)) return true;
        ++refused_;
        return false;
    }
    void give_back() { --used_; }
    size_t used() const { return used_; }
    size_t limit() const { return limit_; }
    uint64_t refused() const { return refused_; }

private:
    const size_t limit_;
    std::atomic<size_t> used_{0};
    std::atomic<uint64_t> refused_{0};
};

struct ResponderConfig {
    boost::asio::ip::address listen = boost::asio::ip::make_address("127.0.0.1");
    uint16_t port = 0;  // 0: any free port, the same for UDP and TCP
    // Interface the sockets are bound to (SO_BINDTODEVICE): a sandbox in its
    // own network namespace reaches its responder only through its own veth.
    std::string device;
    boost::asio::ip::udp::endpoint upstream;  // also used over TCP when an answer is truncated
    std::chrono::milliseconds upstream_timeout{3000};  // then SERVFAIL
    std::chrono::milliseconds tcp_idle_timeout{10000};
    size_t max_inflight = 256;        // upstream lookups at once; beyond: SERVFAIL
    size_t max_tcp_connections = 64;  // beyond: closed on accept
    size_t max_tcp_pipeline = 16;     // lookups per TCP connection before reading pauses
    // Answers queued for a TCP client that does not read: reading pauses above
    // this, and a connection whose output makes no progress for the idle
    // timeout is closed.
    size_t max_tcp_queued_bytes = 64 * 1024;
    // Shared caps checked on accept besides max_tcp_connections (per sandbox,
    // node-wide). Over any of them the connection is closed at once.
    std::vector<std::shared_ptr<ConnectionBudget>> tcp_budgets;
    // Asked after each accept; false (file descriptors are short) closes the
    // connection and backs the accept loop off.
    std::function<bool()> accept_allowed;
    std::chrono::milliseconds accept_backoff{100};  // first pause after EMFILE/ENFILE; doubles up to 1 s
    TtlLimits ttl;
};

struct ResponderStats {
    uint64_t queries = 0;
    uint64_t answered_locally = 0;
    uint64_t forwarded = 0;
    uint64_t refused = 0;  // every verdict that raised an event
    uint64_t admissions = 0;
    uint64_t tcp_open = 0;           // TCP connections now open
    uint64_t tcp_refused = 0;        // closed on accept: over a cap, or file descriptors short
    uint64_t tcp_cut = 0;            // closed with answers the client never read
    uint64_t accept_backoffs = 0;    // accept errors (EMFILE, ENFILE, ...) that paused the accept loop
};

class Responder {
public:
    // Handlers run on a strand of `io`, which may be run by several threads.
    // Destroy the Responder before `io`.
    Responder(boost::asio::io_context& io, ResponderConfig cfg, SandboxView view, Admitter& admitter,
              EventHook on_event = {});
    ~Responder();
    Responder(const Responder&) = delete;
    Responder& operator=(const Responder&) = delete;

    // Replaces the EventHook; call before start().
    void set_deferring_event_hook(DeferringEventHook hook);
    // Binds UDP and TCP and starts serving. Throws redir::Error naming the address.
    void start();
    // Stops serving and cancels lookups; no Admitter or EventHook call starts
    // after it returns. Any thread.
    void stop();
    // Policy reload: queries decided from now on use `view`, including the
    // admission step of lookups already in flight. Any thread.
    void set_view(SandboxView view);

    uint16_t port() const;  // valid after start()
    ResponderStats stats() const;

private:
    struct Impl;
    std::shared_ptr<Impl> impl_;
};

}  // namespace redir::dns
