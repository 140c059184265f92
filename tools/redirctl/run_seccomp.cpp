// The seccomp filter of `redirctl run` sandboxes: only socket families the
// kernel hooks govern, and no io_uring, on any kernel.
#include "run_seccomp.hpp"

#include "run_landlock.hpp"

#include <seccomp.h>
#include <sys/prctl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

namespace redir::ctl {
namespace {

struct CtxFree {
    void operator()(scmp_filter_ctx c) const { seccomp_release(c); }
};
using Ctx = std::unique_ptr<void, CtxFree>;

struct SockOpt {
    unsigned long level, name;
};
constexpr SockOpt kSourceRouteOptions[] = {
    {0 /* IPPROTO_IP */, 4 /* IP_OPTIONS */},
    {41 /* IPPROTO_IPV6 */, 57 /* IPV6_RTHDR */},
    {41, 5 /* IPV6_2292RTHDR */},
    {41, 6 /* IPV6_2292PKTOPTIONS */},
};
constexpr unsigned long kTiocsti = 0x5412;    // TIOCSTI
constexpr unsigned long kTioclinux = 0x541C;  // TIOCLINUX
constexpr int kHighestAllowed = 16;  // AF_NETLINK: every family above it is refused by one rule

bool allowed(int family) {
    return std::find(std::begin(kRunSocketFamilies), std::end(kRunSocketFamilies), family) !=
           std::end(kRunSocketFamilies);
}

int refuse_other_families(scmp_filter_ctx ctx, int syscall) {
    // The full 64-bit argument is compared: garbage in the upper half lands
    // in the "above" rule (refused), never on an allowed value by accident.
    if (int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), syscall, 1,
                                  SCMP_A0(SCMP_CMP_GT, static_cast<scmp_datum_t>(kHighestAllowed))))
        return rc;
    for (int f = 0; f < kHighestAllowed; f++)
        if (!allowed(f))
            if (int rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), syscall, 1,
                                          SCMP_A0(SCMP_CMP_EQ, static_cast<scmp_datum_t>(f))))
                return rc;
    return 0;
}

}  // namespace

std::string install_run_seccomp() {
    Ctx ctx(seccomp_init(SCMP_ACT_ALLOW));
    if (!ctx) return "cannot create the sandbox's seccomp filter";
    int rc = refuse_other_families(ctx.get(), SCMP_SYS(socket));
    if (!rc) rc = refuse_other_families(ctx.get(), SCMP_SYS(socketpair));
    for (int sc : {SCMP_SYS(io_uring_setup), SCMP_SYS(io_uring_enter), SCMP_SYS(io_uring_register)})
        if (!rc) rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), sc, 0);
    // Source routing: the connect/sendmsg programs judge the first hop only.
    // An IPv6 routing header (a Segment Routing Header needs no capability)
    // or IPv4 IP_OPTIONS would carry the packet on to a denied address.
    for (auto [level, name] : kSourceRouteOptions)
        if (!rc)
            rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), SCMP_SYS(setsockopt), 2,
                                  SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, level),
                                  SCMP_A2(SCMP_CMP_MASKED_EQ, 0xffffffffUL, name));
    // TIOCSTI pushes input into the terminal the command shares with the
    // user's shell, which runs it outside the sandbox after run returns;
    // TIOCLINUX can do the same on a virtual console. The request is an
    // unsigned int: only the low 32 bits count.
    for (unsigned long req : {kTiocsti, kTioclinux})
        if (!rc)
            rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(EPERM), SCMP_SYS(ioctl), 1,
                                  SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffUL, req));
    if (rc) return std::string("cannot build the sandbox's seccomp filter: ") + std::strerror(-rc);
    if ((rc = seccomp_load(ctx.get())))
        return std::string("cannot install the sandbox's seccomp filter: ") + std::strerror(-rc);
    return "";
}

loader::FeatureCheck run_sandbox_check() {
    loader::FeatureCheck c;
    c.name = "run_sandbox";
    c.required = false;
    // PR_GET_SECCOMP fails with EINVAL on kernels built without seccomp.
    c.ok = ::prctl(PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 && seccomp_api_get() >= 1;
    c.detail = c.ok ? "`redirctl run` sandboxes refuse every socket family but unix/inet/inet6/netlink, and "
                      "io_uring, through seccomp (on any kernel; attached cgroups rely on lsm_cgroup for this)"
                    : "this kernel has no seccomp filters: `redirctl run` refuses to start commands";
    int abi = landlock_abi();
    c.detail += abi >= 6 ? "; Landlock (ABI " + std::to_string(abi) + ") confines them to their own abstract unix "
                           "sockets and signals"
                         : "; LIMITED: without Landlock ABI 6 (Linux 6.12) they can connect to host services on "
                           "abstract unix sockets (shared per network namespace)";
    return c;
}

}  // namespace redir::ctl
