// Restore after an agent crash at each step of attach, detach and reload:
// the state file says one thing, the pinned links and maps another, and the
// restarted agent must end enforcing (never open) with nothing stray.
#include "fixture.hpp"

namespace redir::enforce::test {
namespace {

class RestoreTest : public SandboxesTest {
protected:
    std::map<std::string, PolicyRef> policies = {{"web", policy_ref("web", 20)}};
    void restore_now() {
        auto recorded = records;
        sbx->restore(recorded, [&](const std::string& n) -> const PolicyRef* {
            auto it = policies.find(n);
            return it == policies.end() ? nullptr : &it->second;
        });
    }
    bool links_run_generation(uint64_t id, int gen) {
        for (auto& [name, g] : kernel.links[id])
            if (g != gen) return false;
        return true;
    }
};

TEST_F(RestoreTest, RecordedSandboxIsAdoptedUnderItsNewPolicyIdWithoutDetaching) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    kernel.dns_allow[{101, "x"}] = {redir_dns_allow_key{101, {}}, redir_dns_allow_val{7, 1, 0}};
    restart();
    EXPECT_TRUE(dp->calls("detach") == 0);
    restore_now();
    expect_attached(101, 20);
    EXPECT_TRUE(links_run_generation(101, 2)) << "links still run the dead agent's programs";
    // DNS admissions were re-keyed while the entry already held the new id
    // (and before the old id's entries could go).
    EXPECT_EQ(dns->adopted_under.at(101), 20u);
    EXPECT_TRUE(dns->finished);
    EXPECT_EQ(dp->calls("detach"), 0);
}

// Crash inside attach, after the DNS responder started: nothing in the
// kernel, no record. The restarted agent has nothing to restore.
TEST_F(RestoreTest, CrashAfterDnsResponderLeavesNothing) {
    restart();
    restore_now();
    EXPECT_TRUE(sbx->all().empty());
    EXPECT_TRUE(sbx->orphans().empty());
    EXPECT_TRUE(kernel.attach.empty());
}

// Crash between the attachment entry and the first link: an entry no
// program reads, no record. It would refuse the next attach; it goes.
TEST_F(RestoreTest, CrashAfterTheEntryBeforeAnyLinkRemovesTheEntry) {
    kernel.attach[101] = redir_attach_val{7, 0, 40000};
    restart();
    restore_now();
    EXPECT_FALSE(kernel.attach.count(101));
    EXPECT_TRUE(sbx->orphans().empty());
    sbx->attach(cg("/cg/a"), policy_ref("web", 20));
    expect_attached(101, 20);
}

// Crash after the links, before the record: the sandbox's processes already
// run under the programs. It stays enforced, denying everything, until the
// operator detaches it.
TEST_F(RestoreTest, CrashAfterTheLinksBeforeTheRecordDeniesEverythingUntilDetached) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    records.clear();  // the record never reached the disk
    restart();
    restore_now();
    ASSERT_EQ(sbx->orphans(), std::vector<uint64_t>{101});
    EXPECT_EQ(kernel.attach.at(101).policy_id, 0u);
    EXPECT_TRUE(sbx->encloses(101));
    EXPECT_EQ(links_of(101), loader::FakeDatapath::program_names().size());
    EXPECT_EQ(sbx->detach(101, "/cg/a"), "/cg/a");
    expect_gone(101);
}

// Crash inside detach after the record was forgotten: links remain, so the
// sandbox stays enforced (deny-all), not freed.
TEST_F(RestoreTest, CrashInDetachAfterTheRecordKeepsTheSandboxDenied) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    sbx->attach(cg("/cg/b"), policy_ref("web", 7));
    records.erase(records.begin());
    restart();
    restore_now();
    EXPECT_EQ(sbx->orphans(), std::vector<uint64_t>{101});
    EXPECT_EQ(kernel.attach.at(101).policy_id, 0u);
    expect_attached(102, 20);
}

// Crash inside detach after the links went but before the entry: only the
// entry is left, with no record: removed.
TEST_F(RestoreTest, CrashInDetachAfterTheLinksRemovesTheLeftoverEntry) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    records.clear();
    kernel.links.erase(101);
    restart();
    restore_now();
    EXPECT_FALSE(kernel.attach.count(101));
    EXPECT_TRUE(sbx->orphans().empty());
}

// Crash in the middle of a reload: some entries on the new id, some on the
// old. The restarted agent puts every sandbox on one fresh id.
TEST_F(RestoreTest, CrashMidReloadEndsWithEverySandboxOnOneId) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    sbx->attach(cg("/cg/b"), policy_ref("web", 7));
    kernel.attach[102].policy_id = 8;  // flipped before the crash
    restart();
    restore_now();
    expect_attached(101, 20);
    expect_attached(102, 20);
}

// A recorded policy that no longer loads: its sandboxes stay attached and
// deny everything (policy id 0), never run open.
TEST_F(RestoreTest, SandboxWhosePolicyNoLongerLoadsDeniesEverything) {
    sbx->attach(cg("/cg/a"), policy_ref("gone", 7, true));
    restart();
    restore_now();
    ASSERT_NE(sbx->find(101), nullptr);
    EXPECT_EQ(kernel.attach.at(101).policy_id, 0u);
    EXPECT_FALSE(kernel.attach.at(101).flags & REDIR_ATTACH_F_INFERENCE);
    EXPECT_EQ(links_of(101), loader::FakeDatapath::program_names().size());
}

TEST_F(RestoreTest, RecordedCgroupThatIsGoneIsDetached) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    cgroups.erase("/cg/a");
    restart();
    restore_now();
    EXPECT_FALSE(kernel.attach.count(101));
    EXPECT_EQ(links_of(101), 0u);
    EXPECT_TRUE(records.empty());
}

TEST_F(RestoreTest, RecreatedCgroupIsAttachedUnderItsNewId) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    cgroups["/cg/a"] = 201;
    restart();
    restore_now();
    EXPECT_FALSE(kernel.attach.count(101));
    EXPECT_EQ(links_of(101), 0u);
    expect_attached(201, 20);
    EXPECT_EQ(records.at(0).cgroup_id, 201u);
}

// A failure while adopting stops the restore (the agent exits and retries):
// the pinned links keep enforcing, and no DNS responder is left running.
TEST_F(RestoreTest, FailedAdoptionLeavesTheLinksEnforcing) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    restart();
    dp->fail_at("adopt");
    EXPECT_THROW(restore_now(), Error);
    EXPECT_EQ(links_of(101), loader::FakeDatapath::program_names().size());
    EXPECT_EQ(kernel.attach.at(101).policy_id, 7u);
    EXPECT_FALSE(dns->live.count(101));
}

// Every crash point of every operation, systematically: the operation runs
// once recording what the kernel and the state file hold after each change;
// then for each of those points a new agent restores from exactly that and
// must end with every sandbox either enforced under its recorded policy,
// or (links but no record) denying everything, or (no links) without any
// entry: never a link running without its entry, never a stray entry.
struct CrashPoint {
    std::string after;
    loader::FakeKernel kernel;
    std::vector<StoredAttachment> records;
};

class CrashAtEachStep : public RestoreTest {
protected:
    std::vector<CrashPoint> points;

    void record_points() {
        auto snap = [this](const std::string& after) { points.push_back({after, kernel, records}); };
        dp->after_change = snap;
        after_save = [snap] { snap("save"); };
    }

    void check_every_point(const std::string& op) {
        ASSERT_FALSE(points.empty());
        for (auto& p : points) {
            SCOPED_TRACE(op + ": crash right after " + p.after);
            dp->after_change = nullptr;
            after_save = nullptr;
            kernel = p.kernel;
            records = p.records;
            restart();
            restore_now();
            for (auto& [path, id] : cgroups) {
                bool recorded = std::any_of(p.records.begin(), p.records.end(),
                                            [&](auto& r) { return r.cgroup_id == id; });
                bool linked = p.kernel.links.count(id) && !p.kernel.links.at(id).empty();
                if (recorded) {
                    expect_attached(id, 20);
                    EXPECT_TRUE(links_run_generation(id, generation)) << path << " runs a dead agent's programs";
                } else if (linked) {
                    ASSERT_TRUE(kernel.attach.count(id)) << path << ": links without an entry";
                    EXPECT_EQ(kernel.attach.at(id).policy_id, 0u) << path << " must deny everything";
                    EXPECT_TRUE(sbx->encloses(id));
                    // The operator can always clean it up.
                    EXPECT_EQ(sbx->detach(id, path), path);
                    expect_gone(id);
                } else {
                    EXPECT_FALSE(kernel.attach.count(id)) << path << ": a stray entry";
                    EXPECT_EQ(sbx->find(id), nullptr);
                }
            }
        }
    }
};

TEST_F(CrashAtEachStep, Attach) {
    sbx->attach(cg("/cg/b"), policy_ref("web", 7));
    record_points();
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    // The entry, each link, the record.
    EXPECT_EQ(points.size(), loader::FakeDatapath::program_names().size() + 2);
    check_every_point("attach");
}

TEST_F(CrashAtEachStep, Detach) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    sbx->attach(cg("/cg/b"), policy_ref("web", 7));
    record_points();
    sbx->detach(101, "/cg/a");
    EXPECT_EQ(points.size(), 3u);  // the record, the links, the entry
    check_every_point("detach");
}

TEST_F(CrashAtEachStep, Reload) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    sbx->attach(cg("/cg/b"), policy_ref("web", 7));
    sbx->attach(cg("/cg/c"), policy_ref("web", 7));
    record_points();
    sbx->reload(policy_ref("web", 8), policy_ref("web", 7));
    EXPECT_EQ(points.size(), 3u);  // one flip per sandbox
    check_every_point("reload");
}

TEST_F(CrashAtEachStep, Restore) {
    sbx->attach(cg("/cg/a"), policy_ref("web", 7));
    sbx->attach(cg("/cg/b"), policy_ref("web", 7));
    restart();
    record_points();
    restore_now();
    check_every_point("restore");
}

}  // namespace
}  // namespace redir::enforce::test
