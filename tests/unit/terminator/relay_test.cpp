// The inspect relay and the redirect listeners under a hostile sandbox:
// connection caps, connect and idle timeouts, the relay destroyed with
// connections in flight, and an accept loop that backs off on EMFILE instead
// of spinning. Everything on 127.0.0.1 with ports the test picked (port 0).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio.hpp>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "agent/audit_log.hpp"
#include "agent/listeners.hpp"
#include "agent/relay.hpp"
#include "common/addr.hpp"
#include "loopback.hpp"

namespace redir::agent {
namespace {

using namespace redir::test;

// An echo server standing in for the destination of inspected connections.
struct Echo {
    Echo() : acceptor(io, {kLoopback, 0}) {
        loop();
        t = std::thread([this] { io.run(); });
    }
    ~Echo() {
        io.stop();
        t.join();
    }
    void loop() {
        acceptor.async_accept([this](boost::system::error_code ec, tcp::socket s) {
            if (ec) return;
            auto sp = std::make_shared<tcp::socket>(std::move(s));
            echo(sp);
            loop();
        });
    }
    void echo(std::shared_ptr<tcp::socket> s) {
        auto buf = std::make_shared<std::array<char, 4096>>();
        s->async_read_some(asio::buffer(*buf), [this, s, buf](boost::system::error_code ec, std::size_t n) {
            if (ec) return;
            asio::async_write(*s, asio::buffer(buf->data(), n), [this, s, buf](boost::system::error_code e2, std::size_t) {
                if (!e2) echo(s);
            });
        });
    }
    uint16_t port() const { return acceptor.local_endpoint().port(); }
    asio::io_context io;
    tcp::acceptor acceptor;
    std::thread t;
};

class RelayTest : public ::testing::Test {
protected:
    void SetUp() override {
        audit_ = std::make_unique<AuditLog>(dir_ + "/audit.log");
    }
    void TearDown() override {
        stop_io();
        relay_.reset();
        audit_.reset();
    }
    void stop_io() { io_.join(); }
    // Sockets accepted on the front acceptor are handed to the relay as if
    // redirected from sandbox CG towards DST_PORT on 127.0.0.1.
    void start(RelayOptions o, uint16_t dst_port) {
        relay_ = std::make_unique<Relay>(io_, *audit_, o);
        dst_port_ = dst_port;
        accept();
        io_.start();
    }
    void accept() {
        front_.async_accept([this](boost::system::error_code ec, tcp::socket s) {
            if (ec) return;
            ConnInfo ci;
            in_addr lo{htonl(INADDR_LOOPBACK)};
            ci.orig_addr = addr_from_v4(lo);
            ci.orig_port = dst_port_;
            auto peer = s.remote_endpoint(ec);
            {
                std::lock_guard lk(mu_);
                ci.cgroup_id = sandbox_of_[peer.port()];
            }
            ci.client = "127.0.0.1:" + std::to_string(peer.port());
            ci.orig = "127.0.0.1:" + std::to_string(dst_port_);
            if (relay_) relay_->serve(std::move(s), ci);
            accept();
        });
    }
    // A client socket of sandbox CG: its port tells the front acceptor which
    // sandbox it is (the kernel tells the agent).
    tcp::socket client(uint64_t cg) {
        tcp::socket s(cio_);
        s.open(tcp::v4());
        s.bind({kLoopback, 0});
        {
            std::lock_guard lk(mu_);
            sandbox_of_[s.local_endpoint().port()] = cg;
        }
        s.connect({kLoopback, front_.local_endpoint().port()});
        return s;
    }
    static bool echoes(tcp::socket& s) {
        const std::string msg = "ping";
        asio::write(s, asio::buffer(msg));
        std::string got(4, 0);
        boost::system::error_code ec;
        s.non_blocking(false);
        asio::read(s, asio::buffer(got), ec);
        return !ec && got == msg;
    }
    std::string audit_text() {
        std::ifstream f(dir_ + "/audit.log");
        return std::string(std::istreambuf_iterator<char>(f), {});
    }
    uint64_t on_io(const std::function<uint64_t()>& f) {
        std::promise<uint64_t> p;
        asio::post(io_, [&] { p.set_value(f()); });
        return p.get_future().get();
    }

    redir::test::ScratchDir scratch_{"redir-relay-test"};
    std::string dir_ = scratch_.path();
    std::unique_ptr<AuditLog> audit_;
    redir::test::IoThread io_;
    asio::io_context cio_;
    tcp::acceptor front_{io_, {kLoopback, 0}};
    std::unique_ptr<Relay> relay_;
    uint16_t dst_port_ = 0;
    std::mutex mu_;
    std::map<uint16_t, uint64_t> sandbox_of_;
};

TEST_F(RelayTest, PerSandboxCapRefusesOnlyThatSandbox) {
    Echo echo;
    RelayOptions o;
    o.max_connections_per_sandbox = 3;
    start(o, echo.port());
    std::vector<tcp::socket> held;
    for (int i = 0; i < 3; ++i) {
        held.push_back(client(1));
        ASSERT_TRUE(echoes(held.back()));
    }
    auto extra = client(1);
    EXPECT_TRUE(closed_within(extra, 2s));
    auto other = client(2);
    EXPECT_TRUE(echoes(other)) << "another sandbox still relays";
    EXPECT_EQ(relay_->stats().refused_sandbox_connections.load(), 1u);
    EXPECT_NE(audit_text().find("\"limit\":\"relay_connections_per_sandbox\""), std::string::npos) << audit_text();
    held.clear();
    ASSERT_TRUE(wait_for([&] { return on_io([&] { return relay_->connections_of(1); }) == 0; }));
    auto again = client(1);
    EXPECT_TRUE(echoes(again));
}

TEST_F(RelayTest, IdleConnectionsAreClosed) {
    Echo echo;
    RelayOptions o;
    o.idle_timeout = 300ms;
    start(o, echo.port());
    auto s = client(1);
    ASSERT_TRUE(echoes(s));
    // Traffic keeps it open past the timeout...
    for (int i = 0; i < 4; ++i) {
        std::this_thread::sleep_for(150ms);
        ASSERT_TRUE(echoes(s)) << "closed while still in use";
    }
    // ...silence closes it.
    auto t0 = Clock::now();
    EXPECT_TRUE(closed_within(s, 3s));
    EXPECT_GE(Clock::now() - t0, 200ms);
    ASSERT_TRUE(wait_for([&] { return relay_->stats().idle_timeouts.load() == 1; }));
    ASSERT_TRUE(wait_for([&] { return audit_text().find("\"result\":\"idle for 300 ms\"") != std::string::npos; }));
}

TEST_F(RelayTest, UpstreamConnectTimesOut) {
    // A listener whose queue is full and which never accepts: SYNs to it go
    // unanswered, so the relay's connect hangs (all on loopback).
    tcp::acceptor full(cio_, {kLoopback, 0});
    full.listen(0);
    std::vector<int> fillers;
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(full.local_endpoint().port());
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < 4; ++i) {
        int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ASSERT_GE(fd, 0);
        ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);  // EINPROGRESS
        fillers.push_back(fd);
    }
    std::this_thread::sleep_for(100ms);
    RelayOptions o;
    o.connect_timeout = 300ms;
    start(o, full.local_endpoint().port());
    auto s = client(1);
    EXPECT_TRUE(closed_within(s, 3s));
    ASSERT_TRUE(wait_for([&] { return relay_->stats().connect_timeouts.load() == 1; }));
    ASSERT_TRUE(wait_for([&] { return audit_text().find("upstream connect timed out") != std::string::npos; }));
    EXPECT_TRUE(wait_for([&] { return on_io([&] { return relay_->connections(); }) == 0; }));
    for (int fd : fillers) ::close(fd);
}

TEST_F(RelayTest, RelayDestroyedWithConnectionsInFlight) {
    Echo echo;
    start({}, echo.port());
    auto a = client(1);
    ASSERT_TRUE(echoes(a));
    auto b = client(2);
    asio::write(b, asio::buffer(std::string("half")));
    ASSERT_TRUE(wait_for([&] { return on_io([&] { return relay_->connections(); }) == 2; }));
    std::promise<void> gone;
    asio::post(io_, [&] {
        relay_.reset();
        gone.set_value();
    });
    gone.get_future().wait();
    // The sessions are closed and end without touching the relay's owner
    // (ASan would see it); the audit log may go away now.
    EXPECT_TRUE(closed_within(a, 2s));
    EXPECT_TRUE(closed_within(b, 2s));
    std::this_thread::sleep_for(50ms);
    stop_io();
}

// The accept loop meets EMFILE: with the open-file limit used up, accept()
// fails while the connection stays queued. The loop must wait instead of
// spinning, and serve the connection once descriptors are free again.
TEST(RedirectListener, BacksOffOnEmfileAndRecovers) {
    char tmpl[] = "/tmp/redir-listener-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    std::string dir = tmpl;
    asio::io_context io;
    AuditLog audit(dir + "/audit.log");
    std::atomic<int> served{0};
    RedirectListener l(
        io, "test", 0,
        [](const redir_tuple_key&) {
            redir_origdst_val v{};
            v.cgroup_id = 5;
            return std::optional<redir_origdst_val>(v);
        },
        audit, [&](tcp::socket, ConnInfo) { ++served; });
    std::thread t([&] { io.run(); });

    // Use up every descriptor below a lowered limit; the client socket exists before.
    rlimit old{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old), 0);
    asio::io_context cio;
    tcp::socket c(cio);
    c.open(tcp::v4());
    int probe = ::dup(0);
    ASSERT_GE(probe, 0);
    ::close(probe);
    rlimit low = old;
    low.rlim_cur = static_cast<rlim_t>(probe + 16);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
    std::vector<int> fillers;
    for (int fd; (fd = ::dup(0)) >= 0;) fillers.push_back(fd);
    ASSERT_EQ(errno, EMFILE);

    c.connect({kLoopback, l.port()});
    ASSERT_TRUE(wait_for([&] { return l.accept_failures() >= 1; }));
    rusage r0{}, r1{};
    ::getrusage(RUSAGE_SELF, &r0);
    const auto f0 = l.accept_failures();
    std::this_thread::sleep_for(1s);
    ::getrusage(RUSAGE_SELF, &r1);
    auto cpu_us = [](const rusage& r) {
        return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1'000'000L + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
    };
    const long used = cpu_us(r1) - cpu_us(r0);
    EXPECT_LT(used, 150'000) << "the accept loop used " << used / 1000 << " ms of CPU in 1 s while out of fds";
    EXPECT_LT(l.accept_failures() - f0, 30u) << "retries must be spaced out";
    EXPECT_EQ(served.load(), 0);

    for (int fd : fillers) ::close(fd);
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &old), 0);
    EXPECT_TRUE(wait_for([&] { return served.load() == 1; }, 3s)) << "the queued connection is served once fds are free";
    io.stop();
    t.join();
    std::filesystem::remove_all(dir);
}

// Accepting on the terminator's io threads (ACCEPT_ON): every one of them
// accepts from the one listening socket and runs the lookup and the handler
// itself, with the socket on its own executor; a connection the kernel
// recorded no original destination for is still refused there, and the
// listener's destruction stops the loops while their threads run on.
TEST(RedirectListener, AcceptsOnGivenExecutorsAndStillLooksUpEveryConnection) {
    char tmpl[] = "/tmp/redir-listener-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    std::string dir = tmpl;
    asio::io_context agent_io;
    std::vector<std::unique_ptr<asio::io_context>> ios;
    std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
    std::vector<std::thread> threads;
    std::mutex mu;
    std::set<std::thread::id> io_ids;
    for (int i = 0; i < 2; ++i) {
        ios.push_back(std::make_unique<asio::io_context>(1));
        guards.push_back(asio::make_work_guard(*ios.back()));
    }
    std::vector<asio::any_io_executor> exs;
    for (auto& io : ios) exs.push_back(io->get_executor());
    for (auto& io : ios)
        threads.emplace_back([&mu, &io_ids, ctx = io.get()] {
            {
                std::lock_guard lk(mu);
                io_ids.insert(std::this_thread::get_id());
            }
            ctx->run();
        });
    AuditLog audit(dir + "/audit.log");
    std::atomic<int> served{0}, on_io_thread{0}, own_executor{0}, lookups{0};
    std::atomic<bool> refuse_next{false};
    auto l = std::make_unique<RedirectListener>(
        agent_io, "test", 0,
        [&](const redir_tuple_key&) {
            ++lookups;
            redir_origdst_val v{};
            v.cgroup_id = 9;
            return refuse_next ? std::nullopt : std::optional<redir_origdst_val>(v);
        },
        audit,
        [&](tcp::socket s, ConnInfo ci) {
            std::lock_guard lk(mu);
            ++served;
            if (io_ids.count(std::this_thread::get_id())) ++on_io_thread;
            for (auto& ex : exs)
                if (s.get_executor() == ex) ++own_executor;
            EXPECT_EQ(ci.cgroup_id, 9u);
        },
        exs);
    constexpr int kConns = 20;
    asio::io_context cio;
    std::vector<tcp::socket> clients;
    for (int i = 0; i < kConns; ++i) {
        clients.emplace_back(cio);
        clients.back().connect({kLoopback, l->port()});
    }
    ASSERT_TRUE(wait_for([&] { return served.load() == kConns; }, 5s)) << served.load() << " served";
    EXPECT_EQ(on_io_thread.load(), kConns) << "served on the agent's thread instead of an io thread";
    EXPECT_EQ(own_executor.load(), kConns) << "the socket must be bound to the executor that accepted it";
    EXPECT_EQ(lookups.load(), kConns);

    // Not redirected (no record): refused on the io thread, never handed on.
    refuse_next = true;
    {
        tcp::socket c(cio);
        c.connect({kLoopback, l->port()});
        ASSERT_TRUE(wait_for([&] { return lookups.load() == kConns + 1; }, 5s));
        char b;
        boost::system::error_code ec;
        c.read_some(asio::buffer(&b, 1), ec);
        EXPECT_TRUE(ec == asio::error::eof || ec == asio::error::connection_reset) << ec.message();
    }
    EXPECT_EQ(served.load(), kConns);
    EXPECT_EQ(audit.written(), 1u);

    // Gone: the port no longer accepts, and the io threads run on.
    const auto port = l->port();
    l.reset();
    EXPECT_TRUE(wait_for([&] {
        tcp::socket c(cio);
        boost::system::error_code ec;
        c.connect({kLoopback, port}, ec);
        return ec == asio::error::connection_refused;
    }, 5s));
    guards.clear();
    for (auto& t : threads) t.join();
    std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace redir::agent
