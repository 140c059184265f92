#pragma once
// rtnetlink through libnl-route: veth pairs, addresses, links up, default
// routes, and the default-route gateway of any namespace.
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "netns/namespace.hpp"

struct nl_sock;

namespace redir::netns {

// A NETLINK_ROUTE socket bound for good to the namespace it was opened in.
class Rtnl {
public:
    // In the calling thread's namespace.
    Rtnl();
    // Inside NS (the caller's thread stays where it is).
    explicit Rtnl(const Namespace& ns);

    // Index of interface NAME; throws if there is none.
    int ifindex(const std::string& name);
    bool has_link(const std::string& name);
    // Name of interface IFINDEX; empty if there is none.
    std::string name_of(int ifindex);
    struct Link {
        int ifindex = 0;
        int peer = 0;    // IFLA_LINK: a veth's peer index (in the peer's namespace)
        int master = 0;  // the bridge it is a port of, 0 if none
        bool veth = false;
        bool bridge = false;
    };
    // Interface IFINDEX; nullopt if there is none.
    std::optional<Link> link(int ifindex);
    // A veth pair: NAME here, PEER_NAME created directly in PEER_NS.
    void add_veth(const std::string& name, const std::string& peer_name, const Namespace& peer_ns);
    void set_up(const std::string& name);
    // Waits (up to LIMIT) until NAME is operationally up: the kernel drops
    // packets on a link that is up but not yet activated (linkwatch, up to 1 s).
    void wait_operational(const std::string& name, std::chrono::milliseconds limit = std::chrono::seconds(3));
    // CIDR "a.b.c.d/n" or "x::y/n" on interface NAME (no duplicate detection wait).
    void add_address(const std::string& name, const std::string& cidr);
    // Default route through GATEWAY (v4 or v6) on interface NAME.
    void add_default_route(const std::string& name, const std::string& gateway);
    // Deletes interface NAME (a veth takes its peer with it); false if absent.
    bool delete_link(const std::string& name);

    struct DefaultRoute {
        std::string gateway;  // empty for a device-only route
        int ifindex = 0;
        int family = 0;  // AF_INET or AF_INET6
    };
    // Default routes of the main table, IPv4 first.
    std::vector<DefaultRoute> default_routes();

private:
    std::string where_;  // "in network namespace X", for messages
    std::unique_ptr<nl_sock, void (*)(nl_sock*)> sock_;
};

// Gateways of the default routes in namespace NS, IPv4 first; empty when it
// has none. For a sandbox joined by a veth pair this is the host side's
// address: where the agent's redirects for it must land.
std::vector<std::string> default_gateways(const Namespace& ns);
// The same for the namespace at NETNS_PATH.
std::vector<std::string> default_gateways(const std::string& netns_path);

// The host end, in the caller's namespace, of the veth that carries the
// default route of namespace NS, when that end is TARGET_IFINDEX
// itself or a port of it (a bridge); 0 otherwise (not a veth, peer elsewhere).
// Both ends are checked against each other: interface numbers repeat across
// namespaces, so one side alone could name another container's port.
// Takes the namespace already open, not a path: the caller's other lookups
// must be of the same namespace (a /proc/PID path can name another one later).
int host_peer(const Namespace& ns, int target_ifindex);

}  // namespace redir::netns
