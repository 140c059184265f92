#pragma once
// What a sandbox's policy says about its inference (policy "inference"), and
// the table of it for every attached sandbox: published by the agent's thread
// after each change, read by the terminator's threads once per request.
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "terminator/inference_limits.hpp"
#include "terminator/store.hpp"

namespace redir::terminator {

struct SandboxInference {
    std::string route = kDefaultRoute;  // inference.route
    bool provider_fetch = false;        // inference.provider_fetch
    InferenceLimits limits;             // inference.limits
};

class SandboxInferenceTable {
public:
    using Map = std::unordered_map<std::uint64_t, SandboxInference>;

    // Replaces the whole table; readers see the old one or the new one, never a mix.
    void publish(Map m) {
        auto next = std::make_shared<const Map>(std::move(m));
        std::lock_guard lk(mu_);
        map_ = std::move(next);
        // After the swap, under the lock: whoever reads the new generation
        // and then calls find() finds the new map.
        generation_.fetch_add(1, std::memory_order_release);
    }

    // Changes with every publish; never 0. An answer of find() asked after
    // reading generation G is current for as long as generation() still
    // reads G (the gateway reuses it per connection while it does).
    std::uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

    // The settings of attached cgroup CGROUP_ID; the defaults (default route,
    // no provider-side fetches) for one not in the table.
    SandboxInference find(std::uint64_t cgroup_id) const {
        std::shared_ptr<const Map> m;
        {
            std::lock_guard lk(mu_);
            m = map_;
        }
        auto it = m->find(cgroup_id);
        return it == m->end() ? SandboxInference{} : it->second;
    }

private:
    mutable std::mutex mu_;
    std::shared_ptr<const Map> map_ = std::make_shared<const Map>();
    std::atomic<std::uint64_t> generation_{1};
};

}  // namespace redir::terminator
