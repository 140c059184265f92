#pragma once
// The kernel side as the agent sees it: one loaded BPF object whose maps are
// pinned under <bpffs>/maps and whose per-cgroup links are pinned under
// <bpffs>/links/<cgroup id>/<program>. Pins outlive the agent, so enforcement
// survives a crash and a new agent adopts it. An interface, so the sandbox
// lifecycle (userspace/enforce) is testable without root over FakeDatapath.
#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "loader/cgroup.hpp"
#include "loader/features.hpp"
#include "redir/attach.h"
#include "redir/config.h"
#include "redir/dns.h"
#include "redir/events.h"
#include "redir/guard.h"
#include "redir/origdst.h"
#include "redir/policy.h"

namespace redir::loader {

struct DatapathOptions {
    std::string bpffs_dir = "/sys/fs/bpf/redir";
};

// What one attached cgroup looks like in bpffs.
struct PinnedAttachment {
    uint64_t cgroup_id = 0;
    std::vector<std::string> programs;
};

// Where a sandbox's node-side guard is and whether the kernel still runs it
// there (an interface can go, a filter can be removed behind the agent's back).
struct GuardState {
    uint32_t ifindex = 0;
    std::string interface;  // empty: no interface of that index any more
    std::string hook;       // "tcx" or "tc" (clsact, kernels before 6.6)
    bool active = false;
    std::string problem;    // why not active, one sentence
};

using DnsAdmission = std::pair<redir_dns_allow_key, redir_dns_allow_val>;

class Datapath {
public:
    // The real one (loader/bpf_datapath.cpp): mounts bpffs if needed, loads
    // the programs, reuses pinned maps if they exist (adoption) or creates
    // and pins them.
    static std::unique_ptr<Datapath> open(const DatapathOptions& opts);
    virtual ~Datapath() = default;

    // Whether lsm_cgroup/socket_create is loaded (non-inet families refused),
    // and if not, the kernel's reason.
    virtual bool lsm_available() const = 0;
    virtual const LsmProbe& lsm_probe() const = 0;
    virtual const std::string& bpffs_dir() const = 0;

    virtual void set_config(const redir_config& cfg) = 0;
    virtual redir_config config() const = 0;

    // Attachment entry first, then links: a program can never run for this
    // cgroup without its entry (it would fail closed anyway). On any failure
    // everything done so far is undone.
    virtual void attach(const Cgroup& cg, const redir_attach_val& val) = 0;
    // Re-point pinned links at this agent's programs (no detach, no window)
    // and attach any program that is missing.
    virtual void adopt(const Cgroup& cg, const redir_attach_val& val) = 0;
    // The node-side guard of a sandbox in its own network namespace
    // (bpf/guard.bpf.c): on the ingress of interface IFINDEX, the host side of
    // its link, every packet is judged under CGROUP_ID's attachment. Needs the
    // attachment entry; pinned with the cgroup's links, so detach() removes it
    // and adopt() re-points it (the entry's guard_ifindex says where).
    virtual void attach_guard(uint64_t cgroup_id, uint32_t ifindex) = 0;
    // The guard of CGROUP_ID as the kernel has it; nullopt when it has none
    // (a sandbox that shares the agent's namespace).
    virtual std::optional<GuardState> guard_state(uint64_t cgroup_id) const = 0;
    // One map update: what a policy reload flips.
    virtual void set_attachment(uint64_t cgroup_id, const redir_attach_val& val) = 0;
    virtual std::optional<redir_attach_val> attachment(uint64_t cgroup_id) const = 0;
    // Cgroup ids that have an attachment entry (with or without links).
    virtual std::vector<uint64_t> attachment_ids() const = 0;
    // Links first, entry last; also the cgroup's DNS admissions and drop count.
    virtual void detach(uint64_t cgroup_id) = 0;
    virtual std::vector<PinnedAttachment> pinned_attachments() const = 0;

    // Policy maps.
    virtual void put_lpm(const redir_lpm_key& k, const redir_lpm_val& v) = 0;
    virtual void put_portset(const redir_portset_key& k, const redir_portset& v) = 0;
    // Removes every entry whose key carries POLICY_ID (after the flip).
    virtual size_t delete_policy(uint32_t policy_id) = 0;
    // Every policy id that has entries in the policy maps.
    virtual std::set<uint32_t> policy_ids() const = 0;

    // DNS admissions.
    virtual void put_dns_allow(const redir_dns_allow_key& k, const redir_dns_allow_val& v) = 0;
    virtual void delete_dns_allow(const redir_dns_allow_key& k) = 0;
    virtual size_t delete_dns_allow_for(uint64_t cgroup_id) = 0;
    // Every admission in the map (a restarted agent re-keys them).
    virtual std::vector<DnsAdmission> dns_admissions() const = 0;

    // Original destination of an accepted redirected connection; the entry is
    // removed once read.
    virtual std::optional<redir_origdst_val> take_origdst(const redir_tuple_key& k) = 0;

    virtual std::array<uint64_t, REDIR_CNT_MAX> counters() const = 0;
    // Audit events of this attached sandbox lost to a full ring buffer
    // (kept until detach).
    virtual uint64_t event_drops(uint64_t cgroup_id) const = 0;

    // Ring buffer of struct redir_event. poll_fd() becomes readable when events
    // are waiting; consume() calls the handler for each.
    virtual void open_events(std::function<void(const redir_event&)> handler) = 0;
    virtual int events_poll_fd() const = 0;
    virtual int consume_events() = 0;

    // The fd of a map by name, for readers that judge with the kernel's own
    // maps (agent/revoke: sock_diag); -1 when there is none (the fake).
    virtual int map_fd(const char* name) const = 0;
};

// Mounts bpffs at /sys/fs/bpf if nothing is mounted there.
void ensure_bpffs(const std::string& dir);

}  // namespace redir::loader
