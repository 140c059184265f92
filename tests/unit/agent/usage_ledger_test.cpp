// The usage ledger: counting per sandbox and route, tokens since a time,
// persistence across a restart, and one sandbox unable to touch another's counts.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>
#include <unistd.h>

#include "agent/usage_ledger.hpp"
#include "terminator/request.hpp"

namespace redir::agent {
namespace {

namespace fs = std::filesystem;

class UsageLedgerTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("usage-ledger-" + std::to_string(::getpid()) + "-" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
        path_ = (dir_ / "usage.json").string();
    }
    void TearDown() override { fs::remove_all(dir_); }

    static UsageRecord rec(std::uint64_t cg, int status, std::optional<std::uint64_t> in,
                           std::optional<std::uint64_t> out, std::int64_t at_ms, std::string route = "default") {
        UsageRecord r;
        r.cgroup_id = cg;
        r.route = std::move(route);
        r.status = status;
        r.input_tokens = in;
        r.output_tokens = out;
        r.at_ms = at_ms;
        return r;
    }
    static const UsageCounters* find(const std::vector<UsageRow>& rows, std::uint64_t cg, const std::string& route) {
        for (const auto& r : rows)
            if (r.cgroup_id == cg && r.route == route) return &r.counters;
        return nullptr;
    }

    fs::path dir_;
    std::string path_;
};

constexpr std::int64_t kT0 = 1'764'000'000'000;  // a wall-clock ms, minute-aligned below
constexpr std::int64_t kMin = 60'000;

TEST_F(UsageLedgerTest, CountsPerSandboxAndRoute) {
    UsageLedger l(path_);
    l.record(rec(1, 200, 10, 5, kT0));
    l.record(rec(1, 200, 3, std::nullopt, kT0 + 1));
    l.record(rec(1, 429, std::nullopt, std::nullopt, kT0 + 2));
    l.record(rec(1, 200, 7, 7, kT0 + 3, "big"));
    l.record(rec(2, 502, std::nullopt, std::nullopt, kT0 + 4));
    auto rows = l.rows();
    ASSERT_EQ(rows.size(), 3u);
    const auto* a = find(rows, 1, "default");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->requests, 3u);
    EXPECT_EQ(a->input_tokens, 13u);
    EXPECT_EQ(a->output_tokens, 5u);
    EXPECT_EQ(a->requests_without_usage, 1u);
    EXPECT_EQ(a->errors.at(429), 1u);
    EXPECT_EQ(a->last_request_ms, kT0 + 2);
    EXPECT_EQ(find(rows, 1, "big")->input_tokens, 7u);
    EXPECT_EQ(find(rows, 2, "default")->errors.at(502), 1u);
}

TEST_F(UsageLedgerTest, TokensSinceAtMinuteResolutionAcrossRoutes) {
    UsageLedger l(path_);
    const std::int64_t m0 = kT0 / kMin * kMin;
    l.record(rec(1, 200, 100, 0, m0 - 3 * 3600 * 1000));  // three hours ago
    l.record(rec(1, 200, 10, 5, m0 + 10));
    l.record(rec(1, 200, 1, 1, m0 + 2 * kMin, "other"));
    l.record(rec(2, 200, 1000, 1000, m0 + 10));
    EXPECT_EQ(l.tokens_since(1, m0 - 24 * 3600 * 1000), 117u);
    EXPECT_EQ(l.tokens_since(1, m0), 17u);
    EXPECT_EQ(l.tokens_since(1, m0 + 30'000), 17u) << "the minute holding SINCE counts whole";
    EXPECT_EQ(l.tokens_since(1, m0 + kMin), 2u);
    EXPECT_EQ(l.tokens_since(3, 0), 0u);
}

TEST_F(UsageLedgerTest, HookSeesEveryRecord) {
    UsageLedger l(path_);
    std::vector<std::uint64_t> seen;
    l.on_record([&](const UsageRecord& r) { seen.push_back(r.cgroup_id); });
    l.record(rec(5, 200, 1, 1, kT0));
    l.record(rec(6, 200, 1, 1, kT0));
    EXPECT_EQ(seen, (std::vector<std::uint64_t>{5, 6}));
}

TEST_F(UsageLedgerTest, FlushWritesOnlyChangesAndARestartReadsThemBack) {
    const std::int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
    {
        UsageLedger l(path_);
        EXPECT_FALSE(l.flush()) << "nothing to write";
        l.record(rec(1, 200, 10, 5, now));
        l.record(rec(1, 500, std::nullopt, std::nullopt, now));
        l.label(1, "/sys/fs/cgroup/sb \"one\"");
        EXPECT_TRUE(l.flush());
        EXPECT_FALSE(l.flush());
        l.record(rec(2, 200, 1, 2, now));
        // Not flushed: the destructor (SIGTERM) writes it.
    }
    UsageLedger again(path_);
    auto rows = again.rows();
    ASSERT_EQ(rows.size(), 2u);
    EXPECT_EQ(rows[0].cgroup, "/sys/fs/cgroup/sb \"one\"");
    EXPECT_EQ(rows[0].counters.requests, 2u);
    EXPECT_EQ(rows[0].counters.input_tokens, 10u);
    EXPECT_EQ(rows[0].counters.errors.at(500), 1u);
    EXPECT_EQ(rows[0].counters.last_request_ms, now);
    EXPECT_EQ(rows[1].counters.output_tokens, 2u);
    EXPECT_EQ(again.tokens_since(1, now - 1000), 15u) << "limits keep counting across restarts";
    struct stat st {};
    ASSERT_EQ(::stat(path_.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(UsageLedgerTest, ADamagedFileIsSetAsideNotFatal) {
    {
        std::ofstream f(path_);
        f << "{\"sandboxes\": [ {\"cgroup_id\": 1, ";
    }
    UsageLedger l(path_);
    EXPECT_TRUE(l.rows().empty());
    EXPECT_TRUE(fs::exists(path_ + ".damaged"));
}

// A sandbox whose provider stream reports absurd counts (the scanner drops
// counts over kMaxTokenCount; the ledger saturates whatever it is given)
// changes only its own row: another sandbox is neither inflated nor zeroed.
TEST_F(UsageLedgerTest, OneSandboxCannotInflateOrZeroAnother) {
    UsageLedger l(path_);
    l.record(rec(2, 200, 40, 2, kT0));
    for (int i = 0; i < 3; ++i) l.record(rec(1, 200, UINT64_MAX - 1, UINT64_MAX - 1, kT0));
    auto rows = l.rows();
    const auto* mine = find(rows, 1, "default");
    const auto* other = find(rows, 2, "default");
    EXPECT_EQ(mine->input_tokens, UINT64_MAX) << "saturates, never wraps back to a small number";
    EXPECT_EQ(l.tokens_since(1, 0), UINT64_MAX);
    EXPECT_EQ(other->input_tokens, 40u);
    EXPECT_EQ(other->output_tokens, 2u);
    EXPECT_EQ(l.tokens_since(2, 0), 42u);
}

TEST_F(UsageLedgerTest, ConcurrentRecordsAllCount) {
    UsageLedger l(path_);
    // Now, not kT0: a flush drops minutes older than the two days kept.
    const std::int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                                 std::chrono::system_clock::now().time_since_epoch())
                                 .count();
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&l, t, now] {
            for (int i = 0; i < 1000; ++i) l.record(rec(static_cast<std::uint64_t>(t % 2), 200, 1, 1, now));
        });
    std::thread flusher([&l] {
        for (int i = 0; i < 20; ++i) l.flush();
    });
    for (auto& t : ts) t.join();
    flusher.join();
    EXPECT_EQ(l.tokens_since(0, 0) + l.tokens_since(1, 0), 8000u);
    l.record(rec(3, 200, 5, 5, kT0));
    l.flush();
    EXPECT_EQ(l.tokens_since(3, 0), 0u) << "minutes older than two days are dropped at a flush";
}

TEST_F(UsageLedgerTest, RecordOfAnAccessLogLineAndMetrics) {
    terminator::RequestLog r;
    r.conn.cgroup_id = 77;
    r.status = 200;
    r.usage.input_tokens = 9;
    auto u = usage_record_of(r, kT0);
    EXPECT_EQ(u.cgroup_id, 77u);
    EXPECT_EQ(u.route, "default");
    EXPECT_EQ(u.input_tokens, std::optional<std::uint64_t>(9));
    EXPECT_FALSE(u.output_tokens);
    UsageLedger l(path_);
    l.record(u);
    l.record(rec(77, 429, std::nullopt, std::nullopt, kT0, "r\"x"));
    auto m = usage_metrics(l.rows());
    EXPECT_NE(m.find("redir_inference_input_tokens_total{cgroup_id=\"77\",route=\"default\"} 9\n"), std::string::npos) << m;
    EXPECT_NE(m.find("redir_inference_errors_total{cgroup_id=\"77\",route=\"r\\\"x\",status=\"429\"} 1\n"),
              std::string::npos)
        << m;
    EXPECT_NE(m.find("# TYPE redir_inference_requests_total counter"), std::string::npos);
}

}  // namespace
}  // namespace redir::agent
