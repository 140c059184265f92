// DNS responder throughput and added latency for an allowed name, against
// asking the (fake, loopback) upstream directly, both measured in the same
// run. Runs as root in a private network namespace it creates.
//
// Reported: sequential round-trip latency (p50, p99) and queries/s through
// the responder and direct, and with 4 concurrent clients, counting only
// replies that carry the query's ID, NOERROR and the expected A record.
// Asserted: the responder adds less than 1 ms at the median (it forwards, it
// does not cache), and no query times out or gets a wrong reply.
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "dns/server.hpp"
#include "netns.hpp"
#include "../../tests/unit/dns/dns_test_util.hpp"

using namespace redir::dns;
using Clock = std::chrono::steady_clock;

namespace {

struct NullAdmitter : Admitter {
    std::atomic<uint64_t> n{0};
    void admit(const std::vector<Admission>& a, const HostMatch&) override { n += a.size(); }
};

// Answers every query with one A record, as fast as a blocking loop can.
class FakeUpstream {
public:
    FakeUpstream() {
        fd_ = ::socket(AF_INET, SOCK_DGRAM, 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        ::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
        socklen_t l = sizeof(sa);
        ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &l);
        port_ = ntohs(sa.sin_port);
        t_ = std::thread([this] { loop(); });
    }
    ~FakeUpstream() {
        stop_ = true;
        ::shutdown(fd_, SHUT_RDWR);
        ::close(fd_);
        t_.join();
    }
    uint16_t port() const { return port_; }

private:
    void loop() {
        std::vector<uint8_t> buf(4096);
        while (!stop_) {
            sockaddr_in peer{};
            socklen_t pl = sizeof(peer);
            ssize_t n = ::recvfrom(fd_, buf.data(), buf.size(), 0, reinterpret_cast<sockaddr*>(&peer), &pl);
            if (n <= 0) continue;
            redir::dns::test::Bytes q(buf.begin(), buf.begin() + n);
            auto a = redir::dns::test::make_answer(q, {"api.example. 300 IN A 203.0.113.80"});
            ::sendto(fd_, a.data(), a.size(), 0, reinterpret_cast<sockaddr*>(&peer), pl);
        }
    }
    int fd_;
    uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread t_;
};

struct Result {
    double p50_us = 0, p99_us = 0, qps = 0;
    int timeouts = 0;  // no reply within 2 s
    int wrong = 0;     // a reply with another ID, an RCODE other than NOERROR, or not the one A record
};

// True when REPLY answers query ID with NOERROR and exactly the upstream's A record.
bool valid_reply(const redir::dns::test::Bytes& reply, uint16_t id) {
    using namespace redir::dns::test;
    return id_of(reply) == id && rcode_of(reply) == LDNS_RCODE_NOERROR &&
           answer_addrs(reply) == std::vector<std::string>{"203.0.113.80"};
}

// N sequential queries from one socket; latency per validated reply. Every
// timeout and every invalid reply is counted (and fails the benchmark): an
// instant SERVFAIL must not look fast.
Result run_client(uint16_t port, int n, uint16_t id_base) {
    int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
    timeval tv{2, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));
    Result res;
    std::vector<double> lat;
    lat.reserve(n);
    std::vector<uint8_t> buf(4096);
    auto t0 = Clock::now();
    for (int i = 0; i < n; i++) {
        const auto id = static_cast<uint16_t>(id_base + i);
        auto q = redir::dns::test::make_query("api.example", 1, id);
        auto s = Clock::now();
        ::send(fd, q.data(), q.size(), 0);
        ssize_t got = ::recv(fd, buf.data(), buf.size(), 0);
        if (got <= 0) {
            res.timeouts++;
            continue;
        }
        if (!valid_reply(redir::dns::test::Bytes(buf.begin(), buf.begin() + got), id)) {
            res.wrong++;
            continue;
        }
        lat.push_back(std::chrono::duration<double, std::micro>(Clock::now() - s).count());
    }
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    ::close(fd);
    std::sort(lat.begin(), lat.end());
    if (lat.empty()) return res;
    res.p50_us = lat[lat.size() / 2];
    res.p99_us = lat[lat.size() * 99 / 100];
    res.qps = lat.size() / secs;
    return res;
}

struct Parallel {
    double qps = 0;
    int failures = 0;
};

// CLIENTS concurrent sequential clients; valid replies per second.
Parallel parallel_qps(uint16_t port, int clients, int n) {
    std::vector<std::thread> ts;
    std::atomic<uint64_t> valid{0};
    std::atomic<int> failures{0};
    auto t0 = Clock::now();
    for (int c = 0; c < clients; c++)
        ts.emplace_back([&, c] {
            auto r = run_client(port, n, static_cast<uint16_t>(c * 10000));
            valid += static_cast<uint64_t>(n - r.timeouts - r.wrong);
            failures += r.timeouts + r.wrong;
        });
    for (auto& t : ts) t.join();
    return {valid / std::chrono::duration<double>(Clock::now() - t0).count(), failures.load()};
}

}  // namespace

int main(int argc, char** argv) {
    int n = argc > 1 ? std::atoi(argv[1]) : 20000;
    if (::geteuid() != 0) {
        std::fprintf(stderr, "dns_bench needs root (private network namespace)\n");
        return 2;
    }
    redir::testsupport::enter_private_netns({});
    FakeUpstream upstream;
    boost::asio::io_context io;
    NullAdmitter admitter;
    ResponderConfig cfg;
    cfg.upstream = {boost::asio::ip::make_address("127.0.0.1"), upstream.port()};
    SandboxView view;
    view.match_host = [](std::string_view name) -> std::optional<HostMatch> {
        if (name == "api.example") return HostMatch{1, false};
        return std::nullopt;
    };
    Responder responder(io, cfg, view, admitter);
    responder.start();
    std::thread io_thread([&] {
        auto guard = boost::asio::make_work_guard(io);
        io.run();
    });

    // Warm up both paths, then interleave three rounds of each.
    run_client(upstream.port(), 500, 1);
    run_client(responder.port(), 500, 1);
    std::vector<Result> direct, via;
    for (int r = 0; r < 3; r++) {
        direct.push_back(run_client(upstream.port(), n, 7));
        via.push_back(run_client(responder.port(), n, 7));
    }
    auto med = [](std::vector<Result> v, double Result::*f) {
        std::vector<double> x;
        for (auto& e : v) x.push_back(e.*f);
        std::sort(x.begin(), x.end());
        return x[x.size() / 2];
    };
    double d50 = med(direct, &Result::p50_us), v50 = med(via, &Result::p50_us);
    double d99 = med(direct, &Result::p99_us), v99 = med(via, &Result::p99_us);
    double dq = med(direct, &Result::qps), vq = med(via, &Result::qps);
    Parallel pd = parallel_qps(upstream.port(), 4, n / 4), pv = parallel_qps(responder.port(), 4, n / 4);
    int timeouts = 0, wrong = 0;
    for (auto* v : {&direct, &via})
        for (auto& r : *v) {
            timeouts += r.timeouts;
            wrong += r.wrong;
        }

    std::printf("DNS, allowed name, %d sequential queries x 3 rounds (medians); every reply checked: ID, NOERROR, "
                "the one A record\n", n);
    std::printf("  %-28s p50 %7.1f us  p99 %7.1f us  %9.0f q/s\n", "upstream directly", d50, d99, dq);
    std::printf("  %-28s p50 %7.1f us  p99 %7.1f us  %9.0f q/s\n", "through the responder", v50, v99, vq);
    std::printf("  added latency p50 %.1f us (ratio %.2f), throughput ratio %.2f\n", v50 - d50, v50 / d50, vq / dq);
    std::printf("  4 concurrent clients: direct %.0f q/s, responder %.0f q/s (ratio %.2f)\n", pd.qps, pv.qps,
                pv.qps / pd.qps);
    std::printf("  admissions made: %lu\n", static_cast<unsigned long>(admitter.n.load()));
    std::printf("  failed queries: %d timeouts, %d wrong replies (sequential); %d (concurrent)\n", timeouts, wrong,
                pd.failures + pv.failures);

    responder.stop();
    io.stop();
    io_thread.join();
    int rc = 0;
    if (v50 - d50 > 1000) {
        std::printf("FAIL: the responder adds more than 1 ms at the median\n");
        rc = 1;
    }
    if (timeouts + wrong + pd.failures + pv.failures > 0) {
        std::printf("FAIL: %d queries timed out or got a wrong reply (target: none)\n",
                    timeouts + wrong + pd.failures + pv.failures);
        rc = 1;
    }
    return rc;
}
