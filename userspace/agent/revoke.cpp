// Revocation on policy reload through sock_diag (see revoke.hpp).
#include "agent/revoke.hpp"

#include <bpf/bpf.h>
#include <dirent.h>
#include <fcntl.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "common/error.hpp"
#include "common/fd.hpp"
#include "common/special.hpp"
#include "loader/cgroup.hpp"

namespace redir::agent {

// ---- the kernel's decision, read from its maps --------------------------------

std::optional<redir_lpm_val> MapKernelView::lpm(uint32_t policy_id, const Addr& a) const {
    redir_lpm_key k{};
    k.prefixlen = REDIR_LPM_DATA_BITS;
    k.policy_id = policy_id;
    std::memcpy(k.addr, a.data(), 16);
    redir_lpm_val v{};
    if (bpf_map_lookup_elem(lpm_fd_, &k, &v) != 0) return std::nullopt;
    return v;
}

std::optional<redir_portset> MapKernelView::portset(uint32_t policy_id, uint32_t portset_id) const {
    redir_portset_key k{policy_id, portset_id};
    redir_portset v{};
    if (bpf_map_lookup_elem(portsets_fd_, &k, &v) != 0) return std::nullopt;
    return v;
}

std::optional<redir_dns_allow_val> MapKernelView::dns(uint64_t attach_cg, const Addr& a) const {
    redir_dns_allow_key k{};
    k.cgroup_id = attach_cg;
    std::memcpy(k.addr.b, a.data(), 16);
    redir_dns_allow_val v{};
    if (bpf_map_lookup_elem(dns_fd_, &k, &v) != 0) return std::nullopt;
    return v;
}

uint64_t MapKernelView::now_boot_ns() const {
    timespec ts{};
    clock_gettime(CLOCK_BOOTTIME, &ts);  // bpf_ktime_get_boot_ns()
    return static_cast<uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<uint64_t>(ts.tv_nsec);
}

namespace {

uint8_t portset_verdict(const KernelView& k, uint32_t policy_id, uint32_t portset_id, uint16_t port, uint8_t proto) {
    auto ps = k.portset(policy_id, portset_id);
    if (!ps) return REDIR_VERDICT_DENY;
    for (uint32_t i = 0; i < ps->count && i < REDIR_MAX_PORT_RANGES; ++i) {
        const auto& r = ps->r[i];
        if (r.proto == proto && port >= r.lo && port <= r.hi) return r.verdict;
    }
    return REDIR_VERDICT_DENY;
}

// bpf/redir.bpf.c policy_verdict(), line for line.
uint8_t policy_verdict(const KernelView& k, uint32_t policy_id, uint64_t attach_cg, const Addr& dst, uint16_t port,
                       uint8_t proto) {
    auto lv = k.lpm(policy_id, dst);
    if (lv) {
        uint8_t v = portset_verdict(k, policy_id, lv->portset_id, port, proto);
        if (v != REDIR_VERDICT_DENY) return v;
    }
    if (is_loopback(dst)) return REDIR_VERDICT_DENY;
    auto dv = k.dns(attach_cg, dst);
    if (!dv || dv->policy_id != policy_id || dv->expires_ns <= k.now_boot_ns()) return REDIR_VERDICT_DENY;
    if (lv && (lv->flags & REDIR_LPM_F_HAS_DENY) &&
        portset_verdict(k, policy_id, lv->deny_portset_id, port, proto) != REDIR_VERDICT_DENY)
        return REDIR_VERDICT_DENY;
    return portset_verdict(k, policy_id, dv->portset_id, port, proto);
}

bool is_zero(const redir_addr& a) {
    for (auto b : a.b)
        if (b) return false;
    return true;
}

bool same(const Addr& a, const redir_addr& b) { return std::memcmp(a.data(), b.b, 16) == 0; }

}  // namespace

bool still_allowed(const KernelView& k, const redir_config& cfg, const redir_attach_val& att, uint64_t attach_cg,
                   const SandboxSocket& s) {
    if (s.state && s.state->verdict == REDIR_VERDICT_REDIRECT) {
        switch (s.state->reason) {
            case REDIR_REASON_DNS: return true;  // always the agent's responder
            case REDIR_REASON_INFERENCE: return (att.flags & REDIR_ATTACH_F_INFERENCE) != 0;
            default: {
                // Through the inspecting relay: judged by where it really goes.
                Addr orig;
                std::memcpy(orig.data(), s.state->orig_addr.b, 16);
                if (is_never_reachable(orig)) return false;
                return policy_verdict(k, att.policy_id, attach_cg, orig, s.state->orig_port, s.proto) !=
                       REDIR_VERDICT_DENY;
            }
        }
    }
    // A direct connection: exactly what connect() would decide now.
    if (is_never_reachable(s.dst)) return false;
    if (s.dport == 53 && att.dns_port) return false;  // would now go to the responder
    if ((att.flags & REDIR_ATTACH_F_INFERENCE) && ((!is_zero(cfg.inference_vip4) && same(s.dst, cfg.inference_vip4)) ||
                                                   (!is_zero(cfg.inference_vip6) && same(s.dst, cfg.inference_vip6))))
        return false;  // would now go to the terminator
    if (s.own_netns && is_loopback(s.dst)) return true;
    // REDIRECT (inspect) is not enough: this connection bypasses the relay.
    return policy_verdict(k, att.policy_id, attach_cg, s.dst, s.dport, s.proto) == REDIR_VERDICT_ALLOW;
}

// ---- sock_diag ---------------------------------------------------------------

namespace {

constexpr uint32_t kTcpStates = (1u << TCP_ESTABLISHED) | (1u << TCP_SYN_SENT) | (1u << TCP_CLOSE_WAIT);
constexpr uint32_t kListen = 1u << TCP_LISTEN;
constexpr uint32_t kUdpConnected = 1u << TCP_ESTABLISHED;  // udp_diag reuses TCP state numbers

struct DiagSocket {
    inet_diag_msg msg{};
    uint64_t cgroup_id = 0;
    std::optional<redir_sk_state> state;
};

// One NETLINK_SOCK_DIAG socket, opened in a chosen network namespace.
class SockDiag {
public:
    explicit SockDiag(UniqueFd fd) : fd_(std::move(fd)) {}

    // Every socket of FAMILY/PROTO in STATES; SK_STATE_FD (>= 0) asks for the
    // socket's redir_sk_state. Throws redir::Error.
    std::vector<DiagSocket> dump(uint8_t family, uint8_t proto, uint32_t states, int sk_state_fd) const {
        struct {
            nlmsghdr nh;
            inet_diag_req_v2 req;
            nlattr storages;
            nlattr map_fd;
            uint32_t fd;
        } m{};
        m.nh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        m.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
        m.req.sdiag_family = family;
        m.req.sdiag_protocol = proto;
        m.req.idiag_states = states;
        size_t len = NLMSG_LENGTH(sizeof(inet_diag_req_v2));
        if (sk_state_fd >= 0) {
            m.storages.nla_type = NLA_F_NESTED | INET_DIAG_REQ_SK_BPF_STORAGES;
            m.storages.nla_len = sizeof(nlattr) * 2 + sizeof(uint32_t);
            m.map_fd.nla_type = SK_DIAG_BPF_STORAGE_REQ_MAP_FD;
            m.map_fd.nla_len = sizeof(nlattr) + sizeof(uint32_t);
            m.fd = static_cast<uint32_t>(sk_state_fd);
            len += m.storages.nla_len;
        }
        m.nh.nlmsg_len = static_cast<uint32_t>(len);
        send(&m, len);
        std::vector<DiagSocket> out;
        std::vector<char> buf(64 * 1024);
        for (;;) {
            ssize_t n = ::recv(fd_.get(), buf.data(), buf.size(), 0);
            if (n < 0) {
                if (errno == EINTR) continue;
                throw sys_error("reading the sock_diag dump failed");
            }
            for (auto* h = reinterpret_cast<nlmsghdr*>(buf.data()); NLMSG_OK(h, static_cast<unsigned>(n));
                 h = NLMSG_NEXT(h, n)) {
                if (h->nlmsg_type == NLMSG_DONE) return out;
                if (h->nlmsg_type == NLMSG_ERROR) {
                    int err = -reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;
                    errno = err;
                    throw sys_error("the kernel refused the sock_diag dump (family " + std::to_string(family) +
                                    ", protocol " + std::to_string(proto) + ")");
                }
                out.push_back(parse(h));
            }
        }
    }

    // SOCK_DESTROY of the socket S names (tuple + cookie); 0 or the errno.
    int destroy(uint8_t proto, const inet_diag_msg& s) const {
        struct {
            nlmsghdr nh;
            inet_diag_req_v2 req;
        } m{};
        m.nh.nlmsg_len = sizeof(m);
        m.nh.nlmsg_type = SOCK_DESTROY;
        m.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
        m.req.sdiag_family = s.idiag_family;
        m.req.sdiag_protocol = proto;
        m.req.idiag_states = ~0u;
        m.req.id = s.id;
        send(&m, sizeof(m));
        char buf[1024];
        for (;;) {
            ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) return errno;
            auto* h = reinterpret_cast<nlmsghdr*>(buf);
            if (!NLMSG_OK(h, static_cast<unsigned>(n)) || h->nlmsg_type != NLMSG_ERROR) return EPROTO;
            return -reinterpret_cast<nlmsgerr*>(NLMSG_DATA(h))->error;
        }
    }

private:
    void send(const void* m, size_t len) const {
        sockaddr_nl kernel{};
        kernel.nl_family = AF_NETLINK;
        if (::sendto(fd_.get(), m, len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof(kernel)) < 0)
            throw sys_error("sending a sock_diag request failed");
    }

    static DiagSocket parse(const nlmsghdr* h) {
        DiagSocket d;
        auto* msg = static_cast<const inet_diag_msg*>(NLMSG_DATA(h));
        d.msg = *msg;
        int rem = static_cast<int>(h->nlmsg_len) - static_cast<int>(NLMSG_LENGTH(sizeof(*msg)));
        auto* a = reinterpret_cast<const nlattr*>(reinterpret_cast<const char*>(msg) + NLMSG_ALIGN(sizeof(*msg)));
        for (; rem >= static_cast<int>(sizeof(nlattr)) && a->nla_len >= sizeof(nlattr) && a->nla_len <= rem;
             rem -= NLA_ALIGN(a->nla_len),
             a = reinterpret_cast<const nlattr*>(reinterpret_cast<const char*>(a) + NLA_ALIGN(a->nla_len))) {
            const char* payload = reinterpret_cast<const char*>(a) + NLA_HDRLEN;
            int plen = a->nla_len - NLA_HDRLEN;
            int type = a->nla_type & NLA_TYPE_MASK;
            if (type == INET_DIAG_CGROUP_ID && plen >= 8) std::memcpy(&d.cgroup_id, payload, 8);
            if (type == INET_DIAG_SK_BPF_STORAGES) d.state = storage_value(payload, plen);
        }
        return d;
    }

    // INET_DIAG_SK_BPF_STORAGES { SK_DIAG_BPF_STORAGE { MAP_ID, MAP_VALUE } }:
    // only the sk_state map was asked for.
    static std::optional<redir_sk_state> storage_value(const char* p, int len) {
        auto walk = [](const char* q, int l, auto&& f) {
            auto* a = reinterpret_cast<const nlattr*>(q);
            while (l >= static_cast<int>(sizeof(nlattr)) && a->nla_len >= sizeof(nlattr) && a->nla_len <= l) {
                f(a->nla_type & NLA_TYPE_MASK, reinterpret_cast<const char*>(a) + NLA_HDRLEN, a->nla_len - NLA_HDRLEN);
                l -= NLA_ALIGN(a->nla_len);
                a = reinterpret_cast<const nlattr*>(reinterpret_cast<const char*>(a) + NLA_ALIGN(a->nla_len));
            }
        };
        std::optional<redir_sk_state> out;
        walk(p, len, [&](int t, const char* q, int l) {
            if (t != SK_DIAG_BPF_STORAGE) return;
            walk(q, l, [&](int t2, const char* v, int vl) {
                if (t2 == SK_DIAG_BPF_STORAGE_MAP_VALUE && vl >= static_cast<int>(sizeof(redir_sk_state))) {
                    redir_sk_state st{};
                    std::memcpy(&st, v, sizeof(st));
                    out = st;
                }
            });
        });
        return out;
    }

    UniqueFd fd_;
};

UniqueFd diag_socket() {
    int s = ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (s < 0) throw sys_error("cannot open a NETLINK_SOCK_DIAG socket");
    return UniqueFd(s);
}

// A sock_diag socket inside the network namespace NETNS_PATH: made on a
// short-lived thread that joins it, so the agent itself never moves and
// keeps nothing in the namespace once the socket is closed.
UniqueFd diag_socket_in(const std::string& netns_path) {
    UniqueFd ns(::open(netns_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns) throw sys_error("cannot open network namespace " + netns_path);
    UniqueFd out;
    std::string err;
    std::thread([&] {
        if (::setns(ns.get(), CLONE_NEWNET) != 0) {
            err = "cannot enter network namespace " + netns_path + ": " + std::strerror(errno);
            return;
        }
        try {
            out = diag_socket();
        } catch (const std::exception& e) {
            err = e.what();
        }
    }).join();
    if (!out) throw Error(err);
    return out;
}

using NetnsId = std::pair<dev_t, ino_t>;

std::optional<NetnsId> netns_of(const std::string& ns_path) {
    struct stat st{};
    if (::stat(ns_path.c_str(), &st) != 0) return std::nullopt;
    return NetnsId{st.st_dev, st.st_ino};
}

// Cgroup ids of PATH and every cgroup below it, with the pids in them.
void walk_subtree(const std::string& path, std::set<uint64_t>& ids, std::vector<std::string>& pids, int depth = 0) {
    if (depth > REDIR_MAX_CGROUP_DEPTH) return;
    if (auto id = loader::cgroup_id_of(path)) ids.insert(*id);
    std::ifstream procs(path + "/cgroup.procs");
    for (std::string pid; std::getline(procs, pid);)
        if (!pid.empty()) pids.push_back(pid);
    DIR* d = ::opendir(path.c_str());
    if (!d) return;
    while (dirent* e = ::readdir(d)) {
        if (e->d_type != DT_DIR || std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
        walk_subtree(path + "/" + e->d_name, ids, pids, depth + 1);
    }
    ::closedir(d);
}

Addr addr_of(uint8_t family, const __be32 w[4]) {
    Addr a{};
    if (family == AF_INET) {
        a[10] = a[11] = 0xff;
        std::memcpy(&a[12], &w[0], 4);
    } else {
        std::memcpy(a.data(), w, 16);
    }
    return a;
}

std::string endpoint(const Addr& a, uint16_t port) {
    std::string s = addr_to_string(a);
    return (s.find(':') != std::string::npos ? "[" + s + "]" : s) + ":" + std::to_string(port);
}

struct Namespace {
    std::string path;  // "" = the agent's own
    bool own = true;
};

// Judges and destroys the sandbox sockets one namespace holds.
void revoke_in(const SockDiag& diag, bool agents_netns, const RevokeMaps& maps, const redir_config& cfg,
               const std::map<uint64_t, const RevokeTarget*>& owner, const KernelView& k, RevokeReport& rep) {
    for (uint8_t proto : {uint8_t(IPPROTO_TCP), uint8_t(IPPROTO_UDP)}) {
        const bool tcp = proto == IPPROTO_TCP;
        for (uint8_t family : {uint8_t(AF_INET), uint8_t(AF_INET6)}) {
            auto socks = diag.dump(family, proto, tcp ? kTcpStates | kListen : kUdpConnected, maps.sk_state);
            // Accepted sockets inherit the listener's cgroup: inbound, not dialled.
            std::set<uint16_t> listening;
            for (const auto& s : socks)
                if (tcp && s.msg.idiag_state == TCP_LISTEN && owner.count(s.cgroup_id))
                    listening.insert(ntohs(s.msg.id.idiag_sport));
            for (const auto& s : socks) {
                auto it = owner.find(s.cgroup_id);
                if (it == owner.end() || (tcp && s.msg.idiag_state == TCP_LISTEN)) continue;
                if (tcp && listening.count(ntohs(s.msg.id.idiag_sport))) continue;
                SandboxSocket ss;
                ss.dst = addr_of(s.msg.idiag_family, s.msg.id.idiag_dst);
                ss.dport = ntohs(s.msg.id.idiag_dport);
                ss.proto = tcp ? REDIR_PROTO_TCP : REDIR_PROTO_UDP;
                ss.own_netns = !agents_netns;
                ss.state = s.state;
                const RevokeTarget& t = *it->second;
                if (still_allowed(k, cfg, t.att, t.cgroup_id, ss)) {
                    ++rep.kept;
                    continue;
                }
                RevokedConnection rc;
                rc.cgroup_id = t.cgroup_id;
                rc.proto = tcp ? "tcp" : "udp";
                if (ss.state && ss.state->verdict == REDIR_VERDICT_REDIRECT) {
                    Addr orig;
                    std::memcpy(orig.data(), ss.state->orig_addr.b, 16);
                    rc.dst = endpoint(orig, ss.state->orig_port);
                } else {
                    rc.dst = endpoint(ss.dst, ss.dport);
                }
                rc.error = diag.destroy(proto, s.msg);
                rep.revoked.push_back(std::move(rc));
            }
        }
    }
}

}  // namespace

RevokeReport revoke_established(const RevokeMaps& maps, const redir_config& cfg,
                                const std::vector<RevokeTarget>& targets) {
    RevokeReport rep;
    if (targets.empty()) return rep;
    std::map<uint64_t, const RevokeTarget*> owner;
    std::vector<std::string> pids;
    for (const auto& t : targets) {
        std::set<uint64_t> ids;
        walk_subtree(t.cgroup_path, ids, pids);
        ids.insert(t.cgroup_id);
        for (auto id : ids) owner.emplace(id, &t);
    }
    // The agent's namespace, and every other one a sandbox process is in.
    std::vector<Namespace> spaces{{"", true}};
    std::set<NetnsId> seen;
    if (auto self = netns_of("/proc/self/ns/net")) seen.insert(*self);
    for (const auto& pid : pids) {
        std::string p = "/proc/" + pid + "/ns/net";
        auto id = netns_of(p);
        if (id && seen.insert(*id).second) spaces.push_back({p, false});
    }
    MapKernelView k(maps.lpm, maps.portsets, maps.dns_allow);
    for (const auto& ns : spaces) {
        try {
            SockDiag diag(ns.own ? diag_socket() : diag_socket_in(ns.path));
            revoke_in(diag, ns.own, maps, cfg, owner, k, rep);
        } catch (const std::exception& e) {
            if (ns.own) {
                // Nothing works here (no sock_diag, no SK storage dump): say so.
                rep.unsupported = e.what();
                return rep;
            }
            rep.notes.push_back(e.what());  // e.g. the only process there just left
        }
    }
    return rep;
}

}  // namespace redir::agent
