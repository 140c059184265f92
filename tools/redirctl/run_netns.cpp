// `redirctl run --netns`: namespace, veth, routes, forwarding and egress table.
#include "run_netns.hpp"

#include <cstdlib>

#include "common/error.hpp"
#include "netns/forwarding.hpp"
#include "netns/rtnl.hpp"

namespace redir::ctl {
namespace {

constexpr const char* kSandboxIf = "eth0";
constexpr int kSlotTries = 16;  // slots whose interface name is taken by someone else

std::string veth_name(const netns::SubnetLease& l) { return "redir" + std::to_string(l.slot()); }

// The first slot whose lock is free and whose interface name nobody uses.
netns::SubnetLease claim(const std::string& pool) {
    netns::Rtnl here;
    uint32_t from = 0;
    for (int i = 0; i < kSlotTries; ++i) {
        auto lease = netns::SubnetLease::acquire(pool, kNetnsLockDir, from);
        if (!here.has_link(veth_name(lease))) return lease;
        from = lease.slot() + 1;
    }
    throw Error("interfaces redir<N> exist for " + std::to_string(kSlotTries) +
                " free subnet slots of pool " + pool + "; remove leftovers with `ip link del redirN`");
}

}  // namespace

std::string netns_pool(const std::string& pool) {
    if (!pool.empty()) return pool;
    if (const char* e = std::getenv("REDIR_NETNS_POOL"); e && *e) return e;
    return kDefaultNetnsPool;
}

RunNetns::RunNetns(const std::string& pool)
    : lease_(claim(pool)), ns_(netns::Namespace::create_anonymous()), host_if_(veth_name(lease_)) {
    const std::string prefix = "/" + std::to_string(netns::SubnetLease::kPrefix);
    netns::Rtnl here;
    here.add_veth(host_if_, kSandboxIf, ns_);
    try {
        here.add_address(host_if_, gateway() + prefix);
        here.set_up(host_if_);
        netns::Rtnl inside(ns_);
        inside.set_up("lo");
        inside.add_address(kSandboxIf, sandbox_addr() + prefix);
        inside.set_up(kSandboxIf);
        inside.add_default_route(kSandboxIf, gateway());
        // Packets are forwarded only when they arrive on an interface that
        // forwards: the sandbox's veth (out) and the uplinks (answers back).
        netns::enable_forwarding(host_if_);
        for (auto& r : here.default_routes())
            if (auto up = here.name_of(r.ifindex); !up.empty() && up != host_if_) netns::enable_forwarding(up);
        nat_ = std::make_unique<netns::Masquerade>(
            netns::EgressPlan{"redir_run_" + std::to_string(lease_.slot()), host_if_, lease_.subnet(), gateway(), pool});
        inside.wait_operational(kSandboxIf);
        here.wait_operational(host_if_);
    } catch (...) {
        here.delete_link(host_if_);
        throw;
    }
}

RunNetns::~RunNetns() {
    nat_.reset();
    // At once, not when the kernel gets round to the namespace: the next run
    // may take this slot right after.
    try {
        netns::Rtnl().delete_link(host_if_);
    } catch (...) {
        // The namespace's end takes the pair with it anyway.
    }
}

}  // namespace redir::ctl
