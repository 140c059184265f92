// The inference limiter as tables: window edges, retry-after values, what a
// refused request costs (nothing), per-sandbox separation, the token estimate
// for answers without usage, and the counters surviving a save and a load.
#include <gtest/gtest.h>

#include "common/error.hpp"
#include "terminator/inference_limits.hpp"

namespace redir::terminator {
namespace {

constexpr int64_t kT0 = 1'699'999'980'000;  // a whole minute (so a whole second)
constexpr int64_t kSec = 1000;

TEST(SlidingSum, AnAmountCountsUntilItsBucketEndIsAWindowOld) {
    struct Case {
        int64_t added_at, asked_at;
        uint64_t expect;
    };
    // Buckets of 1 s, window 60 s: added at T0+0.5 s (bucket T0..T0+1 s) counts while now < T0+61 s.
    const Case cases[] = {
        {kT0 + 500, kT0 + 500, 1},       {kT0 + 500, kT0 + 59'999, 1},  {kT0 + 500, kT0 + 60'999, 1},
        {kT0 + 500, kT0 + 61'000, 0},    {kT0 + 999, kT0 + 60'999, 1},  {kT0, kT0 + 61'000, 0},
        {kT0 + 500, kT0 - 10'000, 1},  // a clock that went back still counts it (never undercounts)
    };
    for (const auto& c : cases) {
        SlidingSum s(kSec, 60 * kSec);
        s.add(c.added_at, 1);
        EXPECT_EQ(s.total(c.asked_at), c.expect) << "added " << c.added_at - kT0 << " asked " << c.asked_at - kT0;
    }
}

TEST(SlidingSum, WaitIsUntilEnoughOfTheOldestBucketsLeave) {
    SlidingSum s(kSec, 60 * kSec);
    s.add(kT0 + 100, 2);     // leaves at T0+61 s
    s.add(kT0 + 10'100, 1);  // leaves at T0+71 s
    s.add(kT0 + 20'100, 3);  // leaves at T0+81 s
    struct Case {
        uint64_t limit;
        int64_t now, expect_ms;
    };
    const Case cases[] = {
        {7, kT0 + 30'000, 0},                       // 6 < 7: no wait
        {6, kT0 + 30'000, 61'000 - 30'000},         // the first bucket (2) must go
        {5, kT0 + 30'000, 61'000 - 30'000},         // 4 < 5 once it has
        {4, kT0 + 30'000, 71'000 - 30'000},         // 4 is not below 4: the second goes too
        {1, kT0 + 30'000, 81'000 - 30'000},         // all of it
        {6, kT0 + 60'999, 1},                       // one millisecond before the edge
        {6, kT0 + 61'000, 0},                       // at the edge
    };
    for (const auto& c : cases)
        EXPECT_EQ(s.ms_until_below(c.now, c.limit), c.expect_ms) << "limit " << c.limit << " now " << c.now - kT0;
}

TEST(InferenceLimiter, RequestsPerMinuteAdmitsUpToTheCapThenTellsWhenToComeBack) {
    InferenceLimiter l;
    const InferenceLimits lim{3, 0};
    EXPECT_FALSE(l.admit(1, lim, kT0 + 200));
    EXPECT_FALSE(l.admit(1, lim, kT0 + 20'000));
    EXPECT_FALSE(l.admit(1, lim, kT0 + 40'000));
    struct Case {
        int64_t at;
        bool refused;
        uint64_t retry_after;
    };
    // The first request's bucket (T0..T0+1 s) leaves at T0+61 s.
    const Case cases[] = {
        {kT0 + 40'500, true, 21},  // 20.5 s rounds up
        {kT0 + 59'000, true, 2},
        {kT0 + 60'001, true, 1},   // 0.999 s: at least 1
        {kT0 + 61'000, false, 0},  // admitted (and counted: 3 again)
        {kT0 + 61'001, true, 20},  // now the T0+20 s one must leave (T0+81 s)
    };
    for (const auto& c : cases) {
        auto r = l.admit(1, lim, c.at);
        ASSERT_EQ(r.has_value(), c.refused) << "at " << c.at - kT0;
        if (!r) continue;
        EXPECT_EQ(r->limit, "requests_per_minute");
        EXPECT_EQ(r->cap, 3u);
        EXPECT_EQ(r->used, 3u);
        EXPECT_EQ(r->retry_after_s, c.retry_after) << "at " << c.at - kT0;
    }
}

TEST(InferenceLimiter, ARefusedRequestCostsNothingSoRetriesDoNotExtendTheWait) {
    InferenceLimiter l;
    const InferenceLimits lim{1, 0};
    ASSERT_FALSE(l.admit(1, lim, kT0));
    for (int i = 0; i < 1000; i++) ASSERT_TRUE(l.admit(1, lim, kT0 + 1 + i));  // a storm of retries
    EXPECT_EQ(l.requests_in_window(1, kT0 + 2000), 1u);
    EXPECT_FALSE(l.admit(1, lim, kT0 + 61'000));
}

TEST(InferenceLimiter, SandboxesAreCountedApart) {
    InferenceLimiter l;
    const InferenceLimits lim{1, 100};
    ASSERT_FALSE(l.admit(1, lim, kT0));
    EXPECT_TRUE(l.admit(1, lim, kT0 + 1));
    EXPECT_FALSE(l.admit(2, lim, kT0 + 1));
    l.charge_tokens(2, 500, kT0 + 2);
    EXPECT_EQ(l.tokens_in_window(1, kT0 + 3), 0u);
    EXPECT_EQ(l.tokens_in_window(2, kT0 + 3), 500u);
}

TEST(InferenceLimiter, TokensPerDayRefusesOnceTheDayIsSpentUntilItsOldestMinuteLeaves) {
    InferenceLimiter l;
    const InferenceLimits lim{0, 1000};
    const int64_t t = kT0 + 30'000;  // in the minute bucket T0..T0+60 s, which leaves at T0+24h+60 s
    ASSERT_FALSE(l.admit(1, lim, t));
    l.charge_tokens(1, 600, t);
    ASSERT_FALSE(l.admit(1, lim, t + 1000));  // 600 < 1000: admitted (a request may overshoot the day)
    l.charge_tokens(1, 700, kT0 + 3'600'000);  // an hour later: 1300
    auto r = l.admit(1, lim, kT0 + 3'600'001);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->limit, "tokens_per_day");
    EXPECT_EQ(r->used, 1300u);
    // 700 alone is below 1000: only the first minute must leave.
    EXPECT_EQ(r->retry_after_s, static_cast<uint64_t>((InferenceLimiter::kDayMs + 60'000 - 3'600'001 + 999) / 1000));
    EXPECT_TRUE(l.admit(1, lim, kT0 + InferenceLimiter::kDayMs + 59'999));
    EXPECT_FALSE(l.admit(1, lim, kT0 + InferenceLimiter::kDayMs + 60'000));
}

TEST(InferenceLimiter, WhenBothLimitsAreOverTheLaterRetryAfterIsTold) {
    InferenceLimiter l;
    const InferenceLimits lim{1, 10};
    ASSERT_FALSE(l.admit(1, lim, kT0));
    l.charge_tokens(1, 50, kT0);
    auto r = l.admit(1, lim, kT0 + 1000);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->limit, "tokens_per_day");
    EXPECT_GT(r->retry_after_s, 86'000u);
    EXPECT_NE(r->message().find("10 tokens per day"), std::string::npos) << r->message();
    EXPECT_NE(r->message().find("\"limits\""), std::string::npos) << r->message();
}

TEST(InferenceLimiter, NoLimitAdmitsEverythingButStillCountsTheDay) {
    InferenceLimiter l;
    for (int i = 0; i < 100; i++) ASSERT_FALSE(l.admit(1, {}, kT0 + i));
    l.charge_tokens(1, 123, kT0);
    // A limit set later (policy reload) sees what the day already used.
    EXPECT_TRUE(l.admit(1, {0, 100}, kT0 + 1000));
}

TEST(InferenceLimiter, CountersSurviveASaveAndALoad) {
    InferenceLimiter before;
    const InferenceLimits lim{2, 1000};
    ASSERT_FALSE(before.admit(7, lim, kT0));
    ASSERT_FALSE(before.admit(7, lim, kT0 + 5000));
    before.charge_tokens(7, 1200, kT0 + 5000);
    ASSERT_FALSE(before.admit(8, lim, kT0));
    EXPECT_TRUE(before.dirty());
    const std::string saved = before.to_json(kT0 + 6000);
    EXPECT_FALSE(before.dirty());

    InferenceLimiter after;
    after.load_json(saved);
    EXPECT_EQ(after.requests_in_window(7, kT0 + 6000), 2u);
    EXPECT_EQ(after.tokens_in_window(7, kT0 + 6000), 1200u);
    auto r = after.admit(7, lim, kT0 + 6000);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->limit, "tokens_per_day");
    // What no longer counts is not saved: sandbox 8's request is gone a minute later.
    InferenceLimiter later;
    later.load_json(after.to_json(kT0 + 61'000));
    EXPECT_EQ(later.requests_in_window(8, kT0 + 61'000), 0u);
    EXPECT_EQ(later.tokens_in_window(7, kT0 + 61'000), 1200u);
    EXPECT_EQ(later.to_json(kT0 + InferenceLimiter::kDayMs + 60'000), R"({"version":1,"sandboxes":{}})");
}

TEST(InferenceLimiter, AMalformedStateFileIsRefusedNamingWhatIsWrong) {
    const char* bad[] = {
        "", "[]", R"({"version":1})", R"({"sandboxes":{"x":{}}})", R"({"sandboxes":{"1":{"requests":{}}}})",
        R"({"sandboxes":{"1":{"tokens":[[1]]}}})", R"({"sandboxes":{"1":{"tokens":[[-1,2]]}}})",
    };
    for (const char* b : bad) {
        InferenceLimiter l;
        EXPECT_THROW(l.load_json(b), Error) << b;
    }
}

TEST(LimitExceeded, RetryAfterAlwaysAndNoRetryWhenTheWaitIsLongerThanSdksWait) {
    using H = std::vector<std::pair<std::string, std::string>>;
    EXPECT_EQ((LimitExceeded{"requests_per_minute", 1, 1, 1}.headers()), (H{{"retry-after", "1"}}));
    EXPECT_EQ((LimitExceeded{"requests_per_minute", 1, 1, 59}.headers()), (H{{"retry-after", "59"}}));
    EXPECT_EQ((LimitExceeded{"requests_per_minute", 1, 1, 60}.headers()),
              (H{{"retry-after", "60"}, {"x-should-retry", "false"}}));
    EXPECT_EQ((LimitExceeded{"tokens_per_day", 1, 1, 86'000}.headers()),
              (H{{"retry-after", "86000"}, {"x-should-retry", "false"}}));
}

TEST(TokensToCharge, ReportedUsageElseAnEstimateFromTheBytes) {
    EXPECT_EQ(tokens_to_charge(10, 20, true, 4000, 4000), 30u);
    EXPECT_EQ(tokens_to_charge(0, 0, true, 4000, 4000), 0u);  // the provider said zero: zero
    EXPECT_EQ(tokens_to_charge(0, 0, false, 4000, 4001), 1000u + 1001u);
    EXPECT_EQ(tokens_to_charge(0, 0, false, 0, 0), 0u);
}

}  // namespace
}  // namespace redir::terminator
