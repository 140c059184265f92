#pragma once
// One sandbox (an attached cgroup) and what it depends on: the policy it runs
// under, its DNS responder, its record in the state directory.
#include <cstdint>
#include <memory>
#include <string>

#include "redir/attach.h"

namespace redir::policy {
struct CompiledPolicy;
}

namespace redir::enforce {

// What the agent remembers of an attachment across restarts.
struct StoredAttachment {
    std::string cgroup_path;
    uint64_t cgroup_id = 0;
    std::string policy;
};

// The policy a sandbox runs under. id 0 (no entries in the maps) is the
// policy of a sandbox whose policy no longer loads: it denies everything.
struct PolicyRef {
    std::string name;
    uint32_t id = 0;
    bool inference_enabled = false;
    std::shared_ptr<const policy::CompiledPolicy> compiled;
};

// The per-sandbox DNS responders and their kernel admissions
// (agent/dns_service.* is the real one).
class SandboxDns {
public:
    virtual ~SandboxDns() = default;
    // Starts the sandbox's responder; returns its port.
    virtual uint16_t add(uint64_t cgroup_id, const std::string& cgroup_path,
                         std::shared_ptr<const policy::CompiledPolicy> compiled, uint32_t policy_id) = 0;
    // New decisions; every admission so far re-decided (kept under the new id, or removed).
    virtual void update(uint64_t cgroup_id, std::shared_ptr<const policy::CompiledPolicy> compiled,
                        uint32_t policy_id) = 0;
    // Stops the responder and withdraws the sandbox's admissions. Answers in
    // flight must find the sandbox gone, never freed.
    virtual void remove(uint64_t cgroup_id) = 0;
    // Restart: re-keys the admissions a previous agent left for this sandbox
    // under its new policy id (after its attachment was flipped, before old
    // ids are deleted).
    virtual void adopt_admissions(uint64_t cgroup_id) = 0;
    // Restart, after every sandbox: withdraws admissions of cgroups no longer attached.
    virtual void finish_restore() = 0;
};

struct Sandbox {
    std::string cgroup_path;
    uint64_t cgroup_id = 0;
    std::string policy;      // name, as recorded
    uint32_t policy_id = 0;  // what its attachment entry points at
    bool inference_enabled = false;
    uint16_t dns_port = 0;   // its DNS responder
    // Per-namespace redirect target (#10, netkern) goes here: set by
    // Sandboxes::attach/restore, written by attach_val(), undone with the rest.

    // The kernel's attachment entry for this sandbox.
    redir_attach_val attach_val() const {
        redir_attach_val v{};
        v.policy_id = policy_id;
        v.flags = inference_enabled ? REDIR_ATTACH_F_INFERENCE : 0;
        v.dns_port = dns_port;
        return v;
    }
    StoredAttachment record() const { return {cgroup_path, cgroup_id, policy}; }
};

}  // namespace redir::enforce
