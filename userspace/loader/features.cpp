// Kernel/host capability checks and the lsm_cgroup probe (see features.hpp).
#include "loader/features.hpp"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>
#include <linux/magic.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "loader/cgroup.hpp"

namespace redir::loader {

namespace {

constexpr int kEnotsupp = 524;  // the kernel's internal ENOTSUPP, which leaks to userspace from BPF
constexpr const char* kLsmHook = "bpf_lsm_socket_create";
constexpr const char* kSecurityfs = "/sys/kernel/security";

bool probe_prog(bpf_prog_type t) { return libbpf_probe_bpf_prog_type(t, nullptr) == 1; }
bool probe_map(bpf_map_type t) { return libbpf_probe_bpf_map_type(t, nullptr) == 1; }

std::string errno_name(int err) {
    switch (err) {
        case EPERM: return "EPERM";
        case EINVAL: return "EINVAL";
        case EOPNOTSUPP: return "EOPNOTSUPP";
        case kEnotsupp: return "ENOTSUPP";
        case EACCES: return "EACCES";
        case E2BIG: return "E2BIG";
        case ENOMEM: return "ENOMEM";
        default: return "errno " + std::to_string(err);
    }
}

// 0 if a two-instruction program ("return 0") of this type, attached to the
// BTF function BTF_ID, loads; otherwise the errno the kernel gave.
int try_load(bpf_prog_type type, bpf_attach_type attach, int btf_id) {
    const bpf_insn insns[] = {
        {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .src_reg = 0, .off = 0, .imm = 0},
        {.code = BPF_JMP | BPF_EXIT, .dst_reg = 0, .src_reg = 0, .off = 0, .imm = 0},
    };
    LIBBPF_OPTS(bpf_prog_load_opts, opts, .expected_attach_type = attach, .attach_btf_id = static_cast<__u32>(btf_id));
    int fd = bpf_prog_load(type, "redir_probe", "GPL", insns, 2, &opts);
    if (fd >= 0) {
        ::close(fd);
        return 0;
    }
    return errno ? errno : EINVAL;
}

// 1: `bpf` is an active LSM; 0: it is not; -1: cannot tell. Mounts
// securityfs where it is missing (what systemd does at boot) so that root
// can tell.
int bpf_in_lsm_list() {
    std::string path = std::string(kSecurityfs) + "/lsm";
    if (!std::filesystem::exists(path) && ::geteuid() == 0)
        ::mount("securityfs", kSecurityfs, "securityfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
    std::ifstream in(path);
    std::string lsms;
    if (!in || !std::getline(in, lsms)) return -1;
    return ("," + lsms + ",").find(",bpf,") != std::string::npos ? 1 : 0;
}

void kernel_version(unsigned& major, unsigned& minor) {
    struct utsname u {};
    ::uname(&u);
    major = minor = 0;
    std::sscanf(u.release, "%u.%u", &major, &minor);
}

}  // namespace

std::string_view to_string(LsmCgroup s) {
    switch (s) {
        case LsmCgroup::enforced: return "enforced";
        case LsmCgroup::kernel_refuses_trampolines: return "kernel_refuses_trampolines";
        case LsmCgroup::lsm_not_active: return "lsm_not_active";
        case LsmCgroup::kernel_too_old: return "kernel_too_old";
        case LsmCgroup::not_probed: return "not_probed";
    }
    return "unknown";
}

bool kernel_refuses_program_type(int err) {
    err = err < 0 ? -err : err;
    return err == EPERM || err == EINVAL || err == EOPNOTSUPP || err == kEnotsupp;
}

LsmProbe classify_lsm_cgroup(const LsmProbeInputs& in) {
    if (!in.root)
        return {LsmCgroup::not_probed,
                "not root: nothing can be loaded to find out whether this kernel runs lsm_cgroup programs "
                "(run `redirctl doctor` as root)"};
    if (!in.btf || !in.btf_has_hook)
        return {LsmCgroup::kernel_too_old,
                in.btf ? "this kernel is built without BPF LSM (no bpf_lsm_socket_create in its BTF; "
                         "CONFIG_BPF_LSM=y is needed)"
                       : "this kernel has no BTF (/sys/kernel/btf/vmlinux), which BPF LSM programs need"};
    if (in.kernel_major < 6)
        return {LsmCgroup::kernel_too_old, "kernel " + std::to_string(in.kernel_major) + "." +
                                               std::to_string(in.kernel_minor) +
                                               " predates per-cgroup BPF LSM programs (lsm_cgroup, 6.0 or newer)"};
    if (in.lsm_cgroup_errno != 0) {
        std::string listed = in.lsm_list == 1   ? "`bpf` is in the active LSM list (/sys/kernel/security/lsm), but "
                             : in.lsm_list == 0 ? "`bpf` is not in the active LSM list, and "
                                                : "";
        std::string what = in.fentry_errno != 0
                               ? "this kernel refuses every trampoline BPF program (a bare fentry too) with " +
                                     errno_name(in.fentry_errno)
                               : "this kernel refuses lsm_cgroup programs with " + errno_name(in.lsm_cgroup_errno) +
                                     " (a bare fentry loads)";
        return {LsmCgroup::kernel_refuses_trampolines,
                listed + what + ": a kernel lockdown or build policy, which no boot option of redir can change"};
    }
    if (in.lsm_list == 0)
        return {LsmCgroup::lsm_not_active,
                "the kernel loads lsm_cgroup programs but `bpf` is not in the active LSM list, so they would never "
                "run (boot with lsm=...,bpf)"};
    if (in.lsm_list < 0)
        return {LsmCgroup::lsm_not_active,
                "cannot read the active LSM list (/sys/kernel/security/lsm; mount securityfs there), so an "
                "lsm_cgroup program cannot be relied on to run"};
    return {LsmCgroup::enforced, "the kernel loads lsm_cgroup programs and `bpf` is an active LSM"};
}

LsmProbe probe_lsm_cgroup() {
    LsmProbeInputs in;
    in.root = ::geteuid() == 0;
    kernel_version(in.kernel_major, in.kernel_minor);
    btf* vmlinux = btf__load_vmlinux_btf();
    in.btf = vmlinux != nullptr;
    int hook = vmlinux ? btf__find_by_name_kind(vmlinux, kLsmHook, BTF_KIND_FUNC) : -1;
    in.btf_has_hook = hook > 0;
    if (vmlinux) btf__free(vmlinux);
    in.lsm_list = bpf_in_lsm_list();
    if (in.root && in.btf_has_hook && in.kernel_major >= 6) {
        in.lsm_cgroup_errno = try_load(BPF_PROG_TYPE_LSM, BPF_LSM_CGROUP, hook);
        // The plainest trampoline program there is: tells "this kernel
        // refuses trampolines" from "this kernel refuses lsm_cgroup".
        in.fentry_errno = try_load(BPF_PROG_TYPE_TRACING, BPF_TRACE_FENTRY, hook);
    }
    return classify_lsm_cgroup(in);
}

SocketFamilies socket_families(const LsmProbe& lsm) {
    SocketFamilies f;
    f.lsm = lsm;
    f.inet =
        "IPv4/IPv6: only TCP stream and UDP datagram sockets are admitted; raw, ICMP ping, MPTCP, UDP-Lite, SCTP, "
        "DCCP, L2TP/IP, SEQPACKET and any other protocol are refused with EPERM (cgroup/sock_create); so is "
        "setsockopt() of IP_OPTIONS and IPv6 routing/extension headers (cgroup/setsockopt)";
    if (lsm.state == LsmCgroup::enforced)
        f.non_inet = "packet, vsock and every other family but unix and netlink are refused with EPERM "
                     "(lsm_cgroup/socket_create)";
    else
        f.non_inet = "packet, vsock and other non-inet families are NOT refused in sandboxes (lsm_cgroup: " +
                     std::string(to_string(lsm.state)) + "): " + lsm.detail +
                     "; a sandbox without CAP_NET_RAW (as `redirctl run` makes it) still cannot open packet "
                     "sockets";
    return f;
}

std::string socket_family_name(unsigned family) {
    switch (family) {
        case AF_UNIX: return "unix";
        case AF_INET: return "ipv4";
        case AF_INET6: return "ipv6";
        case AF_NETLINK: return "netlink";
        case AF_PACKET: return "packet";
        case AF_VSOCK: return "vsock";
        case AF_XDP: return "xdp";
        case AF_CAN: return "can";
        case AF_BLUETOOTH: return "bluetooth";
        case AF_TIPC: return "tipc";
        case AF_RDS: return "rds";
        default: return "af-" + std::to_string(family);
    }
}

std::vector<FeatureCheck> check_kernel_features(const std::string& bpffs_dir) {
    std::vector<FeatureCheck> out;
    struct utsname u {};
    ::uname(&u);
    out.push_back({"kernel", true, false, std::string(u.release) + " (5.8 or newer needed)"});

    bool root = ::geteuid() == 0;
    out.push_back({"root", root, true, root ? "running as root" : "run as root (loading BPF needs CAP_BPF and CAP_NET_ADMIN)"});

    bool btf = std::filesystem::exists("/sys/kernel/btf/vmlinux");
    out.push_back({"btf", btf, true, btf ? "/sys/kernel/btf/vmlinux present" : "kernel built without CONFIG_DEBUG_INFO_BTF"});

    auto cg = find_cgroup2_mount();
    out.push_back({"cgroup2", cg.has_value(), true, cg ? "mounted at " + *cg : "no cgroup2 mount in /proc/mounts"});

    struct statfs s {};
    bool bpffs = ::statfs("/sys/fs/bpf", &s) == 0 && s.f_type == BPF_FS_MAGIC;
    out.push_back({"bpffs", true, false,
                   bpffs ? "mounted at /sys/fs/bpf" : "not mounted at /sys/fs/bpf (redird mounts it); pins go to " + bpffs_dir});

    if (root) {
        out.push_back({"cgroup_sock_addr", probe_prog(BPF_PROG_TYPE_CGROUP_SOCK_ADDR), true,
                       "connect4/6, sendmsg4/6, recvmsg4/6, getpeername4/6 programs"});
        out.push_back({"cgroup_sock", probe_prog(BPF_PROG_TYPE_CGROUP_SOCK), true, "sock_create program"});
        out.push_back({"cgroup_sockopt", probe_prog(BPF_PROG_TYPE_CGROUP_SOCKOPT), true,
                       "setsockopt program (refuses IP options and IPv6 routing headers)"});
        out.push_back({"sock_ops", probe_prog(BPF_PROG_TYPE_SOCK_OPS), true, "original destination of redirected connections"});
        out.push_back({"ringbuf", probe_map(BPF_MAP_TYPE_RINGBUF), true, "audit events"});
        out.push_back({"sk_storage", probe_map(BPF_MAP_TYPE_SK_STORAGE), true, "per-socket redirect state"});
        out.push_back({"lpm_trie", probe_map(BPF_MAP_TYPE_LPM_TRIE), true, "CIDR policy"});
    }

    auto fam = socket_families(probe_lsm_cgroup());
    out.push_back({"socket_inet", true, true, fam.inet});
    out.push_back({"socket_other_families", fam.lsm.state == LsmCgroup::enforced, false, fam.non_inet});
    return out;
}

std::string first_missing(const std::vector<FeatureCheck>& checks) {
    for (auto& c : checks)
        if (c.required && !c.ok) return c.name + ": " + c.detail;
    return {};
}

}  // namespace redir::loader
