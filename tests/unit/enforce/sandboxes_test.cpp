// Attach, detach and policy flip of sandboxes, and their rollback at every
// failure point, over the in-memory datapath (no root).
#include "fixture.hpp"

namespace redir::enforce::test {
namespace {

TEST_F(SandboxesTest, AttachPutsTheSandboxInEveryPlace) {
    auto& sb = sbx->attach(cg("/cg/a"), policy_ref("web", 7, true));
    EXPECT_EQ(sb.cgroup_path, "/cg/a");
    expect_attached(101, 7);
    EXPECT_TRUE(kernel.attach.at(101).flags & REDIR_ATTACH_F_INFERENCE);
    EXPECT_EQ(records.at(0).policy, "web");
}

// One failure point: its name and how to arm the fakes for it.
struct Failure {
    const char* name;
    std::function<void(SandboxesTest&)> arm;
    friend void PrintTo(const Failure& f, std::ostream* os) { *os << f.name; }
};
std::string failure_name(const ::testing::TestParamInfo<Failure>& info) { return info.param.name; }

// Each failure point of attach: afterwards nothing of the new sandbox is
// anywhere, and a sandbox attached before is untouched.
class AttachRollback : public SandboxesTest, public ::testing::WithParamInterface<Failure> {};

TEST_P(AttachRollback, LeavesNothingBehindAndTheOthersIntact) {
    sbx->attach(cg("/cg/b"), policy_ref("other", 3));
    auto before = records;
    GetParam().arm(*this);
    EXPECT_THROW(sbx->attach(cg("/cg/a"), policy_ref("web", 7)), Error);
    expect_gone(101);
    EXPECT_EQ(records.size(), before.size());
    expect_attached(102, 3);
    // And the cgroup can be attached once the fault is gone.
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    expect_attached(101, 7);
}

INSTANTIATE_TEST_SUITE_P(
    EachStep, AttachRollback,
    ::testing::Values(Failure{"DnsResponder", [](SandboxesTest& t) { t.dns->fail_at("add"); }},
                      Failure{"AttachEntry", [](SandboxesTest& t) { t.dp->fail_at("attach"); }},
                      Failure{"FirstLink", [](SandboxesTest& t) { t.dp->fail_at("attach_link", 1); }},
                      Failure{"LastLink",
                                    [](SandboxesTest& t) {
                                        t.dp->fail_at("attach_link",
                                                      static_cast<int>(loader::FakeDatapath::program_names().size()));
                                    }},
                      Failure{"StateFile", [](SandboxesTest& t) { t.save_failures_armed = 1; }}),
    failure_name);

// A sandbox in its own network namespace gets the node-side guard on its
// link; if the guard cannot be attached, nothing of the sandbox stays (its
// packets would otherwise leave unjudged), and detach takes the guard too.
RedirectTarget own_netns_target(uint32_t guard_ifindex) {
    RedirectTarget t;
    t.netns_cookie = 77;
    t.guard_ifindex = guard_ifindex;
    return t;
}

TEST_F(SandboxesTest, OwnNamespaceSandboxGetsTheGuardAndLosesItOnDetach) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7), own_netns_target(9));
    EXPECT_EQ(kernel.guards.at(9), 101u);
    EXPECT_TRUE(kernel.links.at(101).count("guard"));
    EXPECT_EQ(kernel.attach.at(101).guard_ifindex, 9u) << "a restarted agent finds the guard's interface here";
    sbx->detach(101, "/cg/a");
    EXPECT_TRUE(kernel.guards.empty());
    expect_gone(101);
}

TEST_F(SandboxesTest, GuardFailureRollsTheAttachBack) {
    dp->fail_at("attach_guard");
    EXPECT_THROW(sbx->attach(cg("/cg/a"), policy_ref("web", 7), own_netns_target(9)), Error);
    expect_gone(101);
    EXPECT_TRUE(kernel.guards.empty());
    EXPECT_TRUE(records.empty());
}

TEST_F(SandboxesTest, AnInterfaceGuardsOneSandboxOnly) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7), own_netns_target(9));
    EXPECT_THROW(sbx->attach(cg("/cg/b"), policy_ref("web", 7), own_netns_target(9)), Error);
    expect_gone(102);
    EXPECT_EQ(kernel.guards.at(9), 101u);
}

// An attacker's second attach of a cgroup already attached (by a previous
// agent, with no record here) must not tear the existing enforcement down
// on its way out.
TEST_F(SandboxesTest, AttachOverAnExistingEntryFailsWithoutTouchingIt) {
    redir_attach_val v{};
    v.policy_id = 9;
    dp->attach(cg("/cg/a"), v);
    EXPECT_THROW(sbx->attach(cg("/cg/a"), policy_ref("web", 7)), Error);
    ASSERT_TRUE(kernel.attach.count(101));
    EXPECT_EQ(kernel.attach.at(101).policy_id, 9u);
    EXPECT_EQ(links_of(101), loader::FakeDatapath::program_names().size());
    EXPECT_FALSE(dns->live.count(101));
}

TEST_F(SandboxesTest, DetachRemovesTheSandboxFromEveryPlace) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    sbx->attach(cg("/cg/b"), policy_ref("web", 7));
    kernel.dns_allow[{101, "x"}] = {redir_dns_allow_key{101, {}}, redir_dns_allow_val{7, 1, 0}};
    EXPECT_EQ(sbx->detach(101, "/cg/a"), "/cg/a");
    expect_gone(101);
    EXPECT_EQ(kernel.admissions_of(101), 0u);
    expect_attached(102, 7);
}

TEST_F(SandboxesTest, DetachOfAGoneCgroupMatchesItsRecordedPath) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    EXPECT_EQ(sbx->detach(0, "/cg/a"), "/cg/a");
    expect_gone(101);
}

TEST_F(SandboxesTest, DetachOfSomethingNotAttachedChangesNothing) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    EXPECT_EQ(sbx->detach(102, "/cg/b"), std::nullopt);
    EXPECT_EQ(sbx->detach(0, "/cg/nowhere"), std::nullopt);
    expect_attached(101, 7);
}

TEST_F(SandboxesTest, DetachWhoseRecordCannotBeWrittenKeepsTheSandboxEnforced) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    save_failures_armed = 1;
    EXPECT_THROW(sbx->detach(101, "/cg/a"), Error);
    expect_attached(101, 7);
}

TEST_F(SandboxesTest, DetachWhoseLinksCannotBeRemovedLeavesAnOrphanToRetry) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    dp->fail_at("detach");
    EXPECT_THROW(sbx->detach(101, "/cg/a"), Error);
    EXPECT_FALSE(dns->live.count(101)) << "the responder of a detached sandbox still runs";
    EXPECT_TRUE(records.empty());
    EXPECT_EQ(sbx->orphans(), std::vector<uint64_t>{101});
    EXPECT_TRUE(sbx->encloses(101));
    ASSERT_TRUE(kernel.attach.count(101)) << "still enforced while the links are there";
    EXPECT_EQ(sbx->detach(101, "/cg/a"), "/cg/a");
    expect_gone(101);
}

TEST_F(SandboxesTest, ReloadFlipsEverySandboxOfThatPolicyAndNoOther) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    sbx->attach(cg("/cg/b"), policy_ref("web", 7));
    sbx->attach(cg("/cg/c"), policy_ref("other", 3));
    std::vector<uint64_t> flipped;
    auto after = [&](const Sandbox& sb) {
        EXPECT_EQ(kernel.attach.at(sb.cgroup_id).policy_id, 8u) << "called before the flip";
        flipped.push_back(sb.cgroup_id);
    };
    EXPECT_EQ(sbx->reload(policy_ref("web", 8, true), policy_ref("web", 7), after), 2u);
    EXPECT_EQ(flipped, (std::vector<uint64_t>{101, 102}));
    expect_attached(101, 8);
    expect_attached(102, 8);
    expect_attached(103, 3);
    EXPECT_TRUE(kernel.attach.at(101).flags & REDIR_ATTACH_F_INFERENCE);
    EXPECT_FALSE(kernel.attach.at(103).flags & REDIR_ATTACH_F_INFERENCE);
}

// A failure at any sandbox's map update or DNS re-check puts every sandbox
// of the policy back on the old id: never half the sandboxes on each.
class ReloadRollback : public SandboxesTest, public ::testing::WithParamInterface<Failure> {};

TEST_P(ReloadRollback, EverySandboxBackOnTheOldPolicy) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    sbx->attach(cg("/cg/b"), policy_ref("web", 7));
    sbx->attach(cg("/cg/c"), policy_ref("web", 7));
    GetParam().arm(*this);
    EXPECT_THROW(sbx->reload(policy_ref("web", 8, true), policy_ref("web", 7)), Error);
    for (uint64_t id : {101, 102, 103}) {
        expect_attached(id, 7);
        EXPECT_FALSE(kernel.attach.at(id).flags & REDIR_ATTACH_F_INFERENCE);
    }
}

INSTANTIATE_TEST_SUITE_P(
    EachStep, ReloadRollback,
    ::testing::Values(Failure{"FirstMapUpdate", [](SandboxesTest& t) { t.dp->fail_at("set_attachment", 1); }},
                      Failure{"LastMapUpdate", [](SandboxesTest& t) { t.dp->fail_at("set_attachment", 3); }},
                      Failure{"FirstDnsRecheck", [](SandboxesTest& t) { t.dns->fail_at("update", 1); }},
                      Failure{"LastDnsRecheck", [](SandboxesTest& t) { t.dns->fail_at("update", 3); }}),
    failure_name);

}  // namespace
}  // namespace redir::enforce::test
