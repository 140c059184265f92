#pragma once
// Shared pieces of the sandbox lifecycle tests: a fake DNS side that records
// what it was asked, fake cgroups, and a registry wired to a FakeDatapath.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "enforce/sandboxes.hpp"
#include "loader/fake_datapath.hpp"
#include "policy/compile.hpp"
#include "policy/parse.hpp"

namespace redir::enforce::test {

// Responders as bookkeeping: which sandbox runs under which policy id.
class FakeDns final : public SandboxDns {
public:
    explicit FakeDns(loader::Datapath& dp) : dp_(dp) {}
    struct Entry {
        uint16_t port = 0;
        uint32_t policy_id = 0;
    };
    std::map<uint64_t, Entry> live;
    // Policy id the attachment entry held when adopt_admissions ran (it must
    // already be the new one).
    std::map<uint64_t, uint32_t> adopted_under;
    bool finished = false;

    // The Nth call of STEP ("add", "update") from now throws.
    void fail_at(const std::string& step, int nth = 1) { armed_[step] = calls_[step] + nth; }

    uint16_t add(uint64_t id, const std::string&, std::shared_ptr<const policy::CompiledPolicy>, uint32_t policy_id,
                 const RedirectTarget&) override {
        step("add");
        live[id] = {next_port_++, policy_id};
        return live[id].port;
    }
    void update(uint64_t id, std::shared_ptr<const policy::CompiledPolicy>, uint32_t policy_id) override {
        step("update");
        live.at(id).policy_id = policy_id;
    }
    void remove(uint64_t id) override { live.erase(id); }
    void adopt_admissions(uint64_t id) override {
        auto v = dp_.attachment(id);
        adopted_under[id] = v ? v->policy_id : 0;
    }
    void finish_restore() override { finished = true; }

private:
    void step(const std::string& s) {
        int n = ++calls_[s];
        if (armed_.count(s) && armed_[s] == n) throw Error("fake dns: injected failure at " + s);
    }
    loader::Datapath& dp_;
    uint16_t next_port_ = 40000;
    std::map<std::string, int> calls_, armed_;
};

inline std::shared_ptr<const policy::CompiledPolicy> compile_text(const std::string& text, uint32_t id) {
    auto r = policy::parse_policy(text, "test.json");
    EXPECT_TRUE(r.ok());
    return std::make_shared<policy::CompiledPolicy>(policy::compile(*r.policy, id));
}

inline PolicyRef policy_ref(const std::string& name, uint32_t id, bool inference = false) {
    return {name, id, inference, nullptr};
}

class SandboxesTest : public ::testing::Test {
public:  // failure tables arm the fakes from outside
    loader::FakeKernel kernel;
    int generation = 1;  // of the running agent's programs
    std::unique_ptr<loader::FakeDatapath> dp = std::make_unique<loader::FakeDatapath>(kernel, generation);
    std::unique_ptr<FakeDns> dns = std::make_unique<FakeDns>(*dp);
    std::vector<StoredAttachment> records;  // the state file
    int save_failures_armed = 0;            // the Nth save from now fails
    std::function<void()> after_save;       // a crash point: the record is on disk
    std::map<std::string, uint64_t> cgroups = {{"/cg/a", 101}, {"/cg/b", 102}, {"/cg/c", 103}};
    std::unique_ptr<Sandboxes> sbx = make();

    std::unique_ptr<Sandboxes> make() {
        SandboxesDeps deps{*dp, *dns, [this](const std::vector<StoredAttachment>& r) {
                               if (save_failures_armed && --save_failures_armed == 0)
                                   throw Error("fake state dir: injected failure at save");
                               records = r;
                               if (after_save) after_save();
                           }};
        deps.open_cgroup = [this](const std::string& p) { return cg(p); };
        return std::make_unique<Sandboxes>(std::move(deps));
    }

    loader::Cgroup cg(const std::string& path) {
        auto it = cgroups.find(path);
        if (it == cgroups.end()) throw Error(path + " does not exist");
        loader::Cgroup c;
        c.path = path;
        c.id = it->second;
        return c;
    }

    // A new agent over the same kernel state (what a restart sees).
    void restart() {
        sbx.reset();
        dns = nullptr;
        dp = std::make_unique<loader::FakeDatapath>(kernel, ++generation);
        dns = std::make_unique<FakeDns>(*dp);
        sbx = make();
    }

    size_t links_of(uint64_t id) const {
        auto it = kernel.links.find(id);
        return it == kernel.links.end() ? 0 : it->second.size();
    }

    // Everything one attached sandbox must have, in every place it lives.
    void expect_attached(uint64_t id, uint32_t policy_id) {
        ASSERT_TRUE(kernel.attach.count(id)) << id;
        EXPECT_EQ(kernel.attach.at(id).policy_id, policy_id);
        EXPECT_EQ(links_of(id), loader::FakeDatapath::program_names().size());
        ASSERT_TRUE(dns->live.count(id));
        EXPECT_EQ(dns->live.at(id).policy_id, policy_id);
        EXPECT_EQ(kernel.attach.at(id).dns_port, dns->live.at(id).port);
        ASSERT_NE(sbx->find(id), nullptr);
        EXPECT_EQ(sbx->find(id)->policy_id, policy_id);
        EXPECT_EQ(std::count_if(records.begin(), records.end(), [&](auto& r) { return r.cgroup_id == id; }), 1);
    }

    // Nothing of the sandbox is left anywhere.
    void expect_gone(uint64_t id) {
        EXPECT_FALSE(kernel.attach.count(id)) << id;
        EXPECT_EQ(links_of(id), 0u);
        EXPECT_FALSE(dns->live.count(id));
        EXPECT_EQ(sbx->find(id), nullptr);
        EXPECT_FALSE(sbx->encloses(id));
        EXPECT_EQ(std::count_if(records.begin(), records.end(), [&](auto& r) { return r.cgroup_id == id; }), 0);
    }
};

}  // namespace redir::enforce::test
