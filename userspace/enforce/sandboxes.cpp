// Attach, detach, flip, restore of sandboxes as transactions (enforce/undo.hpp).
#include "enforce/sandboxes.hpp"

#include <net/if.h>

#include <algorithm>
#include <set>
#include <spdlog/spdlog.h>

#include "enforce/undo.hpp"

namespace redir::enforce {

namespace {
// A target as a previous agent wrote it; an interface gone since then leaves
// the target without listeners (its redirects fail closed).
RedirectTarget target_of(const redir_attach_val& v) {
    RedirectTarget t;
    t.netns_cookie = v.netns_cookie;
    t.addr4 = v.target4;
    t.addr6 = v.target6;
    t.ifindex = v.target_ifindex;
    t.guard_ifindex = v.guard_ifindex;
    char name[IF_NAMESIZE] = {};
    if (t.ifindex && ::if_indextoname(t.ifindex, name)) t.device = name;
    return t;
}
}  // namespace

Sandboxes::Sandboxes(SandboxesDeps deps) : deps_(std::move(deps)) {}

void Sandboxes::save() const {
    std::vector<StoredAttachment> recs;
    for (auto& s : sandboxes_) recs.push_back(s.record());
    deps_.save(recs);
}

const Sandbox& Sandboxes::attach(const loader::Cgroup& cg, const PolicyRef& policy, const RedirectTarget& target) {
    Sandbox sb{cg.path, cg.id, policy.name, policy.id, policy.inference_enabled, 0, target};
    Undo undo;
    sb.dns_port = deps_.dns.add(cg.id, cg.path, policy.compiled, policy.id, target);
    undo.push([&] { deps_.dns.remove(cg.id); });
    deps_.dp.attach(cg, sb.attach_val());
    undo.push([&] { deps_.dp.detach(cg.id); });
    // Packets that bypass the socket hooks (a packet socket in a namespace
    // the sandbox owns) meet the same policy on the node; detach() above
    // takes the guard too.
    if (target.own_netns() && target.guard_ifindex) deps_.dp.attach_guard(cg.id, target.guard_ifindex);
    sandboxes_.push_back(std::move(sb));
    undo.push([&] { sandboxes_.pop_back(); });
    save();
    undo.commit();
    return sandboxes_.back();
}

std::optional<std::string> Sandboxes::detach(uint64_t id, const std::string& path) {
    auto it = std::find_if(sandboxes_.begin(), sandboxes_.end(),
                           [&](const Sandbox& s) { return (id && s.cgroup_id == id) || s.cgroup_path == path; });
    if (it == sandboxes_.end()) {
        auto o = std::find(orphans_.begin(), orphans_.end(), id);
        if (!id || o == orphans_.end()) return std::nullopt;
        deps_.dp.detach(id);
        orphans_.erase(o);
        return path;
    }
    // Record first: a crash after it leaves pinned links without a record,
    // which a restart keeps denying everything (an orphan), never open.
    Sandbox gone = *it;
    size_t pos = it - sandboxes_.begin();
    {
        Undo undo;
        sandboxes_.erase(it);
        undo.push([&] { sandboxes_.insert(sandboxes_.begin() + pos, gone); });
        save();
        undo.commit();
    }
    // The record is gone. The responder stops whatever happens next; if the
    // kernel side cannot be removed, the cgroup is what a restart would call
    // an orphan (pinned, no record): listed as one, so detach can be retried.
    deps_.dns.remove(gone.cgroup_id);
    Undo leftover;
    leftover.push([&] { orphans_.push_back(gone.cgroup_id); });
    deps_.dp.detach(gone.cgroup_id);
    leftover.commit();
    return gone.cgroup_path;
}

size_t Sandboxes::reload(const PolicyRef& policy, const PolicyRef& previous,
                         const std::function<void(const Sandbox&)>& flipped) {
    Undo undo;
    size_t n = 0;
    for (auto& sb : sandboxes_) {
        if (sb.policy != policy.name) continue;
        Sandbox before = sb;
        sb.policy_id = policy.id;
        sb.inference_enabled = policy.inference_enabled;
        // Each undo is pushed before its step: putting the old value back is
        // harmless if the step never happened, and covers a step that failed
        // half-way (a DNS re-check that wrote some admissions).
        undo.push([&sb, before] { sb = before; });
        undo.push([this, before] { deps_.dp.set_attachment(before.cgroup_id, before.attach_val()); });
        deps_.dp.set_attachment(sb.cgroup_id, sb.attach_val());
        undo.push([this, id = sb.cgroup_id, &previous] { deps_.dns.update(id, previous.compiled, previous.id); });
        deps_.dns.update(sb.cgroup_id, policy.compiled, policy.id);
        ++n;
    }
    undo.commit();
    if (flipped)
        for (auto& sb : sandboxes_)
            if (sb.policy == policy.name) flipped(sb);
    return n;
}

void Sandboxes::adopt_one(StoredAttachment a, const std::function<const PolicyRef*(const std::string&)>& policy_of) {
    loader::Cgroup cg;
    try {
        cg = deps_.open_cgroup(a.cgroup_path);
    } catch (const std::exception& e) {
        spdlog::warn("attached cgroup {} is gone ({}); dropping its attachment", a.cgroup_path, e.what());
        deps_.dp.detach(a.cgroup_id);
        return;
    }
    // The redirect target lives in the pinned entry (the state file predates it).
    RedirectTarget target;
    if (auto old = deps_.dp.attachment(a.cgroup_id)) target = target_of(*old);
    if (cg.id != a.cgroup_id) {
        spdlog::warn("cgroup {} was re-created (id {} -> {}); attaching the new one", a.cgroup_path, a.cgroup_id,
                     cg.id);
        deps_.dp.detach(a.cgroup_id);
    }
    const PolicyRef* p = policy_of(a.policy);
    Sandbox sb{a.cgroup_path, cg.id, a.policy, p ? p->id : 0, p && p->inference_enabled, 0, target};
    Undo undo;
    try {
        sb.dns_port = deps_.dns.add(cg.id, cg.path, p ? p->compiled : nullptr, sb.policy_id, sb.target);
    } catch (const std::exception& e) {
        if (!sb.target.served()) throw;
        // Its namespace's side changed while no agent ran: the kernel keeps
        // redirecting there and nothing answers (fail closed) until re-attached.
        spdlog::warn("sandbox {}: {}; its redirects fail until it is attached again", a.cgroup_path, e.what());
        sb.target.device.clear();
        sb.dns_port = deps_.dns.add(cg.id, cg.path, p ? p->compiled : nullptr, sb.policy_id, sb.target);
    }
    undo.push([&] { deps_.dns.remove(cg.id); });
    // Adopt: the links stay attached throughout; only the program behind
    // them and the policy id change, each atomically. (No undo: the links
    // keep enforcing either way, and a failure here stops the agent.)
    deps_.dp.adopt(cg, sb.attach_val());
    if (auto g = deps_.dp.guard_state(cg.id); g && !g->active)
        spdlog::warn("sandbox {}: its node-side guard on interface {} is not active ({}); packets from its link go "
                     "unjudged until it is detached and attached again (redirctl status shows it)",
                     a.cgroup_path, g->ifindex, g->problem);
    // At once, and before old ids are deleted: DNS admissions move to the new id.
    deps_.dns.adopt_admissions(cg.id);
    sandboxes_.push_back(std::move(sb));
    undo.commit();
}

void Sandboxes::restore(std::vector<StoredAttachment> recorded,
                        const std::function<const PolicyRef*(const std::string&)>& policy_of) {
    auto pinned = deps_.dp.pinned_attachments();
    std::set<uint64_t> known;
    for (auto& a : recorded) {
        known.insert(a.cgroup_id);
        adopt_one(std::move(a), policy_of);
    }
    for (auto& s : sandboxes_) known.insert(s.cgroup_id);
    std::set<uint64_t> linked;
    for (auto& p : pinned) {
        linked.insert(p.cgroup_id);
        if (known.count(p.cgroup_id)) continue;
        // Pinned but never recorded: an attach interrupted by a crash. Keep it
        // enforcing (deny-all) rather than silently freeing the sandbox.
        deps_.dp.set_attachment(p.cgroup_id, redir_attach_val{});
        orphans_.push_back(p.cgroup_id);
        spdlog::warn("pinned attachment for cgroup id {} has no record; it denies everything until detached",
                     p.cgroup_id);
    }
    // An entry with neither links nor a record (a crash between the entry and
    // the first link): no program reads it, but it would refuse a new attach.
    for (auto id : deps_.dp.attachment_ids())
        if (!known.count(id) && !linked.count(id)) deps_.dp.detach(id);
    deps_.dns.finish_restore();
    save();
}

const Sandbox* Sandboxes::find(uint64_t cgroup_id) const {
    for (auto& s : sandboxes_)
        if (s.cgroup_id == cgroup_id) return &s;
    return nullptr;
}

bool Sandboxes::encloses(uint64_t cgroup_id) const {
    return find(cgroup_id) || std::find(orphans_.begin(), orphans_.end(), cgroup_id) != orphans_.end();
}

size_t Sandboxes::users(const std::string& policy) const {
    return std::count_if(sandboxes_.begin(), sandboxes_.end(), [&](const Sandbox& s) { return s.policy == policy; });
}

}  // namespace redir::enforce
