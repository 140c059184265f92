#pragma once
// The kernel side as the agent sees it: one loaded BPF object whose maps are
// pinned under <bpffs>/maps and whose per-cgroup links are pinned under
// <bpffs>/links/<cgroup id>/<program>. Pins outlive the agent, so enforcement
// survives a crash and a new agent adopts it.
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "loader/cgroup.hpp"
#include "loader/features.hpp"
#include "redir/attach.h"
#include "redir/config.h"
#include "redir/dns.h"
#include "redir/events.h"
#include "redir/origdst.h"
#include "redir/policy.h"

struct redir_bpf;
struct ring_buffer;

namespace redir::loader {

struct DatapathOptions {
    std::string bpffs_dir = "/sys/fs/bpf/redir";
};

// What one attached cgroup looks like in bpffs.
struct PinnedAttachment {
    uint64_t cgroup_id = 0;
    std::vector<std::string> programs;
};

class Datapath {
public:
    // Mounts bpffs if needed, loads the programs, reuses pinned maps if they
    // exist (adoption) or creates and pins them.
    static std::unique_ptr<Datapath> open(const DatapathOptions& opts);
    ~Datapath();
    Datapath(const Datapath&) = delete;
    Datapath& operator=(const Datapath&) = delete;

    // Whether lsm_cgroup/socket_create is loaded (non-inet families refused),
    // and if not, the kernel's reason.
    bool lsm_available() const { return lsm_; }
    const LsmProbe& lsm_probe() const { return lsm_probe_; }
    const std::string& bpffs_dir() const { return opts_.bpffs_dir; }

    void set_config(const redir_config& cfg);
    redir_config config() const;

    // Attachment entry first, then links: a program can never run for this
    // cgroup without its entry (it would fail closed anyway). On any failure
    // everything done so far is undone.
    void attach(const Cgroup& cg, const redir_attach_val& val);
    // Re-point pinned links at this agent's programs (no detach, no window)
    // and attach any program that is missing.
    void adopt(const Cgroup& cg, const redir_attach_val& val);
    // One map update: what a policy reload flips.
    void set_attachment(uint64_t cgroup_id, const redir_attach_val& val);
    std::optional<redir_attach_val> attachment(uint64_t cgroup_id) const;
    void detach(uint64_t cgroup_id);
    std::vector<PinnedAttachment> pinned_attachments() const;

    // Policy maps.
    void put_lpm(const redir_lpm_key& k, const redir_lpm_val& v);
    void put_portset(const redir_portset_key& k, const redir_portset& v);
    // Removes every entry whose key carries POLICY_ID (after the flip).
    size_t delete_policy(uint32_t policy_id);
    // Every policy id that has entries in the policy maps.
    std::set<uint32_t> policy_ids() const;

    // DNS admissions.
    void put_dns_allow(const redir_dns_allow_key& k, const redir_dns_allow_val& v);
    size_t delete_dns_allow_for(uint64_t cgroup_id);

    // Original destination of an accepted redirected connection; the entry is
    // removed once read.
    std::optional<redir_origdst_val> take_origdst(const redir_tuple_key& k);

    std::array<uint64_t, REDIR_CNT_MAX> counters() const;
    // Audit events of this attached sandbox lost to a full ring buffer
    // (kept until detach).
    uint64_t event_drops(uint64_t cgroup_id) const;

    // Ring buffer of struct redir_event. poll_fd() becomes readable when events
    // are waiting; consume() calls the handler for each.
    void open_events(std::function<void(const redir_event&)> handler);
    int events_poll_fd() const;
    int consume_events();

    int map_fd(const char* name) const;

private:
    explicit Datapath(DatapathOptions opts);
    std::string link_dir(uint64_t cgroup_id) const;
    void attach_missing(const Cgroup& cg, std::vector<std::string>& created);

    DatapathOptions opts_;
    redir_bpf* skel_ = nullptr;
    ring_buffer* rb_ = nullptr;
    std::function<void(const redir_event&)> on_event_;
    bool lsm_ = false;
    LsmProbe lsm_probe_;
};

// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
void ensure_bpffs(const std::string& dir);

}  // namespace redir::loader
