// `redirctl run --netns`: namespace, veth, routes, forwarding and egress table.
#include "run_netns.hpp"

#include <sys/socket.h>

#include <cstdlib>
#include <iostream>

#include "common/error.hpp"
#include "netns/forwarding.hpp"

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

std::string from_env(const std::string& given, const char* var, const char* fallback) {
    if (!given.empty()) return given;
    if (const char* e = std::getenv(var); e && *e) return e;
    return fallback;
}

}  // namespace

std::string netns_pool(const std::string& pool) { return from_env(pool, "REDIR_NETNS_POOL", kDefaultNetnsPool); }
std::string netns_pool6(const std::string& pool6) {
    return from_env(pool6, "REDIR_NETNS_POOL6", kDefaultNetnsPool6);
}

RunNetns::RunNetns(const std::string& pool, const std::string& pool6)
    : lease_(claim(pool)), ns_(netns::Namespace::create_anonymous()), host_if_(veth_name(lease_)) {
    // Checked before anything exists: a bad pool is the caller's mistake, not a missing kernel feature.
    if (pool6 != "none") v6_ = netns::subnet6_of(pool6, lease_.slot()), pool6_ = pool6;
    const std::string prefix = "/" + std::to_string(netns::SubnetLease::kPrefix);
    netns::Rtnl here;
    here.add_veth(host_if_, kSandboxIf, ns_);
    try {
        here.add_address(host_if_, gateway() + prefix);
        netns::Rtnl inside(ns_);
        if (v6_) configure_v6(here, inside);
        here.set_up(host_if_);
        inside.set_up("lo");
        inside.add_address(kSandboxIf, sandbox_addr() + prefix);
        inside.set_up(kSandboxIf);
        inside.add_default_route(kSandboxIf, gateway());
        if (v6_) inside.add_default_route(kSandboxIf, gateway6());
        forward(here);
        netns::EgressPlan plan{"redir_run_" + std::to_string(lease_.slot()), host_if_, lease_.subnet(), gateway(), pool};
        if (v6_) plan.subnet6 = v6_->subnet, plan.agent_addr6 = gateway6(), plan.pool6 = pool6_;
        nat_ = std::make_unique<netns::Masquerade>(plan);
        inside.wait_operational(kSandboxIf);
        here.wait_operational(host_if_);
    } catch (...) {
        here.delete_link(host_if_);
        throw;
    }
}

void RunNetns::configure_v6(netns::Rtnl& here, netns::Rtnl& inside) {
    try {
        // Before either end is up: a router advertisement sent from the
        // sandbox must not give the agent's namespace a route or an address,
        // and nothing may reconfigure the sandbox's own addressing.
        netns::set_ipv6_conf(host_if_, "accept_ra", "0");
        {
            netns::Inside in(ns_);
            netns::set_ipv6_conf(kSandboxIf, "accept_ra", "0");
            netns::set_ipv6_conf(kSandboxIf, "autoconf", "0");
        }
        // No duplicate detection (add_address): both ends are usable at once.
        here.add_address(host_if_, gateway6() + "/64");
        inside.add_address(kSandboxIf, sandbox_addr6() + "/64");
    } catch (const Error& e) {
        std::cerr << "redirctl: warning: the sandbox gets no IPv6 (" << e.what() << ")\n";
        v6_.reset();
    }
}

void RunNetns::forward(netns::Rtnl& here) {
    // Packets are forwarded only when they arrive on an interface that
    // forwards: the sandbox's veth (out) and the uplinks (answers back).
    netns::enable_forwarding(host_if_);
    auto routes = here.default_routes();
    for (auto& r : routes)
        if (auto up = here.name_of(r.ifindex); !up.empty() && up != host_if_ && r.family == AF_INET)
            netns::enable_forwarding(up);
    if (!v6_) return;
    try {
        netns::enable_forwarding6(host_if_);
        for (auto& r : routes)
            if (auto up = here.name_of(r.ifindex); !up.empty() && up != host_if_ && r.family == AF_INET6)
                netns::enable_forwarding6(up);
    } catch (const Error& e) {
        // The agent stays reachable over IPv6 (it is on the link); only egress beyond it is lost.
        std::cerr << "redirctl: warning: the sandbox's IPv6 egress is not forwarded: " << e.what() << "\n";
    }
}

std::string RunNetns::redirect_via() const {
    return v6_ ? gateway() + "%" + host_if_ + "," + gateway6() + "%" + host_if_ : gateway() + "%" + host_if_;
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
