#pragma once
// Revocation on policy reload: established TCP connections and connected UDP
// sockets of attached sandboxes whose destination the new policy no longer
// allows are destroyed the kernel's own way (SOCK_DESTROY through sock_diag;
// the application sees ECONNABORTED/reset). Each socket's destination is
// judged with the very maps and logic the BPF programs use at connect().
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/cidr.hpp"
#include "redir/attach.h"
#include "redir/config.h"
#include "redir/dns.h"
#include "redir/origdst.h"
#include "redir/policy.h"

namespace redir::agent {

// What the BPF programs look up at connect(), read from userspace.
class KernelView {
public:
    virtual ~KernelView() = default;
    // Longest-prefix match in redir_policy_lpm for POLICY_ID.
    virtual std::optional<redir_lpm_val> lpm(uint32_t policy_id, const Addr& a) const = 0;
    virtual std::optional<redir_portset> portset(uint32_t policy_id, uint32_t portset_id) const = 0;
    virtual std::optional<redir_dns_allow_val> dns(uint64_t attach_cg, const Addr& a) const = 0;
    virtual uint64_t now_boot_ns() const = 0;
};

// The kernel maps themselves (fds stay owned by the Datapath).
class MapKernelView : public KernelView {
public:
    MapKernelView(int lpm_fd, int portsets_fd, int dns_allow_fd)
        : lpm_fd_(lpm_fd), portsets_fd_(portsets_fd), dns_fd_(dns_allow_fd) {}
    std::optional<redir_lpm_val> lpm(uint32_t policy_id, const Addr& a) const override;
    std::optional<redir_portset> portset(uint32_t policy_id, uint32_t portset_id) const override;
    std::optional<redir_dns_allow_val> dns(uint64_t attach_cg, const Addr& a) const override;
    uint64_t now_boot_ns() const override;

private:
    int lpm_fd_, portsets_fd_, dns_fd_;
};

// One connected socket of a sandbox as sock_diag reports it.
struct SandboxSocket {
    Addr dst{};
    uint16_t dport = 0;
    uint8_t proto = 0;       // REDIR_PROTO_TCP / REDIR_PROTO_UDP
    bool own_netns = false;  // not the agent's network namespace
    std::optional<redir_sk_state> state;  // set when connect() was redirected (or a UDP redirect forgotten)
};

// Whether SOCK may stay open under the attachment ATT of ATTACH_CG, with the
// maps already holding the new policy and the revalidated DNS admissions.
// Mirrors bpf/redir.bpf.c decide(); a connection the kernel would now
// redirect (inspect) but that runs direct is not allowed. Redirected ones are
// judged by their original destination: DNS stays, inference stays while the
// policy enables it, inspected ones stay while their destination is allowed.
bool still_allowed(const KernelView& k, const redir_config& cfg, const redir_attach_val& att, uint64_t attach_cg,
                   const SandboxSocket& sock);

struct RevokeTarget {
    uint64_t cgroup_id = 0;    // the attached cgroup
    std::string cgroup_path;   // its subtree is searched for sockets
    redir_attach_val att{};    // the attachment as flipped to the new policy
};

struct RevokedConnection {
    uint64_t cgroup_id = 0;  // attached cgroup
    std::string proto;       // "tcp" / "udp"
    std::string dst;         // "addr:port" as connected (redirected: the original)
    int error = 0;           // 0 = destroyed, else the errno SOCK_DESTROY returned
};

struct RevokeReport {
    std::vector<RevokedConnection> revoked;
    std::size_t kept = 0;     // connected sockets of the sandboxes left alone
    std::string unsupported;  // non-empty: this kernel cannot do it (why); nothing was reset
    std::vector<std::string> notes;  // namespaces that could not be examined, and why
};

struct RevokeMaps {
    int lpm = -1, portsets = -1, dns_allow = -1, sk_state = -1;
};

// Examines every TCP (established, SYN sent, close-wait) and connected UDP
// socket of the targets' cgroup subtrees, in the agent's network namespace
// and in every namespace a process of the subtree is in, and destroys those
// still_allowed() refuses. Sockets accepted from a listener of the sandbox
// (inbound) are left alone: policy governs what the sandbox dials.
RevokeReport revoke_established(const RevokeMaps& maps, const redir_config& cfg,
                                const std::vector<RevokeTarget>& targets);

}  // namespace redir::agent
