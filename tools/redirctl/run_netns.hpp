#pragma once
// `redirctl run --netns`: the sandbox's own network namespace, joined to the
// agent's by a veth pair, its allowed egress forwarded and masqueraded — all
// of it gone when run ends, by the kernel's hand if run is SIGKILLed.
#include <memory>
#include <string>

#include "netns/masquerade.hpp"
#include "netns/namespace.hpp"
#include "netns/subnet_lease.hpp"

namespace redir::ctl {

// Where sandbox subnets come from unless --netns-pool / REDIR_NETNS_POOL says otherwise.
inline constexpr const char* kDefaultNetnsPool = "10.250.0.0/16";
// Subnet leases of concurrent runs (flock'ed files).
inline constexpr const char* kNetnsLockDir = "/run/redir/run-netns";

class RunNetns {
public:
    // A /30 from POOL, an anonymous namespace, veth "redir<slot>" here and
    // "eth0" there with addresses and a default route through us, forwarding
    // on the veth and the uplinks, and the egress table. Throws redir::Error.
    explicit RunNetns(const std::string& pool);
    ~RunNetns();
    RunNetns(const RunNetns&) = delete;
    RunNetns& operator=(const RunNetns&) = delete;

    int fd() const { return ns_.fd(); }
    std::string path() const { return ns_.path(); }        // for the agent (attach "netns")
    std::string gateway() const { return lease_.host_addr(); }  // the agent's address there (redirect target)
    std::string sandbox_addr() const { return lease_.sandbox_addr(); }
    const std::string& host_if() const { return host_if_; }

private:
    netns::SubnetLease lease_;
    netns::Namespace ns_;
    std::string host_if_;
    std::unique_ptr<netns::Masquerade> nat_;
};

// POOL, else $REDIR_NETNS_POOL, else kDefaultNetnsPool.
std::string netns_pool(const std::string& pool);

}  // namespace redir::ctl
