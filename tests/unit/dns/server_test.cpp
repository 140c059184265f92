// The Asio responder end to end. Everything binds and talks to 127.0.0.1 only:
// the upstream is a fake resolver in this process, and "unreachable" is a
// loopback port this test holds with a socket connected elsewhere.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio/executor_work_guard.hpp>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "common/fd.hpp"
#include "dns/core.hpp"
#include "dns/server.hpp"
#include "dns_test_util.hpp"

namespace redir::dns {
namespace {

using namespace test;
using namespace std::chrono_literals;

sockaddr_in loopback(uint16_t port) {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sa;
}

uint16_t local_port(int fd) {
    sockaddr_in sa{};
    socklen_t len = sizeof sa;
    getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
    return ntohs(sa.sin_port);
}

bool read_full(int fd, uint8_t* p, size_t n) {
    while (n > 0) {
        ssize_t r = ::recv(fd, p, n, 0);
        if (r <= 0) return false;
        p += r;
        n -= static_cast<size_t>(r);
    }
    return true;
}

bool write_full(int fd, const Bytes& b) { return ::send(fd, b.data(), b.size(), MSG_NOSIGNAL) == ssize_t(b.size()); }

Bytes frame(const Bytes& m) {
    Bytes out{static_cast<uint8_t>(m.size() >> 8), static_cast<uint8_t>(m.size())};
    out.insert(out.end(), m.begin(), m.end());
    return out;
}

// A resolver on 127.0.0.1 (UDP and TCP, same port) answering from a table.
class FakeUpstream {
public:
    enum class Mode { answer, silent, spoof_first, truncate_udp, delay };

    FakeUpstream() {
        for (int attempt = 0; attempt < 50; ++attempt) {
            udp_.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
            auto sa = loopback(0);
            ::bind(udp_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa);
            port_ = local_port(udp_.get());
            tcp_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
            int one = 1;
            setsockopt(tcp_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
            auto ta = loopback(port_);
            if (::bind(tcp_.get(), reinterpret_cast<sockaddr*>(&ta), sizeof ta) == 0 && ::listen(tcp_.get(), 16) == 0)
                break;
        }
        thread_ = std::thread([this] { run(); });
    }
    ~FakeUpstream() {
        stop_ = true;
        thread_.join();
    }

    uint16_t port() const { return port_; }
    void set(const std::string& name, std::vector<std::string> rrs) {
        std::lock_guard lk(mu_);
        table_[name] = std::move(rrs);
    }
    std::atomic<Mode> mode{Mode::answer};
    std::atomic<int> udp_queries{0}, tcp_queries{0};

private:
    Bytes answer_for(const Bytes& q, bool tc) {
        auto p = parse(q);
        if (!p) return {};
        detail::MallocPtr<char> n(ldns_rdf2str(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_question(p.get()), 0))));
        std::string name(n.get());
        for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        std::lock_guard lk(mu_);
        auto it = table_.find(name);
        if (tc) return make_answer(q, {}, LDNS_RCODE_NOERROR, true);
        if (it == table_.end()) return make_answer(q, {}, LDNS_RCODE_NXDOMAIN);
        return make_answer(q, it->second);
    }

    void run() {
        while (!stop_) {
            pollfd fds[2] = {{udp_.get(), POLLIN, 0}, {tcp_.get(), POLLIN, 0}};
            if (::poll(fds, 2, 20) <= 0) continue;
            if (fds[0].revents & POLLIN) {
                Bytes buf(65536);
                sockaddr_in from{};
                socklen_t fl = sizeof from;
                ssize_t n = ::recvfrom(udp_.get(), buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&from), &fl);
                if (n <= 0) continue;
                buf.resize(static_cast<size_t>(n));
                ++udp_queries;
                Mode m = mode;
                if (m == Mode::silent) continue;
                if (m == Mode::spoof_first) {
                    // Wrong ID, poisoned address: must be ignored.
                    Bytes q = buf;
                    set_message_id(q, static_cast<uint16_t>(message_id(buf) + 1));
                    auto p = parse(q);
                    detail::MallocPtr<char> nm(ldns_rdf2str(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_question(p.get()), 0))));
                    Bytes spoof = make_answer(q, {std::string(nm.get()) + " 300 IN A 203.0.113.66"});
                    ::sendto(udp_.get(), spoof.data(), spoof.size(), 0, reinterpret_cast<sockaddr*>(&from), fl);
                }
                if (m == Mode::delay) std::this_thread::sleep_for(std::chrono::milliseconds(150));
                Bytes a = answer_for(buf, m == Mode::truncate_udp);
                ::sendto(udp_.get(), a.data(), a.size(), 0, reinterpret_cast<sockaddr*>(&from), fl);
            }
            if (fds[1].revents & POLLIN) {
                UniqueFd c(::accept4(tcp_.get(), nullptr, nullptr, SOCK_CLOEXEC));
                if (!c) continue;
                uint8_t len[2];
                if (!read_full(c.get(), len, 2)) continue;
                Bytes q(size_t(len[0]) << 8 | len[1]);
                if (!read_full(c.get(), q.data(), q.size())) continue;
                ++tcp_queries;
                write_full(c.get(), frame(answer_for(q, false)));
            }
        }
    }

    UniqueFd udp_, tcp_;
    uint16_t port_ = 0;
    std::mutex mu_;
    std::map<std::string, std::vector<std::string>> table_;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

struct RecordingAdmitter : Admitter {
    void admit(const std::vector<Admission>& a, const HostMatch& m) override {
        if (quota_full) throw QuotaExceeded("quota");
        std::lock_guard lk(mu);
        for (const auto& x : a) got.push_back({x, m.portset_id});
    }
    size_t count() {
        std::lock_guard lk(mu);
        return got.size();
    }
    std::mutex mu;
    std::vector<std::pair<Admission, uint32_t>> got;
    std::atomic<bool> quota_full{false};
};

struct Event {
    std::string name;
    uint16_t qtype;
    Verdict verdict;
};

SandboxView allow_view(std::vector<std::string> names, bool deny_all = false) {
    SandboxView v;
    v.vip4 = {198, 18, 0, 1};
    v.match_host = [names = std::move(names), deny_all](std::string_view n) -> std::optional<HostMatch> {
        if (deny_all) return std::nullopt;
        for (const auto& x : names)
            if (x == n) return HostMatch{42, false};
        return std::nullopt;
    };
    return v;
}

class ResponderTest : public ::testing::Test {
protected:
    void start(ResponderConfig cfg = {}, SandboxView view = allow_view({"api.example", "big.example"})) {
        if (cfg.upstream.port() == 0) cfg.upstream = {boost::asio::ip::make_address("127.0.0.1"), upstream.port()};
        cfg.listen = boost::asio::ip::make_address("127.0.0.1");
        responder = std::make_unique<Responder>(io, cfg, std::move(view), admitter,
                                                [this](std::string_view n, uint16_t t, Verdict v, const QueryOrigin&) {
                                                    std::lock_guard lk(mu);
                                                    events.push_back({std::string(n), t, v});
                                                });
        if (deferring) responder->set_deferring_event_hook(deferring);
        responder->start();
        runner = std::thread([this] { io.run(); });
        for (int i = 1; i < io_threads; ++i) extra.emplace_back([this] { io.run(); });
    }
    void TearDown() override {
        if (responder) responder->stop();
        work.reset();
        io.stop();
        if (runner.joinable()) runner.join();
        for (auto& t : extra) t.join();
        responder.reset();
    }

    // One UDP exchange; empty on timeout.
    Bytes udp(const Bytes& q, std::chrono::milliseconds timeout = 3000ms) {
        UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
        auto sa = loopback(responder->port());
        ::sendto(s.get(), q.data(), q.size(), 0, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
        return udp_recv(s.get(), timeout);
    }
    static Bytes udp_recv(int fd, std::chrono::milliseconds timeout) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, static_cast<int>(timeout.count())) <= 0) return {};
        Bytes buf(65536);
        ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
        buf.resize(n > 0 ? static_cast<size_t>(n) : 0);
        return buf;
    }
    UniqueFd tcp_connect() {
        UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
        auto sa = loopback(responder->port());
        EXPECT_EQ(::connect(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
        timeval tv{3, 0};
        setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        return s;
    }
    static Bytes tcp_read(int fd) {
        uint8_t len[2];
        if (!read_full(fd, len, 2)) return {};
        Bytes m(size_t(len[0]) << 8 | len[1]);
        if (!read_full(fd, m.data(), m.size())) return {};
        return m;
    }
    std::vector<Event> events_copy() {
        std::lock_guard lk(mu);
        return events;
    }

    FakeUpstream upstream;
    boost::asio::io_context io;
    std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work{io.get_executor()};
    RecordingAdmitter admitter;
    DeferringEventHook deferring;
    std::unique_ptr<Responder> responder;
    std::thread runner;
    int io_threads = 1;
    std::vector<std::thread> extra;
    std::mutex mu;
    std::vector<Event> events;
};

TEST_F(ResponderTest, InferenceOverUdp) {
    start();
    Bytes r = udp(make_query("inference.local", LDNS_RR_TYPE_A, 0x0101));
    EXPECT_EQ(id_of(r), 0x0101);
    EXPECT_EQ(answer_addrs(r), std::vector<std::string>{"198.18.0.1"});
    EXPECT_EQ(upstream.udp_queries, 0);
}

TEST_F(ResponderTest, AllowedNameResolvedAndAdmittedBeforeReply) {
    upstream.set("api.example.", {"api.example. 300 IN A 203.0.113.10", "api.example. 300 IN A 10.1.1.1"});
    start();
    Bytes r = udp(make_query("api.example", LDNS_RR_TYPE_A, 0x0202));
    EXPECT_EQ(id_of(r), 0x0202);
    EXPECT_EQ(rcode_of(r), LDNS_RCODE_NOERROR);
    EXPECT_EQ(answer_addrs(r), (std::vector<std::string>{"203.0.113.10", "10.1.1.1"}));
    // The candidates reach the admitter by the time the client has its
    // answer; which of them are admitted (not 10.x) is the compiled
    // policy's decision (tests/unit/policy, PolicyAdmit).
    std::lock_guard lk(admitter.mu);
    ASSERT_EQ(admitter.got.size(), 2u);
    EXPECT_EQ(admitter.got[0].first.addr, addr("203.0.113.10"));
    EXPECT_EQ(admitter.got[0].first.ttl_seconds, 300u);
    EXPECT_EQ(admitter.got[0].second, 42u);
    EXPECT_EQ(admitter.got[1].first.addr, addr("10.1.1.1"));
}

TEST_F(ResponderTest, DeniedNameNxdomainAndEvent) {
    start();
    Bytes r = udp(make_query("exfil.example", LDNS_RR_TYPE_A, 3));
    EXPECT_EQ(rcode_of(r), LDNS_RCODE_NXDOMAIN);
    EXPECT_EQ(upstream.udp_queries, 0);
    auto ev = events_copy();
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0].name, "exfil.example");
    EXPECT_EQ(ev[0].qtype, LDNS_RR_TYPE_A);
    EXPECT_EQ(ev[0].verdict, Verdict::denied);
}

TEST_F(ResponderTest, UpstreamUnreachableIsServfail) {
    // A port we hold (bind port 0) but that answers "port unreachable": the
    // socket is connected elsewhere, so the kernel delivers nothing from the
    // responder to it, and no other process can take the port meanwhile.
    UniqueFd held(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    auto any = loopback(0);
    ASSERT_EQ(::bind(held.get(), reinterpret_cast<sockaddr*>(&any), sizeof any), 0);
    auto elsewhere = loopback(9);
    ASSERT_EQ(::connect(held.get(), reinterpret_cast<sockaddr*>(&elsewhere), sizeof elsewhere), 0);
    const uint16_t dead = local_port(held.get());
    ResponderConfig cfg;
    cfg.upstream = {boost::asio::ip::make_address("127.0.0.1"), dead};
    cfg.upstream_timeout = 5000ms;
    start(cfg);
    auto t0 = std::chrono::steady_clock::now();
    Bytes r = udp(make_query("api.example", LDNS_RR_TYPE_A, 4));
    EXPECT_EQ(rcode_of(r), LDNS_RCODE_SERVFAIL);
    EXPECT_EQ(id_of(r), 4);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 4000ms) << "port unreachable fails fast";
    auto ev = events_copy();
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0].verdict, Verdict::upstream_error);
}

TEST_F(ResponderTest, UpstreamTimeoutIsServfail) {
    upstream.mode = FakeUpstream::Mode::silent;
    ResponderConfig cfg;
    cfg.upstream_timeout = 300ms;
    start(cfg);
    auto t0 = std::chrono::steady_clock::now();
    Bytes r = udp(make_query("api.example", LDNS_RR_TYPE_A, 5));
    EXPECT_EQ(rcode_of(r), LDNS_RCODE_SERVFAIL);
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 250ms);
    EXPECT_EQ(admitter.count(), 0u);
}

TEST_F(ResponderTest, SpoofedReplyWithWrongIdIgnored) {
    upstream.mode = FakeUpstream::Mode::spoof_first;
    upstream.set("api.example.", {"api.example. 300 IN A 203.0.113.10"});
    start();
    Bytes r = udp(make_query("api.example", LDNS_RR_TYPE_A, 6));
    EXPECT_EQ(answer_addrs(r), std::vector<std::string>{"203.0.113.10"});
    std::lock_guard lk(admitter.mu);
    ASSERT_EQ(admitter.got.size(), 1u);
    EXPECT_EQ(admitter.got[0].first.addr, addr("203.0.113.10"));
}

TEST_F(ResponderTest, TruncatedUpstreamRetriedOverTcp) {
    upstream.mode = FakeUpstream::Mode::truncate_udp;
    upstream.set("api.example.", {"api.example. 60 IN A 203.0.113.11"});
    start();
    Bytes r = udp(make_query("api.example", LDNS_RR_TYPE_A, 7));
    EXPECT_EQ(id_of(r), 7);
    EXPECT_FALSE(tc_of(r));
    EXPECT_EQ(answer_addrs(r), std::vector<std::string>{"203.0.113.11"});
    EXPECT_EQ(upstream.tcp_queries, 1);
    EXPECT_EQ(admitter.count(), 1u);
}

TEST_F(ResponderTest, BigAnswerTruncatedForUdpClientFullOverTcp) {
    std::vector<std::string> many;
    for (int i = 1; i <= 60; ++i) many.push_back("big.example. 60 IN A 203.0.113." + std::to_string(i));
    upstream.set("big.example.", many);
    start();
    Bytes r = udp(make_query("big.example", LDNS_RR_TYPE_A, 8));  // no EDNS: 512 bytes max
    EXPECT_TRUE(tc_of(r));
    EXPECT_LE(r.size(), 512u);
    EXPECT_EQ(id_of(r), 8);

    UniqueFd s = tcp_connect();
    ASSERT_TRUE(write_full(s.get(), frame(make_query("big.example", LDNS_RR_TYPE_A, 9))));
    Bytes t = tcp_read(s.get());
    EXPECT_EQ(id_of(t), 9);
    EXPECT_EQ(answer_addrs(t).size(), 60u);
}

TEST_F(ResponderTest, TcpSeveralQueriesOnOneConnection) {
    upstream.set("api.example.", {"api.example. 300 IN A 203.0.113.10"});
    start();
    UniqueFd s = tcp_connect();
    // Pipelined: both written before reading; replies may come in any order.
    Bytes both = frame(make_query("api.example", LDNS_RR_TYPE_A, 0x1001));
    Bytes second = frame(make_query("inference.local", LDNS_RR_TYPE_A, 0x1002));
    both.insert(both.end(), second.begin(), second.end());
    ASSERT_TRUE(write_full(s.get(), both));
    std::set<uint16_t> ids;
    for (int i = 0; i < 2; ++i) {
        Bytes r = tcp_read(s.get());
        ASSERT_FALSE(r.empty());
        ids.insert(id_of(r));
    }
    EXPECT_EQ(ids, (std::set<uint16_t>{0x1001, 0x1002}));
    ASSERT_TRUE(write_full(s.get(), frame(make_query("nope.example", LDNS_RR_TYPE_A, 0x1003))));
    Bytes r = tcp_read(s.get());
    EXPECT_EQ(id_of(r), 0x1003);
    EXPECT_EQ(rcode_of(r), LDNS_RCODE_NXDOMAIN);
}

TEST_F(ResponderTest, TcpIdleConnectionClosed) {
    ResponderConfig cfg;
    cfg.tcp_idle_timeout = 200ms;
    start(cfg);
    UniqueFd s = tcp_connect();
    uint8_t b;
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(::recv(s.get(), &b, 1, 0), 0) << "EOF after the idle timeout";
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 2000ms);
}

TEST_F(ResponderTest, TcpConnectionCap) {
    ResponderConfig cfg;
    cfg.max_tcp_connections = 1;
    start(cfg);
    UniqueFd first = tcp_connect();
    ASSERT_TRUE(write_full(first.get(), frame(make_query("inference.local", LDNS_RR_TYPE_A, 1))));
    EXPECT_EQ(id_of(tcp_read(first.get())), 1);
    UniqueFd second = tcp_connect();
    // Over the cap the responder closes at once. A receive timeout (3 s, far
    // below the 10 s idle timeout) means it kept the connection: a failure.
    uint8_t b;
    ssize_t n = ::recv(second.get(), &b, 1, 0);
    const int err = n < 0 ? errno : 0;
    EXPECT_TRUE(n == 0 || (n < 0 && err == ECONNRESET))
        << "over the cap the connection must be closed, got recv=" << n << " (" << std::strerror(err) << ")";
    ASSERT_TRUE(write_full(first.get(), frame(make_query("inference.local", LDNS_RR_TYPE_A, 2))));
    EXPECT_EQ(id_of(tcp_read(first.get())), 2);
}

TEST_F(ResponderTest, InflightCapServfailsExcess) {
    upstream.mode = FakeUpstream::Mode::silent;
    ResponderConfig cfg;
    cfg.max_inflight = 1;
    cfg.upstream_timeout = 1500ms;
    start(cfg);
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    auto sa = loopback(responder->port());
    Bytes q1 = make_query("api.example", LDNS_RR_TYPE_A, 0x0a01);
    Bytes q2 = make_query("api.example", LDNS_RR_TYPE_A, 0x0a02);
    ::sendto(s.get(), q1.data(), q1.size(), 0, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    std::this_thread::sleep_for(100ms);
    ::sendto(s.get(), q2.data(), q2.size(), 0, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    Bytes r = udp_recv(s.get(), 1000ms);
    EXPECT_EQ(id_of(r), 0x0a02) << "the excess query is answered at once";
    EXPECT_EQ(rcode_of(r), LDNS_RCODE_SERVFAIL);
    auto ev = events_copy();
    ASSERT_FALSE(ev.empty());
    EXPECT_EQ(ev[0].verdict, Verdict::overloaded);
}

TEST_F(ResponderTest, PolicyReloadTakesEffect) {
    upstream.set("api.example.", {"api.example. 300 IN A 203.0.113.10"});
    start();
    EXPECT_EQ(rcode_of(udp(make_query("api.example", LDNS_RR_TYPE_A, 1))), LDNS_RCODE_NOERROR);
    responder->set_view(allow_view({}, true));
    EXPECT_EQ(rcode_of(udp(make_query("api.example", LDNS_RR_TYPE_A, 2))), LDNS_RCODE_NXDOMAIN);
    EXPECT_EQ(admitter.count(), 1u);
}

TEST_F(ResponderTest, MalformedUdpGetsFormerrAndGarbageIsDropped) {
    start();
    Bytes hdr{0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    Bytes r = udp(hdr);
    EXPECT_EQ(rcode_of(r), LDNS_RCODE_FORMERR);
    EXPECT_EQ(id_of(r), 0xabcd);
    EXPECT_TRUE(udp(Bytes{1, 2, 3}, 300ms).empty());
    // Still serving afterwards.
    EXPECT_EQ(answer_addrs(udp(make_query("inference.local", LDNS_RR_TYPE_A, 1))),
              std::vector<std::string>{"198.18.0.1"});
}

TEST_F(ResponderTest, ConcurrentQueriesOnSeveralIoThreads) {
    upstream.set("api.example.", {"api.example. 300 IN A 203.0.113.10"});
    io_threads = 4;
    start();
    constexpr int kClients = 8, kEach = 25;
    std::atomic<int> ok{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < kClients; ++c) {
        clients.emplace_back([&, c] {
            UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
            auto sa = loopback(responder->port());
            for (int i = 0; i < kEach; ++i) {
                const auto id = static_cast<uint16_t>(c * 1000 + i);
                const char* name = i % 3 == 0 ? "inference.local" : i % 3 == 1 ? "api.example" : "nope.example";
                Bytes q = make_query(name, LDNS_RR_TYPE_A, id);
                ::sendto(s.get(), q.data(), q.size(), 0, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
                Bytes r = udp_recv(s.get(), 3000ms);
                if (id_of(r) == id) ++ok;
            }
        });
    }
    for (auto& t : clients) t.join();
    EXPECT_EQ(ok, kClients * kEach);
    EXPECT_EQ(responder->stats().queries, uint64_t(kClients * kEach));
}

TEST_F(ResponderTest, FixedPortAndStopClosesIt) {
    start();
    const uint16_t port = responder->port();
    ASSERT_NE(port, 0);
    responder->stop();
    // stop() runs on the strand; give it a moment, then the port is free again.
    std::this_thread::sleep_for(100ms);
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    auto sa = loopback(port);
    EXPECT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
}


// A client that pipelines queries and never reads its answers: reading pauses
// once the queued answers pass the cap, and since queued output is not
// progress the idle timer closes the connection.
TEST_F(ResponderTest, TcpNeverReadingClientIsCutOff) {
    ResponderConfig cfg;
    cfg.tcp_idle_timeout = 300ms;
    cfg.max_tcp_queued_bytes = 4096;
    start(cfg);
    // A small receive window (set before connecting) so the kernel buffers
    // between the responder and this client fill quickly.
    UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    int small = 4096;
    setsockopt(s.get(), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    auto sa = loopback(responder->port());
    ASSERT_EQ(::connect(s.get(), reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
    Bytes q = frame(make_query("inference.local", LDNS_RR_TYPE_A, 7));
    Bytes burst;
    for (int i = 0; i < 200; ++i) burst.insert(burst.end(), q.begin(), q.end());
    size_t sent = 0;
    auto t0 = std::chrono::steady_clock::now();
    while (std::chrono::steady_clock::now() - t0 < 1500ms) {
        ssize_t n = ::send(s.get(), burst.data(), burst.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) sent += static_cast<size_t>(n) / q.size();
        if (n < 0 && errno != EAGAIN) break;  // reset: the responder cut us off
        std::this_thread::sleep_for(5ms);
    }
    auto deadline = std::chrono::steady_clock::now() + 3s;
    while (responder->stats().tcp_open != 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(20ms);
    auto st = responder->stats();
    EXPECT_EQ(st.tcp_open, 0u) << "the non-reading client was not cut off";
    EXPECT_EQ(st.tcp_cut, 1u);
    // Reading paused: far fewer queries were taken than the client pushed.
    EXPECT_LT(st.queries, sent);
    EXPECT_LT(st.queries, 2000u);
}

// The shared caps (per sandbox across both address families, node-wide):
// over any of them a connection is closed at once, and closing gives it back.
TEST_F(ResponderTest, SharedTcpBudgetCapsConnections) {
    ResponderConfig cfg;
    auto budget = std::make_shared<ConnectionBudget>(1);
    cfg.tcp_budgets.push_back(budget);
    start(cfg);
    {
        UniqueFd first = tcp_connect();
        ASSERT_TRUE(write_full(first.get(), frame(make_query("inference.local", LDNS_RR_TYPE_A, 1))));
        EXPECT_EQ(id_of(tcp_read(first.get())), 1);
        EXPECT_EQ(budget->used(), 1u);
        UniqueFd second = tcp_connect();
        uint8_t b;
        EXPECT_LE(::recv(second.get(), &b, 1, 0), 0) << "over the shared cap: closed";
        EXPECT_EQ(budget->refused(), 1u);
    }
    auto deadline = std::chrono::steady_clock::now() + 3s;
    while (budget->used() != 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(10ms);
    EXPECT_EQ(budget->used(), 0u) << "a closed connection gives its place back";
    UniqueFd third = tcp_connect();
    ASSERT_TRUE(write_full(third.get(), frame(make_query("inference.local", LDNS_RR_TYPE_A, 3))));
    EXPECT_EQ(id_of(tcp_read(third.get())), 3);
}

// The agent frees the state behind the view's matcher and the Admitter right
// after stop() returns (detach). An upstream answer already queued behind a
// busy strand must not call into either afterwards.
TEST_F(ResponderTest, NoCallbackAfterStopWhileAnswerQueued) {
    upstream.set("api.example.", {"api.example. 300 IN A 203.0.113.10"});
    upstream.mode = FakeUpstream::Mode::delay;
    std::mutex latch_mu;
    std::condition_variable latch_cv;
    bool released = false;
    std::atomic<bool> blocking{false}, after_stop{false};
    std::atomic<int> violations{0};
    SandboxView v;
    v.match_host = [&](std::string_view n) -> std::optional<HostMatch> {
        if (after_stop) ++violations;
        if (n == "block.example") {
            blocking = true;
            std::unique_lock lk(latch_mu);
            latch_cv.wait(lk, [&] { return released; });
            return std::nullopt;
        }
        if (n == "api.example") return HostMatch{42, false};
        return std::nullopt;
    };
    start({}, v);
    UniqueFd c(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    auto sa = loopback(responder->port());
    Bytes qa = make_query("api.example", LDNS_RR_TYPE_A, 1);
    ::sendto(c.get(), qa.data(), qa.size(), 0, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    auto deadline = std::chrono::steady_clock::now() + 3s;
    while (upstream.udp_queries == 0 && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    // Occupy the strand, and let the upstream answer queue up behind it.
    Bytes qb = make_query("block.example", LDNS_RR_TYPE_A, 2);
    ::sendto(c.get(), qb.data(), qb.size(), 0, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    while (!blocking && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(5ms);
    ASSERT_TRUE(blocking);
    std::this_thread::sleep_for(400ms);
    std::thread stopper([&] {
        responder->stop();
        after_stop = true;
    });
    std::this_thread::sleep_for(100ms);
    {
        std::lock_guard lk(latch_mu);
        released = true;
    }
    latch_cv.notify_all();
    stopper.join();
    std::this_thread::sleep_for(300ms);
    EXPECT_EQ(violations, 0) << "the matcher was called after stop() returned";
    size_t admitted = admitter.count();
    std::this_thread::sleep_for(100ms);
    EXPECT_EQ(admitter.count(), admitted);
}

TEST_F(ResponderTest, AdmissionQuotaIsServfailWithQuotaEvent) {
    upstream.set("api.example.", {"api.example. 300 IN A 203.0.113.10"});
    admitter.quota_full = true;
    start();
    Bytes r = udp(make_query("api.example", LDNS_RR_TYPE_A, 9));
    EXPECT_EQ(rcode_of(r), LDNS_RCODE_SERVFAIL);
    auto ev = events_copy();
    ASSERT_EQ(ev.size(), 1u);
    EXPECT_EQ(ev[0].verdict, Verdict::quota);
    EXPECT_EQ(ev[0].name, "api.example");
}


// The agent names the asking process before the refusal goes out (the client
// exits once it has its answer); the reply waits for the hook to resume,
// and the responder keeps serving meanwhile.
TEST_F(ResponderTest, RefusalReplyWaitsForTheDeferringHook) {
    std::mutex m;
    std::vector<std::function<void()>> resumes;
    deferring = [&](std::string_view, uint16_t, Verdict, const QueryOrigin&, std::function<void()> resume) {
        std::lock_guard lk(m);
        resumes.push_back(std::move(resume));
    };
    start();
    UniqueFd s(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    auto sa = loopback(responder->port());
    Bytes q = make_query("nope.example", LDNS_RR_TYPE_A, 0x0b01);
    ::sendto(s.get(), q.data(), q.size(), 0, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    EXPECT_TRUE(udp_recv(s.get(), 300ms).empty()) << "answered before the hook resumed";
    EXPECT_EQ(answer_addrs(udp(make_query("inference.local", LDNS_RR_TYPE_A, 2))),
              std::vector<std::string>{"198.18.0.1"});
    std::function<void()> resume;
    {
        std::lock_guard lk(m);
        ASSERT_EQ(resumes.size(), 1u);
        resume = resumes[0];
    }
    resume();
    resume();  // at most once
    Bytes r = udp_recv(s.get(), 2000ms);
    EXPECT_EQ(id_of(r), 0x0b01);
    EXPECT_EQ(rcode_of(r), LDNS_RCODE_NXDOMAIN);
    EXPECT_TRUE(udp_recv(s.get(), 200ms).empty()) << "a second reply";
}

}  // namespace
}  // namespace redir::dns
