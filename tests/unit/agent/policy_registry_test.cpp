// The agent's policy registry over the in-memory datapath: ids that never go
// backwards (across restarts and above what the maps hold), nothing left
// half-written by a rejected file or a failing kernel write, and garbage
// collection of ids no loaded policy holds.
#include <gtest/gtest.h>

#include "agent/policy_registry.hpp"
#include "loader/fake_datapath.hpp"
#include "loopback.hpp"

namespace redir::agent {
namespace {

// Policy NAME allowing ALLOW (the "allow" array's JSON).
StoredPolicy policy(const std::string& name, const std::string& allow = R"([{"cidr":"203.0.113.0/24","ports":[443]}])") {
    return {name, R"({"version":1,"name":")" + name + R"(","allow":)" + allow + "}", name + ".json"};
}

class PolicyRegistryTest : public ::testing::Test {
protected:
    redir::test::ScratchDir dir_{"redir-policy-registry"};
    loader::FakeKernel kernel_;
    loader::FakeDatapath dp_{kernel_};
    StateStore store_{dir_.path()};
};

TEST_F(PolicyRegistryTest, InstallWritesUnderAFreshIdAndPutLoadsIt) {
    PolicyRegistry reg(dp_, store_);
    reg.resume_ids();
    auto a = reg.install(policy("a"));
    auto b = reg.install(policy("b"));
    EXPECT_LT(a.id, b.id);
    EXPECT_GT(kernel_.policy_entries(a.id), 0u);
    EXPECT_EQ(a.info.name, "a");
    EXPECT_EQ(reg.find("a"), nullptr) << "installed is not yet loaded";
    reg.put("a", a);
    ASSERT_NE(reg.find("a"), nullptr);
    EXPECT_EQ(reg.find("a")->id, a.id);
    EXPECT_EQ(reg.name_of(a.id), "a");
    EXPECT_EQ(reg.name_of(b.id), "");
    EXPECT_EQ(reg.size(), 1u);
    reg.erase("a");
    EXPECT_EQ(reg.find("a"), nullptr);
}

TEST_F(PolicyRegistryTest, IdsContinueAcrossARestart) {
    uint32_t last = 0;
    {
        PolicyRegistry reg(dp_, store_);
        reg.resume_ids();
        reg.install(policy("a"));
        last = reg.install(policy("b")).id;
    }
    PolicyRegistry again(dp_, store_);
    again.resume_ids();
    EXPECT_GT(again.install(policy("a")).id, last);
}

// A state directory that lost its counter (or an older one) must not reuse
// an id whose entries are still in the pinned maps.
TEST_F(PolicyRegistryTest, IdsStartAboveEveryIdTheMapsHold) {
    uint32_t in_maps = 0;
    {
        PolicyRegistry reg(dp_, store_);
        reg.resume_ids();
        for (int i = 0; i < 5; ++i) in_maps = reg.install(policy("p" + std::to_string(i))).id;
    }
    redir::test::ScratchDir fresh{"redir-policy-registry-fresh"};
    StateStore empty(fresh.path());
    PolicyRegistry reg(dp_, empty);
    reg.resume_ids();
    auto p = reg.install(policy("q"));
    EXPECT_GT(p.id, in_maps);
    EXPECT_GT(kernel_.policy_entries(in_maps), 0u) << "the old entries are untouched";
}

TEST_F(PolicyRegistryTest, RejectedFileLeavesNothingBehind) {
    PolicyRegistry reg(dp_, store_);
    reg.resume_ids();
    EXPECT_THROW(reg.install(policy("bad", R"([{"cidr":"203.0.113.0/24","ports":[70000]}])")), PolicyRejected);
    EXPECT_TRUE(dp_.policy_ids().empty());
    EXPECT_EQ(reg.size(), 0u);
}

TEST_F(PolicyRegistryTest, KernelFailureMidWriteDeletesWhatWasWritten) {
    PolicyRegistry reg(dp_, store_);
    reg.resume_ids();
    dp_.fail_at("put_lpm", 2);
    EXPECT_THROW(reg.install(policy("two", R"([{"cidr":"203.0.113.0/24"},{"cidr":"198.51.100.0/24"}])")), Error);
    EXPECT_EQ(dp_.calls("put_lpm"), 2) << "the write failed half-way";
    EXPECT_TRUE(dp_.policy_ids().empty()) << "the first entry was removed again";
}

TEST_F(PolicyRegistryTest, GarbageCollectionKeepsOnlyLoadedIds) {
    PolicyRegistry reg(dp_, store_);
    reg.resume_ids();
    auto kept = reg.install(policy("kept"));
    reg.put("kept", kept);
    auto orphan = reg.install(policy("orphan"));  // an agent that died before the flip
    reg.collect_garbage();
    EXPECT_GT(kernel_.policy_entries(kept.id), 0u);
    EXPECT_EQ(kernel_.policy_entries(orphan.id), 0u);
}

}  // namespace
}  // namespace redir::agent
