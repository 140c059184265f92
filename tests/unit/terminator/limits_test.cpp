// The socket-free fairness pieces: quotas, the refusal throttle, clip(), and
// the client text a hostile request can push into logs and errors.
#include <gtest/gtest.h>

#include <thread>

#include "terminator/limits.hpp"
#include "terminator/request.hpp"

namespace redir::terminator {
namespace {

using namespace std::chrono_literals;

TEST(Quota, CapsPerSandboxAndInTotalAndGivesBackOnRelease) {
    auto q = Quota::make({2, 3});
    Quota::Refusal why{};
    auto a1 = q->try_acquire(1, 1, &why);
    auto a2 = q->try_acquire(1, 1, &why);
    EXPECT_TRUE(a1 && a2);
    auto a3 = q->try_acquire(1, 1, &why);
    EXPECT_FALSE(a3);
    EXPECT_EQ(why, Quota::Refusal::Sandbox);
    auto b1 = q->try_acquire(2, 1, &why);
    EXPECT_TRUE(b1);
    auto b2 = q->try_acquire(2, 1, &why);  // sandbox 2 has room, the total has not
    EXPECT_FALSE(b2);
    EXPECT_EQ(why, Quota::Refusal::Total);
    EXPECT_EQ(q->in_use(1), 2u);
    EXPECT_EQ(q->total_in_use(), 3u);
    a1.release();
    EXPECT_EQ(q->in_use(1), 1u);
    EXPECT_TRUE(q->try_acquire(2, 1, &why));  // released again at once (temporary)
    { auto moved = std::move(a2); }
    EXPECT_EQ(q->in_use(1), 0u);
    EXPECT_EQ(q->total_in_use(), 1u);
}

TEST(Quota, AmountsAndNoCap) {
    auto q = Quota::make({1000, 0});
    auto t = q->try_acquire(7, 800);
    EXPECT_TRUE(t);
    EXPECT_FALSE(q->try_acquire(7, 201));
    EXPECT_TRUE(q->try_acquire(7, 200));
    auto unlimited = Quota::make({0, 0});
    EXPECT_TRUE(unlimited->try_acquire(1, ~0ull >> 1));
}

TEST(Quota, TicketOutlivesTheQuotaOwner) {
    Quota::Ticket t;
    {
        auto q = Quota::make({1, 1});
        t = q->try_acquire(1, 1);
    }
    EXPECT_TRUE(t);
    t.release();  // no use-after-free: the ticket holds the quota
}

TEST(RefusalThrottle, OneRecordPerSandboxPerIntervalWithTheCountLeftOut) {
    RefusalThrottle th(1000ms);
    auto t0 = RefusalThrottle::Clock::now();
    std::uint64_t sup = 99;
    EXPECT_TRUE(th.should_record(1, sup, t0));
    EXPECT_EQ(sup, 0u);
    for (int i = 0; i < 50; ++i) EXPECT_FALSE(th.should_record(1, sup, t0 + 10ms));
    EXPECT_TRUE(th.should_record(2, sup, t0 + 10ms));  // another sandbox is not held back
    EXPECT_TRUE(th.should_record(1, sup, t0 + 1001ms));
    EXPECT_EQ(sup, 50u);
}

TEST(Clip, KeepsShortStringsAndMarksCutOnes) {
    EXPECT_EQ(clip("gpt-4o", 256), "gpt-4o");
    std::string big(5 * 1024 * 1024, 'x');
    auto c = clip(big, 256);
    EXPECT_EQ(c.substr(0, 256), std::string(256, 'x'));
    EXPECT_EQ(c.substr(256), "\xE2\x80\xA6(truncated, 5242880 bytes)");
    // Never cuts a UTF-8 character in half.
    std::string accents;
    for (int i = 0; i < 200; ++i) accents += "\xC3\xA9";  // é
    auto a = clip(accents, 255);
    EXPECT_EQ(a.substr(0, 254), accents.substr(0, 254));
    EXPECT_EQ(a[254], '\xE2');
}

std::string huge_model_body(std::size_t n) {
    return R"({"model":")" + std::string(n, 'M') + R"(","messages":[{"role":"user","content":"hi"}]})";
}

TEST(HostileText, HugeModelIsRewrittenButOnlyAClippedCopyIsKept) {
    const std::size_t n = 5 * 1024 * 1024;
    auto r = rewrite_model(huge_model_body(n), "served", 256);
    ASSERT_TRUE(r.ok) << r.error;
    EXPECT_EQ(r.body, R"({"model":"served","messages":[{"role":"user","content":"hi"}]})");
    EXPECT_LT(r.body.capacity(), 64u * 1024);  // the dropped 5 MB are not held by the rewritten copy
    EXPECT_LE(r.model_requested.size(), 256u + 40);
    EXPECT_NE(r.model_requested.find("(truncated, 5242880 bytes)"), std::string::npos);
    EXPECT_TRUE(r.truncated);

    RequestLog log;
    log.model_requested = r.model_requested;
    EXPECT_LT(request_log_json(log).size(), 1024u);
}

TEST(HostileText, DuplicateHugeKeyErrorIsClipped) {
    std::string k(1024 * 1024, 'k');
    auto r = rewrite_model("{\"" + k + "\":1,\"" + k + "\":2}", "m", 256);
    ASSERT_FALSE(r.ok);
    EXPECT_LT(r.error.size(), 400u);
    EXPECT_NE(r.error.find("repeats the top-level key"), std::string::npos);
    EXPECT_NE(r.error.find("(truncated, 1048576 bytes)"), std::string::npos);
    EXPECT_TRUE(r.body.empty());
}

TEST(HostileText, HugePathAndMethodAreClippedInTheRefusal) {
    RequestHead h;
    std::string path = "/" + std::string(16000, 'p');
    std::string method(5000, 'X');
    h.method = method;
    h.target = path;
    h.host_count = 1;
    auto d = decide_route(h, 256);
    EXPECT_EQ(d.route_status, 404);
    EXPECT_LT(d.message.size(), 600u);
    EXPECT_NE(d.message.find("(truncated, 16001 bytes)"), std::string::npos);
    EXPECT_EQ(d.path, path);  // the full path stays available for routing
}

TEST(Route, FramingRefusalsComeBeforeRouting) {
    RequestHead h;
    h.method = "POST";
    h.target = "/v1/chat/completions";
    h.host_count = 1;
    auto ok = decide_route(h);
    EXPECT_EQ(ok.framing_status, 0);
    EXPECT_EQ(ok.route_status, 0);
    EXPECT_EQ(ok.endpoint, Endpoint::ChatCompletions);

    auto te = h;
    te.transfer_encoding_count = 1;
    te.transfer_encoding = "gzip, chunked";
    EXPECT_EQ(decide_route(te).framing_status, 400);
    te.transfer_encoding = " Chunked ";
    EXPECT_EQ(decide_route(te).framing_status, 0);
    auto host = h;
    host.host_count = 2;
    EXPECT_EQ(decide_route(host).framing_status, 400);
    host.version = 10;
    host.host_count = 0;
    EXPECT_EQ(decide_route(host).framing_status, 0);
    auto ex = h;
    ex.has_expect = true;
    ex.expect = "something-else";
    EXPECT_EQ(decide_route(ex).framing_status, 417);
    ex.expect = "100-continue";
    EXPECT_TRUE(decide_route(ex).expect_continue);

    auto get = h;
    get.method = "GET";
    auto d = decide_route(get);
    EXPECT_EQ(d.route_status, 405);
    ASSERT_EQ(d.headers.size(), 1u);
    EXPECT_EQ(d.headers[0].second, "POST");
    auto lower = h;
    lower.method = "post";  // methods are case-sensitive
    EXPECT_EQ(decide_route(lower).route_status, 405);
    auto bad = h;
    bad.target = "*";
    EXPECT_EQ(decide_route(bad).route_status, 400);
    auto anth = h;
    anth.target = "https://inference.local/v1/messages?beta=true";
    auto a = decide_route(anth);
    EXPECT_EQ(a.endpoint, Endpoint::Messages);
    EXPECT_EQ(a.shape, ApiShape::Anthropic);
    EXPECT_EQ(a.query, "beta=true");
}

TEST(Route, LintHeaderBytes) {
    std::size_t end = 0;
    EXPECT_EQ(lint_header("GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY", end), HeaderLint::Complete);
    EXPECT_EQ(end, 27u);
    EXPECT_EQ(lint_header("GET / HTTP/1.1\r\nHost: x\r\n", end), HeaderLint::Incomplete);
    EXPECT_EQ(lint_header("GET / HTTP/1.1\nHost: x\r\n\r\n", end), HeaderLint::BareLf);
    EXPECT_EQ(lint_header("GET / HTTP/1.1\r\nA: 1\r\n b\r\n\r\n", end), HeaderLint::ObsFold);
    EXPECT_EQ(lint_header("\n", end), HeaderLint::BareLf);
}

}  // namespace
}  // namespace redir::terminator
