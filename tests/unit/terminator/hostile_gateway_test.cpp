// The gateway against a hostile sandbox: connection caps and body budgets
// that refuse only the offending sandbox, client text clipped in logs, and
// sessions that survive the gateway being destroyed mid-request (run these
// under the ASan build too: redir_gateway_hostile_asan_tests).
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <thread>

#include "terminator/gateway.hpp"
#include "terminator/store.hpp"
#include "loopback.hpp"
#include "test_certs.hpp"

namespace redir::terminator {
namespace {

using namespace redir::test;
constexpr std::uint64_t kHostile = 101, kVictim = 202;

// One acceptor per sandbox: the port a client dials says which sandbox it is
// (the agent learns it from the kernel instead).
// Run twice: on the caller's io thread (GatewayOptions::threads 0) and on
// two io threads of the gateway's own, each with its own provider pool.
class HostileGatewayTest : public ::testing::TestWithParam<std::size_t> {
protected:
    void SetUp() override {
        store_ = std::make_shared<Store>(dir_ + "/state");
        store_->create_provider(Provider{"p", "mock", "", "", {}});
        store_->set_inference("p", "served");
    }
    void TearDown() override {
        stop_io();
        gw_.reset();
    }
    void stop_io() { io_.join(); }

    void start(GatewayOptions o) {
        o.on_request = [this](const RequestLog& r) {
            std::lock_guard lk(mu_);
            logs_.push_back(r);
        };
        o.on_refused = [this](const ConnInfo& ci, const LimitRefusal& r) {
            std::lock_guard lk(mu_);
            refusals_.emplace_back(ci.cgroup_id, r.limit);
        };
        o.threads = GetParam();
        gw_ = std::make_unique<Gateway>(io_.get_executor(), store_, std::move(o));
        accept(hostile_, kHostile);
        accept(victim_, kVictim);
        io_.start();
    }
    void accept(tcp::acceptor& a, std::uint64_t cg) {
        a.async_accept([this, &a, cg](beast::error_code ec, tcp::socket s) {
            if (ec) return;
            if (gw_) gw_->serve_cleartext_for_tests(std::move(s), ConnInfo{cg, 1, "127.0.0.1:1", "198.18.0.1:443"});
            accept(a, cg);
        });
    }
    tcp::socket connect(std::uint64_t cg) {
        tcp::socket s(client_io_);
        s.connect({kLoopback, (cg == kHostile ? hostile_ : victim_).local_endpoint().port()});
        return s;
    }
    // N idle connections of sandbox CG, once the gateway counts them all.
    std::vector<tcp::socket> hold(std::uint64_t cg, std::size_t n) {
        std::vector<tcp::socket> held;
        for (std::size_t i = 0; i < n; ++i) held.push_back(connect(cg));
        if (!wait_for([&] { return gw_->connections_of(cg) == n; }))
            ADD_FAILURE() << "the gateway counts " << gw_->connections_of(cg) << " connections, not " << n;
        return held;
    }
    static std::string request(const std::string& body, const std::string& target = "/v1/chat/completions") {
        return "POST " + target + " HTTP/1.1\r\nHost: inference.local\r\nContent-Type: application/json\r\n"
               "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    }
    static http::response<http::string_body> exchange(tcp::socket& s, const std::string& req) {
        asio::write(s, asio::buffer(req));
        beast::flat_buffer buf;
        http::response<http::string_body> res;
        http::read(s, buf, res);
        return res;
    }
    int post_status(std::uint64_t cg, const std::string& body) {
        auto s = connect(cg);
        return exchange(s, request(body)).result_int();
    }
    std::vector<std::pair<std::uint64_t, std::string>> refusals() {
        std::lock_guard lk(mu_);
        return refusals_;
    }
    std::vector<RequestLog> logs() {
        std::lock_guard lk(mu_);
        return logs_;
    }

    redir::test::ScratchDir scratch_{"redir-term-hostile"};
    std::string dir_ = scratch_.path();
    std::shared_ptr<Store> store_;
    redir::test::IoThread io_;
    asio::io_context client_io_;
    tcp::acceptor hostile_{io_, {kLoopback, 0}}, victim_{io_, {kLoopback, 0}};
    std::unique_ptr<Gateway> gw_;
    std::mutex mu_;
    std::vector<RequestLog> logs_;
    std::vector<std::pair<std::uint64_t, std::string>> refusals_;
};

const std::string kChat = R"({"messages":[{"role":"user","content":"hi"}]})";

TEST_P(HostileGatewayTest, PerSandboxConnectionCapRefusesOnlyThatSandbox) {
    GatewayOptions o;
    o.max_connections_per_sandbox = 4;
    start(o);
    auto idle = hold(kHostile, 4);

    auto extra = connect(kHostile);
    EXPECT_TRUE(closed_within(extra, 2s)) << "the fifth connection of the hostile sandbox must be closed";
    EXPECT_EQ(gw_->stats().refused_sandbox_connections.load(), 1u);
    EXPECT_EQ(post_status(kVictim, kChat), 200) << "another sandbox is not affected";
    auto r = refusals();
    ASSERT_EQ(r.size(), 1u);
    EXPECT_EQ(r[0], std::make_pair(kHostile, std::string("connections_per_sandbox")));

    // Giving a connection back gives the slot back.
    idle.pop_back();
    ASSERT_TRUE(wait_for([&] { return gw_->connections_of(kHostile) == 3; }));
    EXPECT_EQ(post_status(kHostile, kChat), 200);
}

TEST_P(HostileGatewayTest, TotalConnectionCapIsReportedAsSuch) {
    GatewayOptions o;
    o.max_connections_total = 3;
    start(o);
    auto idle = hold(kHostile, 3);
    auto late = connect(kVictim);
    EXPECT_TRUE(closed_within(late, 2s));
    EXPECT_EQ(gw_->stats().refused_total_connections.load(), 1u);
    ASSERT_EQ(refusals().size(), 1u);
    EXPECT_EQ(refusals()[0].second, "connections_total");
}

// Connections opened and closed from many client threads at once while the
// gateway serves them on its io threads: the per-sandbox cap is never passed,
// every attempt is either admitted or refused, and every slot comes back.
TEST_P(HostileGatewayTest, ConnectionCapHoldsUnderConcurrentChurn) {
    constexpr int kCap = 4, kClients = 8, kRounds = 25;
    GatewayOptions o;
    o.max_connections_per_sandbox = kCap;
    start(o);
    std::atomic<bool> done{false};
    std::atomic<std::uint64_t> worst{0};
    std::thread monitor([&] {
        while (!done) {
            const auto n = gw_->connections_of(kHostile);
            if (n > worst) worst = n;
            std::this_thread::yield();
        }
    });
    std::atomic<int> served{0};
    std::vector<std::thread> clients;
    for (int c = 0; c < kClients; ++c)
        clients.emplace_back([&] {
            for (int r = 0; r < kRounds; ++r) {
                try {
                    auto s = connect(kHostile);
                    if (exchange(s, request(kChat)).result_int() == 200) ++served;
                } catch (const std::exception&) {
                    // refused: closed before the answer
                }
            }
        });
    for (auto& t : clients) t.join();
    ASSERT_TRUE(wait_for([&] { return gw_->connections() == 0; }, 5s)) << gw_->connections();
    done = true;
    monitor.join();
    EXPECT_LE(worst.load(), static_cast<std::uint64_t>(kCap));
    const auto& st = gw_->stats();
    EXPECT_EQ(st.connections_accepted + st.refused_sandbox_connections, std::uint64_t{kClients * kRounds});
    EXPECT_EQ(static_cast<std::uint64_t>(served.load()), st.connections_accepted.load());
    EXPECT_GT(served.load(), 0);
    EXPECT_EQ(post_status(kVictim, kChat), 200) << "another sandbox is still served";
}

TEST_P(HostileGatewayTest, RefusalRecordsAreThrottledPerSandbox) {
    GatewayOptions o;
    o.max_connections_per_sandbox = 1;
    start(o);
    auto held = connect(kHostile);
    ASSERT_TRUE(wait_for([&] { return gw_->connections_of(kHostile) == 1; }));
    for (int i = 0; i < 50; ++i) {
        auto s = connect(kHostile);
        closed_within(s, 1s);
    }
    EXPECT_EQ(gw_->stats().refused_sandbox_connections.load(), 50u);
    EXPECT_LE(refusals().size(), 3u) << "50 refusals within a second give one record (plus one per second)";
}

TEST_P(HostileGatewayTest, BodyBudgetRefusesTheSandboxHoldingTooMuch) {
    GatewayOptions o;
    o.body_bytes_per_sandbox = 1000;
    start(o);
    // A request whose 800-byte body never comes holds 800 bytes of room.
    auto slow = connect(kHostile);
    asio::write(slow, asio::buffer(std::string("POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\n"
                                               "Content-Length: 800\r\n\r\n{")));
    std::this_thread::sleep_for(100ms);
    auto s = connect(kHostile);
    auto res = exchange(s, request(std::string(R"({"pad":")") + std::string(400, 'x') + "\"}"));
    EXPECT_EQ(res.result_int(), 503);
    EXPECT_EQ(res[http::field::retry_after], "1");
    EXPECT_NE(res.body().find("request bodies in flight would pass 1000 bytes"), std::string::npos) << res.body();
    EXPECT_EQ(gw_->stats().refused_body_budget.load(), 1u);
    EXPECT_EQ(post_status(kVictim, std::string(R"({"pad":")") + std::string(400, 'x') + "\"}"), 200);
    // The room comes back with the request.
    slow.close();
    ASSERT_TRUE(wait_for([&] {
        return post_status(kHostile, std::string(R"({"pad":")") + std::string(400, 'x') + "\"}") == 200;
    }));
}

std::size_t rss_bytes() {
    std::ifstream f("/proc/self/statm");
    std::size_t pages = 0, resident = 0;
    f >> pages >> resident;
    return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

// Measured before: 20 requests with a 5 MB model grew the agent's RSS by
// ~150 MB and its audit log by 100 MB (the model was copied into every
// record). Now each record carries a clipped model, and no request keeps
// more than one rewritten copy of its body.
TEST_P(HostileGatewayTest, HugeModelStringsStayOutOfTheLogAndDoNotAccumulate) {
    GatewayOptions o;
    start(o);
    const std::string body =
        R"({"model":")" + std::string(5 * 1024 * 1024, 'M') + R"(","messages":[{"role":"user","content":"hi"}]})";
    auto s = connect(kHostile);
    ASSERT_EQ(exchange(s, request(body)).result_int(), 200);  // warm up the allocator
    const auto before = rss_bytes();
    for (int i = 0; i < 20; ++i) ASSERT_EQ(exchange(s, request(body)).result_int(), 200);
    const auto grown = rss_bytes() > before ? rss_bytes() - before : 0;
#if !defined(__SANITIZE_ADDRESS__)
    // (ASan keeps freed memory in quarantine: RSS says nothing there.)
    EXPECT_LT(grown, 32u * 1024 * 1024) << "RSS grew by " << grown / 1024 << " KiB over 20 requests";
#endif

    ASSERT_TRUE(wait_for([&] { return logs().size() >= 21; }));
    std::size_t log_bytes = 0;
    for (const auto& l : logs()) {
        log_bytes += request_log_json(l).size();
        EXPECT_NE(l.model_requested.find("(truncated, 5242880 bytes)"), std::string::npos);
    }
    EXPECT_LT(log_bytes, 21u * 1024) << "the access records quote at most a clipped model";
    EXPECT_GE(gw_->stats().log_strings_truncated.load(), 21u);
}

// A sandbox filling its header with the most fields it can (the shortest
// lines Beast takes, thousands of them) or with one huge value, over and
// over on one keep-alive connection: the request arena's heap share stays
// within a fixed multiple of the header limit, is all given back after each
// request, and a header past the limit is refused (431) before any field
// is made.
TEST_P(HostileGatewayTest, HeaderFloodCannotGrowTheRequestArena) {
    GatewayOptions o;
    start(o);
    const std::size_t limit = o.header_limit;
    const auto& st = gw_->stats();
    auto head_with = [](const std::string& extra) {
        return "POST /v1/chat/completions HTTP/1.1\r\nHost: inference.local\r\nContent-Type: application/json\r\n" +
               extra + "Content-Length: " + std::to_string(kChat.size()) + "\r\n\r\n" + kChat;
    };
    std::string tiny;  // "a0:\r\n"-style lines up to just under the limit
    for (int i = 0; tiny.size() + 200 < limit; ++i) tiny += "a" + std::to_string(i % 100) + ":\r\n";
    const std::string huge = "X-Huge: " + std::string(limit - 300, 'h') + "\r\n";

    auto s = connect(kHostile);
    for (int round = 0; round < 5; ++round) {
        for (const std::string* extra : std::initializer_list<const std::string*>{&tiny, &huge}) {
            const auto req = head_with(*extra);
            ASSERT_LE(req.size() - kChat.size(), limit);
            auto res = exchange(s, req);
            ASSERT_EQ(res.result_int(), 200) << "round " << round << ": " << res.body();
            // The arena is emptied once the answer is out (polled: the
            // session does it right after its last write).
            ASSERT_TRUE(wait_for([&] { return st.arena_heap_bytes.load() == 0; }))
                << "round " << round << ": " << st.arena_heap_bytes.load() << " bytes still held";
        }
    }
    const auto peak = st.arena_heap_peak.load();
    EXPECT_GT(peak, 0u) << "thousands of fields do not fit the inline arena: the flood must have reached the heap";
    EXPECT_LE(peak, 24 * limit) << "one request's fields took " << peak << " heap bytes for a " << limit
                                << "-byte header";

    // Past the limit: 431, no field made, nothing held.
    auto over = connect(kHostile);
    const auto res = exchange(over, head_with(tiny + tiny));
    EXPECT_EQ(res.result_int(), 431);
    EXPECT_TRUE(wait_for([&] { return st.arena_heap_bytes.load() == 0; }));
    EXPECT_EQ(st.arena_heap_peak.load(), peak);
    EXPECT_EQ(post_status(kVictim, kChat), 200) << "another sandbox is still served";
}

// A connection keeps its last request body's buffer for the next one, but
// not a large one: sandboxes that each send a huge body and then idle keep
// no more than the cap per connection (the gateway's kBodyKept, 16 KiB).
TEST_P(HostileGatewayTest, IdleConnectionsDoNotKeepTheirLargeBodies) {
    GatewayOptions o;
    start(o);
    const auto& st = gw_->stats();
    constexpr std::uint64_t kKept = 16 * 1024;
    const std::string small = kChat;
    const std::string huge = kChat + std::string(512 * 1024, ' ');  // JSON whitespace: still a valid request

    // A usual body is kept: its buffer serves the next request.
    auto usual = connect(kHostile);
    ASSERT_EQ(exchange(usual, request(small)).result_int(), 200);
    ASSERT_TRUE(wait_for([&] { return st.body_buffer_bytes.load() > 0; })) << "a small body's buffer is kept";
    const auto one = st.body_buffer_bytes.load();
    EXPECT_LE(one, kKept);

    // Twenty connections each send a small body, then a huge one, and idle.
    constexpr std::uint64_t kConns = 20;
    std::vector<tcp::socket> idle;
    for (std::uint64_t i = 0; i < kConns; ++i) {
        idle.push_back(connect(kHostile));
        ASSERT_EQ(exchange(idle.back(), request(small)).result_int(), 200);
        ASSERT_EQ(exchange(idle.back(), request(huge)).result_int(), 200) << "connection " << i;
    }
    // The huge bodies were given back: each idle connection holds nothing
    // for its next body (its small buffer was lent to the huge one).
    EXPECT_TRUE(wait_for([&] { return st.body_buffer_bytes.load() == one; }))
        << st.body_buffer_bytes.load() << " bytes kept by " << kConns + 1 << " connections";
    EXPECT_LE(st.body_buffer_bytes.load(), (kConns + 1) * kKept);

    // The same connection, small again: kept again; closed: nothing kept.
    ASSERT_EQ(exchange(idle.front(), request(small)).result_int(), 200);
    EXPECT_TRUE(wait_for([&] { return st.body_buffer_bytes.load() > one; }));
    idle.clear();
    usual.close();
    EXPECT_TRUE(wait_for([&] { return st.body_buffer_bytes.load() == 0; }))
        << st.body_buffer_bytes.load() << " bytes kept after every connection closed";
    EXPECT_EQ(post_status(kVictim, kChat), 200) << "another sandbox is still served";
}

// A provider that accepts and then says nothing: the request stays in flight
// in the TLS handshake with it.
struct SilentProvider {
    explicit SilentProvider(asio::io_context& io) : acceptor(io, {kLoopback, 0}) { loop(); }
    void loop() {
        acceptor.async_accept([this](beast::error_code ec, tcp::socket s) {
            if (ec) return;
            held.push_back(std::move(s));
            loop();
        });
    }
    tcp::acceptor acceptor;
    std::vector<tcp::socket> held;
};

TEST_P(HostileGatewayTest, GatewayDestroyedWithRequestsInFlight) {
    test::TestCa ca;
    std::ofstream(dir_ + "/ca.pem") << ca.cert_pem();
    asio::io_context prov_io;
    SilentProvider prov(prov_io);
    std::thread prov_thread([&] { prov_io.run(); });
    store_->create_provider(Provider{"slow", "openai", "https://127.0.0.1:" + std::to_string(prov.acceptor.local_endpoint().port()) + "/v1",
                                     dir_ + "/ca.pem", {{"OPENAI_API_KEY", "sk-x"}}});
    store_->set_inference("slow", "served");
    GatewayOptions o;
    start(o);

    // One request waiting on the provider, one with half a body, one idle.
    auto waiting = connect(kHostile);
    asio::write(waiting, asio::buffer(request(kChat)));
    auto half = connect(kHostile);
    asio::write(half, asio::buffer(std::string("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                                               "Content-Length: 100\r\n\r\n{\"a\":")));
    auto idle = connect(kVictim);
    ASSERT_TRUE(wait_for([&] { return gw_->connections() == 3; }));
    ASSERT_TRUE(wait_for([&] { return !prov.held.empty(); }));  // the provider call is in flight

    // Destroyed from the io thread, as the agent would.
    std::promise<void> gone;
    asio::post(io_, [&] {
        gw_.reset();
        gone.set_value();
    });
    gone.get_future().wait();

    // Every session ends by itself and nothing it touches was freed (ASan):
    // the sandbox hanging up still stops the provider call.
    waiting.close();
    half.close();
    idle.close();
    prov_io.stop();
    prov_thread.join();
    ASSERT_FALSE(prov.held.empty());
    EXPECT_TRUE(closed_within(prov.held.front(), 3s)) << "the provider call outlived its sandbox connection";
    stop_io();
}

INSTANTIATE_TEST_SUITE_P(CallersThread, HostileGatewayTest, ::testing::Values(0));
INSTANTIATE_TEST_SUITE_P(OwnThreads, HostileGatewayTest, ::testing::Values(2));

}  // namespace
}  // namespace redir::terminator
