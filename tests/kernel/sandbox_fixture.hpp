#pragma once
// Shared fixture of the kernel tests written for containment: a freshly
// loaded datapath pinned under its own bpffs directory, one attached cgroup,
// rules written straight into the maps, real sockets opened by children
// placed in the cgroup, and the audit events the kernel emitted. main() (in
// each test file) enters a private network namespace first.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/addr.hpp"
#include "loader/datapath.hpp"
#include "netns.hpp"

namespace redir::kerneltest {

using testsupport::run_in_cgroup;
using testsupport::TempCgroup;

inline constexpr uint32_t kPolicy = 11;

// socket() from the calling process: 0 if it opened (and was closed), else errno.
inline int try_socket(int family, int type, int protocol) {
    int fd = ::socket(family, type | SOCK_CLOEXEC, protocol);
    if (fd < 0) return errno;
    ::close(fd);
    return 0;
}

inline sockaddr_storage sockaddr_for(const std::string& addr, uint16_t port, socklen_t& len) {
    sockaddr_storage ss{};
    if (addr.find(':') != std::string::npos) {
        auto* s = reinterpret_cast<sockaddr_in6*>(&ss);
        s->sin6_family = AF_INET6;
        s->sin6_port = htons(port);
        inet_pton(AF_INET6, addr.c_str(), &s->sin6_addr);
        len = sizeof(*s);
    } else {
        auto* s = reinterpret_cast<sockaddr_in*>(&ss);
        s->sin_family = AF_INET;
        s->sin_port = htons(port);
        inet_pton(AF_INET, addr.c_str(), &s->sin_addr);
        len = sizeof(*s);
    }
    return ss;
}

// A listening TCP socket on ADDR, port chosen by the kernel; -1 on failure.
inline int listen_on(const std::string& addr, uint16_t& port) {
    socklen_t len = 0;
    sockaddr_storage ss = sockaddr_for(addr, 0, len);
    int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    if (ss.ss_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, 64) != 0) {
        ::close(fd);
        return -1;
    }
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    addr_from_sockaddr(reinterpret_cast<sockaddr*>(&ss), &port);
    return fd;
}

// TCP connect() from the calling process: 0 or errno.
inline int try_connect(const std::string& addr, uint16_t port) {
    socklen_t len = 0;
    sockaddr_storage ss = sockaddr_for(addr, port, len);
    int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
    int err = rc == 0 ? 0 : errno;
    ::close(fd);
    return err;
}

class SandboxTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
        std::replace(name.begin(), name.end(), '/', '_');  // parameterised names carry '/'
        bpffs_ = "/sys/fs/bpf/redir-ktest-" + std::to_string(::getpid()) + "-" + name;
        dp_ = loader::Datapath::open({bpffs_});
        cg_ = std::make_unique<TempCgroup>("ktest");
        redir_config cfg{};
        cfg.agent_netns_cookie = testsupport::current_netns_cookie();
        cfg.terminator4 = *addr_parse("127.0.0.1");
        cfg.terminator6 = *addr_parse("::1");
        dp_->set_config(cfg);
        dp_->open_events([this](const redir_event& e) { events_.push_back(e); });
        auto c = loader::open_cgroup(cg_->path());
        redir_attach_val v{};
        v.policy_id = kPolicy;
        dp_->attach(c, v);
    }

    void TearDown() override {
        if (dp_ && cg_) dp_->detach(loader::open_cgroup(cg_->path()).id);
        dp_.reset();
        cg_.reset();
        std::error_code ec;
        std::filesystem::remove_all(bpffs_, ec);
    }

    // Allow every TCP port on ADDR/PREFIX (prefix in 128-bit terms: v4 /n is 96 + n).
    void allow_all_ports(const std::string& addr, int prefix) {
        redir_portset ps{};
        ps.count = 1;
        ps.r[0] = {1, 65535, REDIR_PROTO_TCP, REDIR_VERDICT_ALLOW, 0};
        dp_->put_portset({kPolicy, next_set_}, ps);
        redir_lpm_key k{};
        k.policy_id = kPolicy;
        k.prefixlen = 32 + prefix;
        std::memcpy(k.addr, addr_parse(addr)->b, 16);
        dp_->put_lpm(k, {next_set_, 0, 0, 0});
        next_set_++;
    }

    int in_sandbox(const std::function<int()>& fn) { return run_in_cgroup(cg_->path(), fn); }
    static int outside(const std::function<int()>& fn) { return run_in_cgroup("", fn); }

    std::vector<redir_event> drain_events() {
        dp_->consume_events();
        return std::move(events_);
    }

    std::string bpffs_;
    std::unique_ptr<loader::Datapath> dp_;
    std::unique_ptr<TempCgroup> cg_;
    std::vector<redir_event> events_;
    uint32_t next_set_ = 1;
};

// main() for a kernel test binary: listing needs nothing; running needs root
// and happens inside a fresh network namespace with LO_ADDRS on its lo,
// after IN_NETNS (namespace sysctls) has run there.
inline int kernel_test_main(int argc, char** argv, const std::vector<std::string>& lo_addrs,
                            const std::function<void()>& in_netns = {}) {
    ::testing::InitGoogleTest(&argc, argv);
    if (::testing::GTEST_FLAG(list_tests)) return RUN_ALL_TESTS();
    if (::geteuid() != 0) {
        std::fprintf(stderr, "%s needs root (BPF, cgroups, network namespaces)\n", argv[0]);
        return 1;
    }
    testsupport::enter_private_netns(lo_addrs);
    if (in_netns) in_netns();
    return RUN_ALL_TESTS();
}

}  // namespace redir::kerneltest
