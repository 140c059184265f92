// rtnetlink through libnl-route: veth pairs, addresses, links up, default routes.
#include "rtnl.hpp"

#include <arpa/inet.h>
#include <linux/if.h>
#include <linux/rtnetlink.h>
#include <netlink/route/addr.h>
#include <netlink/route/link.h>
#include <netlink/route/link/veth.h>
#include <netlink/route/route.h>

#include <string_view>
#include <thread>

#include "common/error.hpp"

namespace redir::netns {
namespace {

// libnl objects own themselves through reference counts; these hold one.
struct LinkRef {
    rtnl_link* p = nullptr;
    ~LinkRef() {
        if (p) rtnl_link_put(p);
    }
};
struct AddrRef {
    nl_addr* p = nullptr;
    ~AddrRef() {
        if (p) nl_addr_put(p);
    }
};

std::string text_of(nl_addr* a) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (!a || !::inet_ntop(nl_addr_get_family(a), nl_addr_get_binary_addr(a), buf, sizeof(buf))) return "";
    return buf;
}

nl_sock* open_socket(const std::string& where) {
    nl_sock* sk = nl_socket_alloc();
    if (!sk) throw Error("cannot allocate a netlink socket " + where + ": out of memory");
    if (int err = nl_connect(sk, NETLINK_ROUTE); err != 0) {
        nl_socket_free(sk);
        throw Error("cannot open rtnetlink " + where + ": " + nl_geterror(err));
    }
    return sk;
}

AddrRef parse(const std::string& text, int family, const std::string& what) {
    AddrRef a;
    if (nl_addr_parse(text.c_str(), family, &a.p) != 0)
        throw Error(what + " '" + text + "' is not an IP address or prefix; write it as a.b.c.d[/n] or x::y[/n]");
    return a;
}

}  // namespace

Rtnl::Rtnl() : where_("in the current network namespace"), sock_(open_socket(where_), nl_socket_free) {}

Rtnl::Rtnl(const Namespace& ns)
    : where_("in network namespace " + ns.path()), sock_([&] {
          Inside in(ns);
          return open_socket(where_);
      }(), nl_socket_free) {}

bool Rtnl::has_link(const std::string& name) {
    LinkRef l;
    return rtnl_link_get_kernel(sock_.get(), 0, name.c_str(), &l.p) == 0;
}

std::string Rtnl::name_of(int index) {
    LinkRef l;
    if (rtnl_link_get_kernel(sock_.get(), index, nullptr, &l.p) != 0) return "";
    const char* n = rtnl_link_get_name(l.p);
    return n ? n : "";
}

std::optional<Rtnl::Link> Rtnl::link(int index) {
    LinkRef l;
    if (rtnl_link_get_kernel(sock_.get(), index, nullptr, &l.p) != 0) return std::nullopt;
    const char* type = rtnl_link_get_type(l.p);
    return Link{rtnl_link_get_ifindex(l.p), rtnl_link_get_link(l.p), rtnl_link_get_master(l.p),
                type && std::string_view(type) == "veth", type && std::string_view(type) == "bridge"};
}

int Rtnl::ifindex(const std::string& name) {
    LinkRef l;
    if (int err = rtnl_link_get_kernel(sock_.get(), 0, name.c_str(), &l.p); err != 0)
        throw Error("no interface " + name + " " + where_ + ": " + nl_geterror(err));
    return rtnl_link_get_ifindex(l.p);
}

void Rtnl::add_veth(const std::string& name, const std::string& peer_name, const Namespace& peer_ns) {
    rtnl_link* veth = rtnl_link_veth_alloc();
    if (!veth) throw Error("cannot allocate a veth description: out of memory");
    LinkRef peer{rtnl_link_veth_get_peer(veth)};
    rtnl_link_set_name(veth, name.c_str());
    rtnl_link_set_name(peer.p, peer_name.c_str());
    rtnl_link_set_ns_fd(peer.p, peer_ns.fd());
    int err = rtnl_link_add(sock_.get(), veth, NLM_F_CREATE | NLM_F_EXCL);
    rtnl_link_veth_release(veth);
    if (err != 0)
        throw Error("cannot create veth pair " + name + " / " + peer_name + " " + where_ + ": " + nl_geterror(err) +
                    (err == -NLE_EXIST ? " (an interface of that name exists: remove it or pick another)" : ""));
}

void Rtnl::set_up(const std::string& name) {
    LinkRef link;
    if (int err = rtnl_link_get_kernel(sock_.get(), 0, name.c_str(), &link.p); err != 0)
        throw Error("no interface " + name + " " + where_ + " to bring up: " + nl_geterror(err));
    LinkRef change{rtnl_link_alloc()};
    rtnl_link_set_flags(change.p, IFF_UP);
    if (int err = rtnl_link_change(sock_.get(), link.p, change.p, 0); err != 0)
        throw Error("cannot bring " + name + " up " + where_ + ": " + nl_geterror(err));
}

void Rtnl::wait_operational(const std::string& name, std::chrono::milliseconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        LinkRef link;
        if (int err = rtnl_link_get_kernel(sock_.get(), 0, name.c_str(), &link.p); err != 0)
            throw Error("no interface " + name + " " + where_ + ": " + nl_geterror(err));
        if (rtnl_link_get_operstate(link.p) == IF_OPER_UP) return;
        if (std::chrono::steady_clock::now() >= deadline)
            throw Error("interface " + name + " " + where_ + " is not operational " +
                        std::to_string(limit.count()) + " ms after it was brought up; is its peer up?");
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
}

void Rtnl::add_address(const std::string& name, const std::string& cidr) {
    AddrRef local = parse(cidr, AF_UNSPEC, "address");
    rtnl_addr* ra = rtnl_addr_alloc();
    rtnl_addr_set_ifindex(ra, ifindex(name));
    rtnl_addr_set_local(ra, local.p);
    rtnl_addr_set_flags(ra, IFA_F_NODAD);  // usable at once, no duplicate detection wait
    int err = rtnl_addr_add(sock_.get(), ra, 0);
    rtnl_addr_put(ra);
    if (err != 0) throw Error("cannot add " + cidr + " to " + name + " " + where_ + ": " + nl_geterror(err));
}

void Rtnl::add_default_route(const std::string& name, const std::string& gateway) {
    AddrRef gw = parse(gateway, AF_UNSPEC, "gateway");
    int family = nl_addr_get_family(gw.p);
    AddrRef dst = parse("default", family, "destination");
    rtnl_route* route = rtnl_route_alloc();
    rtnl_route_set_family(route, static_cast<uint8_t>(family));
    rtnl_route_set_table(route, RT_TABLE_MAIN);
    rtnl_route_set_scope(route, RT_SCOPE_UNIVERSE);
    rtnl_route_set_type(route, RTN_UNICAST);
    rtnl_route_set_protocol(route, RTPROT_STATIC);
    rtnl_route_set_dst(route, dst.p);
    rtnl_nexthop* nh = rtnl_route_nh_alloc();
    rtnl_route_nh_set_gateway(nh, gw.p);
    rtnl_route_nh_set_ifindex(nh, ifindex(name));
    rtnl_route_add_nexthop(route, nh);  // the route owns it now
    int err = rtnl_route_add(sock_.get(), route, NLM_F_CREATE | NLM_F_EXCL);
    rtnl_route_put(route);
    if (err != 0)
        throw Error("cannot add a default route via " + gateway + " on " + name + " " + where_ + ": " + nl_geterror(err));
}

bool Rtnl::delete_link(const std::string& name) {
    if (!has_link(name)) return false;
    LinkRef link{rtnl_link_alloc()};
    rtnl_link_set_name(link.p, name.c_str());
    if (int err = rtnl_link_delete(sock_.get(), link.p); err != 0)
        throw Error("cannot delete interface " + name + " " + where_ + ": " + nl_geterror(err));
    return true;
}

std::vector<Rtnl::DefaultRoute> Rtnl::default_routes() {
    nl_cache* cache = nullptr;
    if (int err = rtnl_route_alloc_cache(sock_.get(), AF_UNSPEC, 0, &cache); err != 0)
        throw Error("cannot read the routing table " + where_ + ": " + nl_geterror(err));
    std::vector<DefaultRoute> v4, v6;
    for (nl_object* o = nl_cache_get_first(cache); o; o = nl_cache_get_next(o)) {
        auto* r = reinterpret_cast<rtnl_route*>(o);
        nl_addr* dst = rtnl_route_get_dst(r);
        if (rtnl_route_get_table(r) != RT_TABLE_MAIN || rtnl_route_get_type(r) != RTN_UNICAST ||
            (dst && nl_addr_get_prefixlen(dst) != 0))
            continue;
        const int family = rtnl_route_get_family(r);
        auto& out = family == AF_INET ? v4 : v6;
        for (int i = 0; i < rtnl_route_get_nnexthops(r); ++i) {
            rtnl_nexthop* nh = rtnl_route_nexthop_n(r, i);
            out.push_back({text_of(rtnl_route_nh_get_gateway(nh)), rtnl_route_nh_get_ifindex(nh), family});
        }
    }
    nl_cache_free(cache);
    v4.insert(v4.end(), v6.begin(), v6.end());
    return v4;
}

std::vector<std::string> default_gateways(const Namespace& ns) {
    Rtnl rt(ns);
    std::vector<std::string> out;
    for (auto& r : rt.default_routes())
        if (!r.gateway.empty()) out.push_back(r.gateway);
    return out;
}

std::vector<std::string> default_gateways(const std::string& netns_path) {
    return default_gateways(Namespace::open(netns_path));
}

int host_peer(const Namespace& ns, int target_ifindex) {
    Rtnl inside(ns);
    Rtnl here;
    for (auto& r : inside.default_routes()) {
        auto in = inside.link(r.ifindex);
        if (!in || !in->veth || !in->peer) continue;
        auto out = here.link(in->peer);
        if (!out || !out->veth || out->peer != in->ifindex) continue;
        if (out->ifindex == target_ifindex || out->master == target_ifindex) return out->ifindex;
    }
    return 0;
}

}  // namespace redir::netns
