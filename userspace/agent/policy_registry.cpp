// The agent's loaded policies and their kernel ids (policy_registry.hpp).
#include "agent/policy_registry.hpp"

#include <algorithm>
#include <set>

namespace redir::agent {

void PolicyRegistry::resume_ids() {
    auto ids = dp_.policy_ids();
    next_id_ = std::max(store_.load_next_policy_id(), ids.empty() ? 1u : *ids.rbegin() + 1);
}

uint32_t PolicyRegistry::next_id() {
    uint32_t id = next_id_++;
    store_.save_next_policy_id(next_id_);
    return id;
}

ActivePolicy PolicyRegistry::install(const StoredPolicy& sp) {
    ActivePolicy ap;
    ap.stored = sp;
    ap.id = next_id();
    try {
        ap.info = compile_and_write(sp.source, sp.source_name, ap.id, dp_, sp.name);
    } catch (...) {
        dp_.delete_policy(ap.id);  // nothing half-written stays behind
        throw;
    }
    return ap;
}

const ActivePolicy* PolicyRegistry::find(const std::string& name) const {
    auto it = policies_.find(name);
    return it == policies_.end() ? nullptr : &it->second;
}

std::string PolicyRegistry::name_of(uint32_t id) const {
    for (const auto& [name, p] : policies_)
        if (p.id == id) return name;
    return {};
}

void PolicyRegistry::collect_garbage() {
    std::set<uint32_t> live;
    for (const auto& [name, p] : policies_) live.insert(p.id);
    for (auto id : dp_.policy_ids())
        if (!live.count(id)) dp_.delete_policy(id);
}

}  // namespace redir::agent
