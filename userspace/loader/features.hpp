#pragma once
// What this kernel and host support, for redird's start-up check,
// `redirctl doctor` and `status`; and the probe that decides whether the
// per-cgroup BPF LSM program (non-inet socket families) can be enforced.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace redir::loader {

struct FeatureCheck {
    std::string name;
    bool ok = false;
    bool required = true;  // false: redir runs, with the stated loss
    std::string detail;    // what was found, or what to do
};

std::vector<FeatureCheck> check_kernel_features(const std::string& bpffs_dir);

// First failing required check as one sentence, or empty when all pass.
std::string first_missing(const std::vector<FeatureCheck>& checks);

// Whether `lsm_cgroup/socket_create` (which refuses packet, vsock and every
// other non-inet family but unix and netlink) runs in attached sandboxes.
enum class LsmCgroup : uint8_t {
    enforced,                    // the kernel loads lsm_cgroup programs and BPF LSM is active
    kernel_refuses_trampolines,  // the kernel refuses the program type at load (EPERM/EINVAL/EOPNOTSUPP)
    lsm_not_active,              // programs load, but `bpf` is not in the active LSM list: they would never run
    kernel_too_old,              // before 6.0 (no BPF_LSM_CGROUP) or built without CONFIG_BPF_LSM / BTF
    not_probed,                  // not root: nothing can be loaded to find out
};
std::string_view to_string(LsmCgroup s);

// Everything the decision is made from, so it can be tested without a kernel.
struct LsmProbeInputs {
    bool root = true;
    bool btf = true;                   // /sys/kernel/btf/vmlinux readable
    bool btf_has_hook = true;          // vmlinux BTF has bpf_lsm_socket_create (CONFIG_BPF_LSM)
    unsigned kernel_major = 6, kernel_minor = 1;
    int lsm_cgroup_errno = 0;          // loading a minimal lsm_cgroup program: 0 = loaded
    int fentry_errno = 0;              // loading a minimal fentry program: 0 = loaded
    int lsm_list = -1;                 // `bpf` in /sys/kernel/security/lsm: 1 yes, 0 no, -1 unreadable
};

struct LsmProbe {
    LsmCgroup state = LsmCgroup::not_probed;
    std::string detail;  // one sentence: what was found and what it means for the sandbox
};

// Pure: the state and its sentence from what was measured.
LsmProbe classify_lsm_cgroup(const LsmProbeInputs& in);
// Measures (loads two two-instruction programs, reads BTF and the LSM list)
// and classifies. Cheap enough to call from `doctor` and `status`.
LsmProbe probe_lsm_cgroup();

// Whether an errno from loading a program means "this kernel refuses the
// program type" (fall back) rather than "this program is wrong" (fail loudly).
bool kernel_refuses_program_type(int err);

// Families refused in attached sandboxes on this kernel, one sentence each,
// for `doctor` and `status`.
struct SocketFamilies {
    std::string inet;      // always enforced by cgroup/sock_create
    std::string non_inet;  // enforced only when lsm == enforced; otherwise why not
    LsmProbe lsm;
};
SocketFamilies socket_families(const LsmProbe& lsm);

// "ipv4", "ipv6", "packet", "vsock", ..., or "af-N" for the audit log.
std::string socket_family_name(unsigned family);

}  // namespace redir::loader
