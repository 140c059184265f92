#pragma once
// The libbpf Datapath: the embedded skeleton, its pinned maps and the
// per-cgroup pinned links (see loader/datapath.hpp for the contract).
#include "loader/datapath.hpp"

struct redir_bpf;
struct guard_bpf;
struct ring_buffer;

namespace redir::loader {

// The guard's identity on a clsact hook where the kernel has no tcx (a tc
// filter cannot be pinned): what attach, status, detach and tests look for.
inline constexpr uint32_t kGuardTcHandle = 0x7265, kGuardTcPriority = 0x7265;

class BpfDatapath final : public Datapath {
public:
    static std::unique_ptr<BpfDatapath> open(const DatapathOptions& opts);
    ~BpfDatapath() override;
    BpfDatapath(const BpfDatapath&) = delete;
    BpfDatapath& operator=(const BpfDatapath&) = delete;

    bool lsm_available() const override { return lsm_; }
    const LsmProbe& lsm_probe() const override { return lsm_probe_; }
    const std::string& bpffs_dir() const override { return opts_.bpffs_dir; }

    void set_config(const redir_config& cfg) override;
    redir_config config() const override;

    void attach(const Cgroup& cg, const redir_attach_val& val) override;
    void adopt(const Cgroup& cg, const redir_attach_val& val) override;
    void attach_guard(uint64_t cgroup_id, uint32_t ifindex) override;
    std::optional<GuardState> guard_state(uint64_t cgroup_id) const override;
    void set_attachment(uint64_t cgroup_id, const redir_attach_val& val) override;
    std::optional<redir_attach_val> attachment(uint64_t cgroup_id) const override;
    std::vector<uint64_t> attachment_ids() const override;
    void detach(uint64_t cgroup_id) override;
    std::vector<PinnedAttachment> pinned_attachments() const override;

    void put_lpm(const redir_lpm_key& k, const redir_lpm_val& v) override;
    void put_portset(const redir_portset_key& k, const redir_portset& v) override;
    size_t delete_policy(uint32_t policy_id) override;
    std::set<uint32_t> policy_ids() const override;

    void put_dns_allow(const redir_dns_allow_key& k, const redir_dns_allow_val& v) override;
    void delete_dns_allow(const redir_dns_allow_key& k) override;
    size_t delete_dns_allow_for(uint64_t cgroup_id) override;
    std::vector<DnsAdmission> dns_admissions() const override;

    std::optional<redir_origdst_val> take_origdst(const redir_tuple_key& k) override;

    std::array<uint64_t, REDIR_CNT_MAX> counters() const override;
    uint64_t event_drops(uint64_t cgroup_id) const override;

    void open_events(std::function<void(const redir_event&)> handler) override;
    int events_poll_fd() const override;
    int consume_events() override;

    int map_fd(const char* name) const override;

private:
    explicit BpfDatapath(DatapathOptions opts);
    std::string link_dir(uint64_t cgroup_id) const;
    void attach_missing(const Cgroup& cg, std::vector<std::string>& created);
    // The guard program on IFINDEX's ingress: a pinned tcx link at PIN, or on
    // kernels without tcx a clsact filter (not pinnable: it stays on the
    // interface until removed). Throws when neither attaches.
    void attach_guard_program(uint32_t ifindex, const std::string& pin);
    void detach_guard(uint64_t cgroup_id);

    DatapathOptions opts_;
    redir_bpf* skel_ = nullptr;
    guard_bpf* guard_ = nullptr;
    ring_buffer* rb_ = nullptr;
    std::function<void(const redir_event&)> on_event_;
    bool lsm_ = false;
    LsmProbe lsm_probe_;
};

}  // namespace redir::loader
