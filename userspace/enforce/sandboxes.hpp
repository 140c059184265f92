#pragma once
// The one owner of every attached sandbox: attach, detach, policy flip,
// restore after a restart, each all-or-nothing. The kernel side (Datapath),
// the DNS responders (SandboxDns) and the state file (save hook) are changed
// only from here, so one sandbox's state is never split between owners.
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "enforce/sandbox.hpp"
#include "loader/cgroup.hpp"
#include "loader/datapath.hpp"

namespace redir::enforce {

struct SandboxesDeps {
    loader::Datapath& dp;
    SandboxDns& dns;
    // Persists the attachment list atomically (StateStore::save_attachments).
    std::function<void(const std::vector<StoredAttachment>&)> save;
    // Opens a recorded cgroup at restore; throws when it is gone.
    std::function<loader::Cgroup(const std::string&)> open_cgroup = [](const std::string& p) {
        return loader::open_cgroup(p);
    };
};

class Sandboxes {
public:
    explicit Sandboxes(SandboxesDeps deps);

    // DNS responder, attachment entry + links, record: all of it or, on any
    // failure, none of it (the exception propagates).
    const Sandbox& attach(const loader::Cgroup& cg, const PolicyRef& policy, const RedirectTarget& target = {});

    // Detaches the sandbox with cgroup ID (0: unknown) or recorded PATH, or
    // an orphan with that id. Returns the path detached; nullopt if nothing
    // matched. If forgetting the record fails, nothing changes; if removing
    // the links fails after it, the cgroup is left as an orphan to retry.
    std::optional<std::string> detach(uint64_t id, const std::string& path);

    // Policy flip: every sandbox under POLICY.name now runs POLICY (one map
    // update each, then its DNS decisions). On a failure the sandboxes
    // flipped so far go back to PREVIOUS and the exception propagates.
    // FLIPPED (optional) then runs once per flipped sandbox, after the whole
    // flip succeeded (the place for revoking connections the new policy no
    // longer allows). Returns how many sandboxes were flipped.
    size_t reload(const PolicyRef& policy, const PolicyRef& previous,
                  const std::function<void(const Sandbox&)>& flipped = {});

    // After a restart: RECORDED is the state file, the pins are what the
    // kernel kept. Recorded cgroups are adopted under the policies POLICY_OF
    // names (nullptr: unknown, deny everything) with their DNS admissions
    // re-keyed; gone cgroups are detached; pinned links without a record (an
    // attach cut short) deny everything until detached (orphans); entries
    // with neither links nor a record are removed.
    void restore(std::vector<StoredAttachment> recorded,
                 const std::function<const PolicyRef*(const std::string&)>& policy_of);

    const std::vector<Sandbox>& all() const { return sandboxes_; }
    const std::vector<uint64_t>& orphans() const { return orphans_; }
    const Sandbox* find(uint64_t cgroup_id) const;
    // Attached (or an orphan): the sandbox that encloses cgroup ID.
    bool encloses(uint64_t cgroup_id) const;
    size_t users(const std::string& policy) const;

private:
    void save() const;
    void adopt_one(StoredAttachment a, const std::function<const PolicyRef*(const std::string&)>& policy_of);

    SandboxesDeps deps_;
    std::vector<Sandbox> sandboxes_;
    std::vector<uint64_t> orphans_;  // pinned links with no recorded attachment
};

}  // namespace redir::enforce
