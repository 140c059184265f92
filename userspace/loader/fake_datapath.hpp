#pragma once
// An in-memory Datapath for root-free tests of the sandbox lifecycle. The
// kernel's state (maps and pinned links) lives in a FakeKernel that outlives
// any one FakeDatapath, so a test can "restart the agent" over it; any named
// step can be told to fail, to exercise every rollback path.
#include <map>
#include <string>
#include <vector>

#include "loader/datapath.hpp"

namespace redir::loader {

// What survives an agent restart: the pinned maps and links.
struct FakeKernel {
    std::map<uint64_t, redir_attach_val> attach;
    // cgroup id -> program name -> generation of the agent whose program runs behind the link.
    std::map<uint64_t, std::map<std::string, int>> links;
    std::map<std::pair<uint32_t, std::string>, redir_lpm_val> lpm;        // (policy id, key bytes)
    std::map<std::pair<uint32_t, std::string>, redir_portset> portsets;   // (policy id, key bytes)
    std::map<std::pair<uint64_t, std::string>, DnsAdmission> dns_allow;   // (cgroup id, address bytes)
    std::map<uint64_t, uint64_t> event_drops;
    std::map<uint32_t, uint64_t> guards;  // ifindex -> cgroup id (the guard's link is links[id]["guard"])
    redir_config config{};
    // Admissions written for a cgroup without an attachment entry: a write
    // after detach (a use of state that should be gone).
    size_t stray_admissions = 0;

    size_t policy_entries(uint32_t policy_id) const;
    size_t admissions_of(uint64_t cgroup_id) const;
};

class FakeDatapath final : public Datapath {
public:
    // The programs every attachment gets a link for.
    static const std::vector<std::string>& program_names();

    // GENERATION names this "agent's" programs (adopt() moves links to it).
    explicit FakeDatapath(FakeKernel& kernel, int generation = 1);

    // The Nth call (1: the next one) of STEP from now throws redir::Error.
    // Steps: attach, attach_link, attach_guard, adopt, set_attachment, detach, put_lpm,
    // put_portset, delete_policy, put_dns_allow.
    void fail_at(const std::string& step, int nth = 1);
    // Calls of STEP so far (failed ones included).
    int calls(const std::string& step) const;
    // Called after every change to the kernel state, with the step's name:
    // a test snapshots the FakeKernel there to restart from "a crash right
    // after this step". Multi-step operations (attach: entry, then each
    // link; detach: links, then entry) report each part.
    std::function<void(const std::string& step)> after_change;

    // The steps a test can make fail.
    void attach(const Cgroup& cg, const redir_attach_val& val) override;
    void adopt(const Cgroup& cg, const redir_attach_val& val) override;
    void set_attachment(uint64_t cgroup_id, const redir_attach_val& val) override;
    void attach_guard(uint64_t cgroup_id, uint32_t ifindex) override;
    std::optional<GuardState> guard_state(uint64_t cgroup_id) const override;
    void detach(uint64_t cgroup_id) override;
    void put_lpm(const redir_lpm_key& k, const redir_lpm_val& v) override;
    void put_portset(const redir_portset_key& k, const redir_portset& v) override;
    size_t delete_policy(uint32_t policy_id) override;
    void put_dns_allow(const redir_dns_allow_key& k, const redir_dns_allow_val& v) override;

    // Readers and steps that cannot fail.
    std::optional<redir_attach_val> attachment(uint64_t cgroup_id) const override;
    std::vector<uint64_t> attachment_ids() const override;
    std::vector<PinnedAttachment> pinned_attachments() const override;
    std::set<uint32_t> policy_ids() const override;
    void delete_dns_allow(const redir_dns_allow_key& k) override;
    size_t delete_dns_allow_for(uint64_t cgroup_id) override;
    std::vector<DnsAdmission> dns_admissions() const override;
    uint64_t event_drops(uint64_t cgroup_id) const override;

    // Nothing of these exists without a kernel.
    bool lsm_available() const override { return false; }
    const LsmProbe& lsm_probe() const override { return lsm_probe_; }
    const std::string& bpffs_dir() const override { return bpffs_dir_; }
    void set_config(const redir_config& cfg) override { kernel_.config = cfg; }
    redir_config config() const override { return kernel_.config; }
    std::optional<redir_origdst_val> take_origdst(const redir_tuple_key&) override { return std::nullopt; }
    std::array<uint64_t, REDIR_CNT_MAX> counters() const override { return {}; }
    void open_events(std::function<void(const redir_event&)> handler) override { on_event_ = std::move(handler); }
    int events_poll_fd() const override { return -1; }
    int consume_events() override { return 0; }
    int map_fd(const char*) const override { return -1; }

private:
    // Counts the call and throws if a failure was armed for it.
    void step(const std::string& name);
    void changed(const char* name);
    void link_missing(uint64_t cgroup_id, std::vector<std::string>& created);

    FakeKernel& kernel_;
    int generation_;
    std::string bpffs_dir_ = "/fake/bpffs";
    LsmProbe lsm_probe_;
    std::function<void(const redir_event&)> on_event_;
    std::map<std::string, int> calls_;
    std::map<std::string, int> armed_;  // step -> call number (absolute) that fails
};

}  // namespace redir::loader
