// The loaded policies by name, each under the kernel policy id its compiled entries were written with.
#pragma once
// Ids come from a counter kept in the state store and never go backwards, so
// an id the maps still hold is never reused.
#include <cstdint>
#include <map>
#include <string>

#include "agent/policy_engine.hpp"
#include "agent/state_store.hpp"
#include "loader/datapath.hpp"

namespace redir::agent {

struct ActivePolicy {
    StoredPolicy stored;
    uint32_t id = 0;
    CompiledPolicyInfo info;
};

class PolicyRegistry {
public:
    PolicyRegistry(loader::Datapath& dp, StateStore& store) : dp_(dp), store_(store) {}

    // Continues the id counter above both the stored one and every id in the
    // maps (a previous agent's): call once, before the first install().
    void resume_ids();
    // Compiles SP and writes its entries under a fresh id; a bad file or a
    // kernel failure leaves nothing half-written. The policy is not loaded
    // until put(): the caller flips its sandboxes in between.
    ActivePolicy install(const StoredPolicy& sp);
    void put(const std::string& name, ActivePolicy p) { policies_[name] = std::move(p); }
    void erase(const std::string& name) { policies_.erase(name); }

    const ActivePolicy* find(const std::string& name) const;
    // The policy loaded under kernel id ID; "" when none is.
    std::string name_of(uint32_t id) const;
    const std::map<std::string, ActivePolicy>& all() const { return policies_; }
    size_t size() const { return policies_.size(); }

    // Deletes the entries of every id no loaded policy holds: leftovers of an
    // agent that died mid-load or mid-flip.
    void collect_garbage();

private:
    uint32_t next_id();

    loader::Datapath& dp_;
    StateStore& store_;
    std::map<std::string, ActivePolicy> policies_;
    uint32_t next_id_ = 1;
};

}  // namespace redir::agent
