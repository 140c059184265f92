// RequestArena: one request's fields come from the connection's buffer, go
// back all at once per request, and what it takes from the heap is capped.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "terminator/arena.hpp"

namespace redir::terminator {
namespace {

TEST(RequestArena, NoBufferUntilTheFirstRequest) {
    RequestArena a(4096, 1 << 20);
    EXPECT_FALSE(a.has_buffer());
    (void)a.alloc();
    EXPECT_TRUE(a.has_buffer());
}

// The inline buffer is reused from one request to the next: the second
// request's first allocation lands where the first one's did.
TEST(RequestArena, ResetGivesTheInlineBufferBackPerRequest) {
    RequestArena a(4096, 1 << 20);
    const void* first = nullptr;
    for (int request = 0; request < 3; ++request) {
        {
            std::pmr::string s(200, 'x', a.alloc());
            if (request == 0)
                first = s.data();
            else
                EXPECT_EQ(static_cast<const void*>(s.data()), first) << "request " << request;
            EXPECT_EQ(a.heap_bytes(), 0u);
        }
        a.reset();
    }
}

// Fields beyond the inline buffer come from the heap for that request only,
// and the gauge shared by every connection's arena follows.
TEST(RequestArena, HeapBeyondTheBufferIsGivenBackAtReset) {
    std::atomic<std::uint64_t> gauge{0};
    RequestArena a(1024, 1 << 20, &gauge);
    {
        std::pmr::vector<std::pmr::string> fields(a.alloc());
        for (int i = 0; i < 100; ++i) fields.emplace_back(100, 'v');
        EXPECT_GT(a.heap_bytes(), 0u);
        EXPECT_EQ(gauge.load(), a.heap_bytes());
    }
    const auto peak = a.heap_peak();
    EXPECT_GE(peak, 100u * 100u);
    a.reset();
    EXPECT_EQ(a.heap_bytes(), 0u);
    EXPECT_EQ(gauge.load(), 0u);
    EXPECT_EQ(a.heap_peak(), peak) << "the peak is kept for the stats";
}

// A request that asks for more than the cap fails with bad_alloc (the
// session ends) instead of growing the agent; the arena is usable after.
TEST(RequestArena, HeapBeyondTheCapIsRefused) {
    std::atomic<std::uint64_t> gauge{0};
    RequestArena a(1024, 64 * 1024, &gauge);
    EXPECT_THROW(
        {
            std::pmr::vector<std::pmr::string> fields(a.alloc());
            for (int i = 0; i < 10'000; ++i) fields.emplace_back(100, 'v');
        },
        std::bad_alloc);
    EXPECT_LE(a.heap_peak(), a.cap());
    a.reset();
    EXPECT_EQ(gauge.load(), 0u);
    std::pmr::string s(500, 'x', a.alloc());
    EXPECT_EQ(a.heap_bytes(), 0u);
}

// Many requests on one connection, each a little over the buffer: the heap
// taken never adds up across requests (a monotonic arena never frees on its
// own; reset is what bounds it).
TEST(RequestArena, ManyRequestsDoNotAccumulate) {
    RequestArena a(1024, 256 * 1024);
    for (int request = 0; request < 1000; ++request) {
        {
            std::pmr::vector<std::pmr::string> fields(a.alloc());
            for (int i = 0; i < 20; ++i) fields.emplace_back(100, 'v');
        }
        a.reset();
        ASSERT_EQ(a.heap_bytes(), 0u) << "request " << request;
    }
    EXPECT_LT(a.heap_peak(), 16u * 1024u);
}

}  // namespace
}  // namespace redir::terminator
