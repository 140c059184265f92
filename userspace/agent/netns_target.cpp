// Resolution of a sandbox namespace's redirect target: gateway lookup through
// userspace/netns (rtnetlink), interface lookup through getifaddrs.
#include "agent/netns_target.hpp"

#include <ifaddrs.h>
#include <net/if.h>

#include <algorithm>
#include <map>
#include <memory>
#include <vector>

#include "common/addr.hpp"
#include "common/error.hpp"
#include "common/netns_cookie.hpp"
#include "netns/namespace.hpp"
#include "netns/rtnl.hpp"

namespace redir::agent {
namespace {

bool is_link_local(const redir_addr& a) { return !addr_is_v4(a) && a.b[0] == 0xfe && (a.b[1] & 0xc0) == 0x80; }

// Every address of the agent's namespace and the interfaces holding it.
std::multimap<std::string, std::string> local_addresses() {
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) throw sys_error("cannot list redird's interface addresses");
    std::unique_ptr<ifaddrs, void (*)(ifaddrs*)> own(list, ::freeifaddrs);
    std::multimap<std::string, std::string> out;
    for (auto* i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr || (i->ifa_addr->sa_family != AF_INET && i->ifa_addr->sa_family != AF_INET6)) continue;
        if (auto a = addr_from_sockaddr(i->ifa_addr, nullptr)) out.emplace(addr_to_string(*a), i->ifa_name);
    }
    return out;
}

}  // namespace

enforce::RedirectTarget resolve_redirect_target(const std::string& netns_path, const std::string& redirect_via) {
    enforce::RedirectTarget t;
    // Opened once: the gateways and the host's veth end are looked up in the
    // namespace the cookie names, even if the path names another one by then.
    const auto ns = netns::Namespace::open(netns_path);
    t.netns_cookie = ns.cookie();
    if (t.netns_cookie == current_netns_cookie()) return {};  // shares redird's namespace: loopback

    // "IP[%DEV][,IP[%DEV]]": at most one per IP version; given ones must fit,
    // gateways found in the namespace are only suggestions.
    struct Candidate {
        std::string addr, device;
    };
    std::vector<Candidate> candidates;
    const bool given = !redirect_via.empty();
    if (given) {
        for (size_t from = 0; from <= redirect_via.size();) {
            size_t comma = std::min(redirect_via.find(',', from), redirect_via.size());
            std::string one = redirect_via.substr(from, comma - from);
            auto pct = one.find('%');
            candidates.push_back({one.substr(0, pct), pct == std::string::npos ? "" : one.substr(pct + 1)});
            from = comma + 1;
        }
    } else {
        for (auto& g : netns::default_gateways(ns)) candidates.push_back({g, ""});
        if (candidates.empty())
            throw Error("network namespace " + netns_path +
                        " has no default route; give redird's address reachable from it with --redirect-via IP");
    }
    auto local = local_addresses();
    for (auto& [c, device] : candidates) {
        auto a = addr_parse(c);
        if (!a) throw Error("--redirect-via " + c + " is not an IP address");
        auto& slot = addr_is_v4(*a) ? t.addr4 : t.addr6;
        if (given && !addr_is_zero(slot))
            throw Error("--redirect-via names two IPv" + std::string(addr_is_v4(*a) ? "4" : "6") +
                        " addresses; give at most one per IP version");
        if (is_link_local(*a)) {
            // Needs a scope: the interface's global address serves instead.
            if (given)
                throw Error("--redirect-via " + c + " is link-local, which sandboxes never reach; give the agent's "
                            "global or ULA address on the sandbox's veth");
            continue;
        }
        auto [lo, hi] = local.equal_range(addr_to_string(*a));
        std::vector<std::string> ifs;
        for (auto it = lo; it != hi; ++it)
            if (device.empty() || it->second == device) ifs.push_back(it->second);
        if (ifs.empty())
            throw Error(c + (device.empty() ? "" : "%" + device) + " (the redirect target of " + netns_path +
                        ") is not an address of redird's network namespace" +
                        (device.empty() ? "" : " on " + device) +
                        "; give the host side of the sandbox's veth with --redirect-via IP");
        if (ifs.size() > 1)
            throw Error(c + " is on several interfaces of redird's namespace (" + ifs[0] + ", " + ifs[1] +
                        "); name the sandbox's: --redirect-via " + c + "%IFNAME");
        if (t.device.empty()) t.device = ifs[0];
        if (ifs[0] != t.device) {
            if (given)
                throw Error("--redirect-via names addresses on two interfaces (" + t.device + ", " + ifs[0] +
                            "); both IP versions must land on the sandbox's one veth");
            continue;
        }
        slot = *a;
    }
    if (t.device.empty())
        throw Error("no usable redirect target for " + netns_path +
                    " (its gateways are link-local only); give one with --redirect-via IP");
    // The other family: the same interface's first global address of it.
    for (auto& [addr, ifname] : local) {
        if (ifname != t.device) continue;
        auto a = addr_parse(addr);
        if (!a || is_link_local(*a)) continue;
        auto& slot = addr_is_v4(*a) ? t.addr4 : t.addr6;
        if (addr_is_zero(slot)) slot = *a;
    }
    t.ifindex = ::if_nametoindex(t.device.c_str());
    if (!t.ifindex) throw sys_error("interface " + t.device + " vanished while attaching " + netns_path);
    // The guard judges every packet of its interface by one sandbox's policy:
    // on a bridge shared by several containers (docker0, cni0) it must sit on
    // this sandbox's own port, never on the bridge.
    int port = netns::host_peer(ns, static_cast<int>(t.ifindex));
    if (!port) {
        // On the bridge itself it would judge every container there by this
        // one's policy; unguarded, a packet socket would bypass the policy.
        // Fail closed: the attach is refused (docs/containers.md).
        auto l = netns::Rtnl().link(static_cast<int>(t.ifindex));
        if (l && l->bridge)
            throw Error("cannot place the node-side guard of " + netns_path + ": its default route does not leave "
                        "through a veth whose host end is a port of bridge " + t.device +
                        " (macvlan, ipvlan, a veth of another namespace?); redir refuses to attach a sandbox whose "
                        "hand-built packets it cannot judge: give it a veth port on " + t.device);
    }
    t.guard_ifindex = port ? static_cast<uint32_t>(port) : t.ifindex;
    return t;
}

}  // namespace redir::agent
