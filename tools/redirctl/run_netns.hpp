#pragma once
// `redirctl run --netns`: the sandbox's own network namespace, joined to the
// agent's by a veth pair, its allowed egress forwarded and masqueraded — all
// of it gone when run ends, by the kernel's hand if run is SIGKILLed.
#include <memory>
#include <optional>
#include <string>

#include "netns/masquerade.hpp"
#include "netns/namespace.hpp"
#include "netns/rtnl.hpp"
#include "netns/subnet_lease.hpp"

namespace redir::ctl {

// Where sandbox subnets come from unless --netns-pool / REDIR_NETNS_POOL says otherwise.
inline constexpr const char* kDefaultNetnsPool = "10.250.0.0/16";
// Where their IPv6 /64s come from (the slot of the IPv4 lease numbers the
// /64) unless --netns-pool6 / REDIR_NETNS_POOL6 says otherwise; "none": no IPv6.
// A ULA prefix of the "redir" letters: fd72:6564:6972 = "r" "ed" "ir".
inline constexpr const char* kDefaultNetnsPool6 = "fd72:6564:6972::/48";
// Subnet leases of concurrent runs (flock'ed files).
inline constexpr const char* kNetnsLockDir = "/run/redir/run-netns";

class RunNetns {
public:
    // A /30 from POOL (and the /64 of the same slot from POOL6 unless it is
    // "none"), an anonymous namespace, veth "redir<slot>" here and "eth0"
    // there with addresses and default routes through us, forwarding on the
    // veth and the uplinks, and the egress table. Throws redir::Error; IPv6
    // that cannot be set up (disabled here) is left out with a warning.
    RunNetns(const std::string& pool, const std::string& pool6);
    ~RunNetns();
    RunNetns(const RunNetns&) = delete;
    RunNetns& operator=(const RunNetns&) = delete;

    int fd() const { return ns_.fd(); }
    std::string path() const { return ns_.path(); }        // for the agent (attach "netns")
    std::string gateway() const { return lease_.host_addr(); }  // the agent's address there (redirect target)
    std::string sandbox_addr() const { return lease_.sandbox_addr(); }
    // The agent's IPv6 address there; empty when the sandbox has no IPv6.
    std::string gateway6() const { return v6_ ? v6_->host_addr : ""; }
    std::string sandbox_addr6() const { return v6_ ? v6_->sandbox_addr : ""; }
    // For attach --redirect-via: the agent's address(es) there, "v4[,v6]".
    std::string redirect_via() const;
    const std::string& host_if() const { return host_if_; }

private:
    // Addresses, default route, no router advertisements on either end.
    void configure_v6(netns::Rtnl& here, netns::Rtnl& inside);
    // Forwarding on the veth and the uplinks of the default routes.
    void forward(netns::Rtnl& here);

    netns::SubnetLease lease_;
    netns::Namespace ns_;
    std::string host_if_;
    std::optional<netns::Subnet6> v6_;
    std::string pool6_;
    std::unique_ptr<netns::Masquerade> nat_;
};

// POOL, else $REDIR_NETNS_POOL, else kDefaultNetnsPool.
std::string netns_pool(const std::string& pool);
// POOL6, else $REDIR_NETNS_POOL6, else kDefaultNetnsPool6.
std::string netns_pool6(const std::string& pool6);

}  // namespace redir::ctl
