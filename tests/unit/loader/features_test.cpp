// The lsm_cgroup decision from measured inputs: which kernels get the LSM
// program loaded (and a load failure treated as an error), and what `doctor`
// says on the others. No kernel needed.
#include <gtest/gtest.h>

#include <sys/socket.h>

#include <cerrno>

#include "loader/features.hpp"

using namespace redir::loader;

namespace {

LsmProbeInputs healthy() {
    LsmProbeInputs in;
    in.kernel_major = 6;
    in.kernel_minor = 1;
    in.lsm_list = 1;
    return in;
}

TEST(LsmCgroup, EnforcedWhenProgramsLoadAndBpfLsmIsActive) {
    EXPECT_EQ(classify_lsm_cgroup(healthy()).state, LsmCgroup::enforced);
}

// This machine: `bpf` listed, every trampoline program refused with EPERM.
TEST(LsmCgroup, ListedButTrampolinesRefusedIsNotABootOptionProblem) {
    auto in = healthy();
    in.lsm_cgroup_errno = EPERM;
    in.fentry_errno = EPERM;
    auto p = classify_lsm_cgroup(in);
    EXPECT_EQ(p.state, LsmCgroup::kernel_refuses_trampolines);
    EXPECT_NE(p.detail.find("`bpf` is in the active LSM list"), std::string::npos) << p.detail;
    EXPECT_NE(p.detail.find("every trampoline BPF program (a bare fentry too) with EPERM"), std::string::npos)
        << p.detail;
    EXPECT_EQ(p.detail.find("lsm=...,bpf"), std::string::npos) << "must not tell the user to change boot options";
}

TEST(LsmCgroup, OnlyLsmCgroupRefusedIsNamedAsSuch) {
    auto in = healthy();
    in.lsm_cgroup_errno = EOPNOTSUPP;
    auto p = classify_lsm_cgroup(in);
    EXPECT_EQ(p.state, LsmCgroup::kernel_refuses_trampolines);
    EXPECT_NE(p.detail.find("refuses lsm_cgroup programs with EOPNOTSUPP (a bare fentry loads)"), std::string::npos)
        << p.detail;
}

TEST(LsmCgroup, LoadsButNotActiveSaysHowToBoot) {
    auto in = healthy();
    in.lsm_list = 0;
    auto p = classify_lsm_cgroup(in);
    EXPECT_EQ(p.state, LsmCgroup::lsm_not_active);
    EXPECT_NE(p.detail.find("lsm=...,bpf"), std::string::npos);
}

TEST(LsmCgroup, UnreadableLsmListIsNotTakenAsActive) {
    auto in = healthy();
    in.lsm_list = -1;
    EXPECT_EQ(classify_lsm_cgroup(in).state, LsmCgroup::lsm_not_active);
}

TEST(LsmCgroup, OldOrUnbuiltKernels) {
    auto in = healthy();
    in.kernel_major = 5;
    in.kernel_minor = 15;
    auto p = classify_lsm_cgroup(in);
    EXPECT_EQ(p.state, LsmCgroup::kernel_too_old);
    EXPECT_NE(p.detail.find("5.15"), std::string::npos);
    in = healthy();
    in.btf_has_hook = false;
    EXPECT_EQ(classify_lsm_cgroup(in).state, LsmCgroup::kernel_too_old);
    in = healthy();
    in.btf = false;
    EXPECT_EQ(classify_lsm_cgroup(in).state, LsmCgroup::kernel_too_old);
}

TEST(LsmCgroup, NotRootCannotTell) {
    auto in = healthy();
    in.root = false;
    EXPECT_EQ(classify_lsm_cgroup(in).state, LsmCgroup::not_probed);
}

// Only these errnos mean "the kernel refuses the program type"; anything
// else (a verifier rejection is EACCES) must fail the load loudly.
TEST(LsmCgroup, WhichErrnosMeanTheKernelRefusesTheType) {
    for (int e : {EPERM, EINVAL, EOPNOTSUPP, 524, -EPERM}) EXPECT_TRUE(kernel_refuses_program_type(e)) << e;
    for (int e : {EACCES, E2BIG, ENOMEM, EFAULT, 0}) EXPECT_FALSE(kernel_refuses_program_type(e)) << e;
}

TEST(SocketFamilies, DoctorSaysWhichFamiliesAreRefusedAndWhyNot) {
    auto in = healthy();
    in.lsm_cgroup_errno = EPERM;
    in.fentry_errno = EPERM;
    auto f = socket_families(classify_lsm_cgroup(in));
    EXPECT_NE(f.inet.find("MPTCP, UDP-Lite"), std::string::npos);
    EXPECT_NE(f.non_inet.find("NOT refused"), std::string::npos);
    EXPECT_NE(f.non_inet.find("kernel_refuses_trampolines"), std::string::npos);
    auto g = socket_families(classify_lsm_cgroup(healthy()));
    EXPECT_EQ(g.non_inet.find("NOT"), std::string::npos);
    EXPECT_NE(g.non_inet.find("packet, vsock"), std::string::npos);
}

TEST(SocketFamilies, AuditNames) {
    EXPECT_EQ(socket_family_name(AF_PACKET), "packet");
    EXPECT_EQ(socket_family_name(AF_VSOCK), "vsock");
    EXPECT_EQ(socket_family_name(AF_INET6), "ipv6");
    EXPECT_EQ(socket_family_name(200), "af-200");
}

}  // namespace
