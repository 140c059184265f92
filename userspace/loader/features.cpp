#include "loader/features.hpp"

#include <bpf/libbpf.h>
#include <linux/magic.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "loader/cgroup.hpp"

namespace redir::loader {

static bool probe_prog(bpf_prog_type t) { return libbpf_probe_bpf_prog_type(t, nullptr) == 1; }
static bool probe_map(bpf_map_type t) { return libbpf_probe_bpf_map_type(t, nullptr) == 1; }

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
        out.push_back({"sock_ops", probe_prog(BPF_PROG_TYPE_SOCK_OPS), true, "original destination of redirected connections"});
        out.push_back({"ringbuf", probe_map(BPF_MAP_TYPE_RINGBUF), true, "audit events"});
        out.push_back({"sk_storage", probe_map(BPF_MAP_TYPE_SK_STORAGE), true, "per-socket redirect state"});
        out.push_back({"lpm_trie", probe_map(BPF_MAP_TYPE_LPM_TRIE), true, "CIDR policy"});
    }

    std::ifstream lsm("/sys/kernel/security/lsm");
    std::string lsms;
    std::getline(lsm, lsms);
    bool has_bpf_lsm = ("," + lsms + ",").find(",bpf,") != std::string::npos;
    out.push_back({"bpf_lsm", has_bpf_lsm, false,
                   has_bpf_lsm ? "BPF LSM listed: packet sockets are refused in attached cgroups if the kernel also "
                                 "accepts LSM programs (redirctl status shows packet_socket_refusal); "
                                 "`redirctl run` sandboxes drop CAP_NET_RAW either way"
                               : "BPF LSM not enabled (boot with lsm=...,bpf): AF_PACKET sockets cannot be refused "
                                 "in attached cgroups (raw and ping sockets still are; `redirctl run` sandboxes "
                                 "drop CAP_NET_RAW)"});
    return out;
}

std::string first_missing(const std::vector<FeatureCheck>& checks) {
    for (auto& c : checks)
        if (c.required && !c.ok) return c.name + ": " + c.detail;
    return {};
}

}  // namespace redir::loader
