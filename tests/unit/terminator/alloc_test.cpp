// Heap allocations of the per-request JSON work, counted with a replaced
// global operator new (its own binary: the count would be noise for the
// other tests). A usual request's rewrite and provider-fetch scan allocate
// only the body they return; the response usage scan allocates nothing.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>

#include "terminator/provider_fetch.hpp"
#include "terminator/request.hpp"
#include "terminator/usage.hpp"

namespace {
std::atomic<long> g_news{0};
}  // namespace

void* operator new(std::size_t n) {
    g_news.fetch_add(1, std::memory_order_relaxed);
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace redir::terminator {
namespace {

// Allocations made by F.
template <class F>
long allocations(F&& f) {
    const long before = g_news.load();
    f();
    return g_news.load() - before;
}

// bench/peers' request and a chat request six deep (content parts).
const std::string kSmall = R"({"model":"client-model","messages":[{"role":"user","content":"hi"}],"max_tokens":16})";
const std::string kParts =
    R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"look"},)"
    R"({"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":{"level":[1]}}}]}],"stream":true})";

TEST(RequestAllocations, RewriteAndFetchScanAllocateOnlyTheBody) {
    for (const std::string* body : {&kSmall, &kParts}) {
        const long n = allocations([&] {
            FetchScanner sc;
            auto rw = rewrite_model(*body, "served-model", kLogStringMax, true, &sc);
            ASSERT_TRUE(rw.ok) << rw.error;
            ASSERT_FALSE(sc.finding().has_value());
        });
        EXPECT_EQ(n, 1) << *body;
    }
}

// Deeper than the scanner's inline frames: it spills to the heap and still scans.
TEST(RequestAllocations, FetchScanDeeperThanItsInlineFramesStillFinds) {
    std::string deep = R"({"a":)";
    for (int i = 0; i < 40; ++i) deep += R"({"b":)";
    deep += R"({"mcp_servers":[]})";
    for (int i = 0; i < 40; ++i) deep += "}";
    deep += "}";
    FetchScanner sc;
    auto rw = rewrite_model(deep, "m", kLogStringMax, false, &sc);
    ASSERT_TRUE(rw.ok) << rw.error;
    ASSERT_TRUE(sc.finding().has_value());
    EXPECT_NE(sc.finding()->where.find("mcp_servers"), std::string::npos) << sc.finding()->where;
}

TEST(ResponseAllocations, UsageScanAllocatesNothing) {
    const std::string json =
        R"({"id":"x","choices":[{"message":{"content":"a \"quoted\" word"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}})";
    const std::string sse = "data: " + json + "\n\ndata: [DONE]\n\n";
    EXPECT_EQ(allocations([&] {
                  UsageTap tap(false);
                  tap.feed(json);
                  Usage u;
                  tap.finish(u);
                  ASSERT_EQ(u.input_tokens, 3u);
              }),
              0);
    EXPECT_EQ(allocations([&] {
                  UsageTap tap(true);
                  tap.feed(sse);
                  Usage u;
                  tap.finish(u);
                  ASSERT_EQ(u.output_tokens, 1u);
              }),
              0);
}

}  // namespace
}  // namespace redir::terminator
