// Landlock scoping for `redirctl run` sandboxes (see run_landlock.hpp).
#include "run_landlock.hpp"

#include "common/fd.hpp"

#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

namespace redir::ctl {
namespace {

// From linux/landlock.h (6.12); Debian 12's headers predate "scoped".
struct RulesetAttr {
    uint64_t handled_access_fs;
    uint64_t handled_access_net;
    uint64_t scoped;
};
constexpr uint64_t kScopeAbstractUnixSocket = 1ULL << 0;
constexpr uint64_t kScopeSignal = 1ULL << 1;
constexpr uint32_t kCreateRulesetVersion = 1U << 0;
constexpr int kScopeAbi = 6;

#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_restrict_self 446
#endif

}  // namespace

int landlock_abi() {
    long v = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, kCreateRulesetVersion);
    return v < 0 ? 0 : static_cast<int>(v);
}

std::string scope_to_sandbox() {
    int abi = landlock_abi();
    if (abi < kScopeAbi)
        return abi == 0 ? "Landlock is not enabled in this kernel"
                        : "this kernel's Landlock (ABI " + std::to_string(abi) + ") cannot scope abstract unix "
                          "sockets (ABI 6, Linux 6.12, needed)";
    RulesetAttr attr{0, 0, kScopeAbstractUnixSocket | kScopeSignal};
    redir::UniqueFd fd(static_cast<int>(::syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0)));
    if (!fd) return std::string("cannot create a Landlock ruleset: ") + std::strerror(errno);
    if (::syscall(SYS_landlock_restrict_self, fd.get(), 0) != 0)
        return std::string("cannot apply the Landlock scope: ") + std::strerror(errno);
    return "";
}

}  // namespace redir::ctl
