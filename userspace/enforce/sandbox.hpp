#pragma once
// One sandbox (an attached cgroup) and what it depends on: the policy it runs
// under, its DNS responder, its record in the state directory.
#include <cstdint>
#include <memory>
#include <string>

#include "redir/attach.h"
#include "redir/types.h"

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

// Where a sandbox in its own network namespace is redirected (#10): the
// agent's addresses on its side, the interface holding them in the agent's
// namespace, and the sandbox's namespace. Default (cookie 0): the sandbox
// shares the agent's namespace and is redirected to its loopback.
struct RedirectTarget {
    uint64_t netns_cookie = 0;
    redir_addr addr4{};  // v4-mapped; zero: none
    redir_addr addr6{};  // zero: none (IPv6 redirects then fail closed)
    std::string device;
    uint32_t ifindex = 0;
    // The host side of the sandbox's link, whose ingress the node-side guard
    // filters (packets that bypassed the socket hooks); 0: none.
    uint32_t guard_ifindex = 0;
    bool own_netns() const { return netns_cookie != 0; }
    // Listeners belong on it: its interface exists (after a restart it may be
    // gone with the sandbox's namespace; the kernel then redirects to nothing).
    bool served() const { return own_netns() && !device.empty(); }
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
    // A sandbox in its own namespace (TARGET.served()) is answered on the
    // target's addresses, bound to its interface, as well.
    virtual uint16_t add(uint64_t cgroup_id, const std::string& cgroup_path,
                         std::shared_ptr<const policy::CompiledPolicy> compiled, uint32_t policy_id,
                         const RedirectTarget& target) = 0;
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
    RedirectTarget target;   // set by Sandboxes::attach, kept in the kernel entry across restarts

    // The kernel's attachment entry for this sandbox.
    redir_attach_val attach_val() const {
        redir_attach_val v{};
        v.policy_id = policy_id;
        v.flags = inference_enabled ? REDIR_ATTACH_F_INFERENCE : 0;
        v.dns_port = dns_port;
        v.target4 = target.addr4;
        v.target6 = target.addr6;
        v.netns_cookie = target.netns_cookie;
        v.target_ifindex = target.ifindex;
        v.guard_ifindex = target.guard_ifindex;
        return v;
    }
    StoredAttachment record() const { return {cgroup_path, cgroup_id, policy}; }
};

}  // namespace redir::enforce
