#pragma once
// Shared fixture of the kernel tests written for containment: a datapath
// pinned under its own bpffs directory, one attached cgroup per case, rules
// written straight into the maps, real sockets opened by children placed in
// the cgroup, and the audit events the kernel emitted. main()
// (kernel_main.cpp) enters a private network namespace first.
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

// A listening TCP socket on ADDR:PORT (PORT in/out: 0 = the kernel picks);
// FLAGS adds socket type flags (SOCK_NONBLOCK); -1 on failure, with errno.
inline int listen_on(const std::string& addr, uint16_t& port, int flags = 0) {
    socklen_t len = 0;
    sockaddr_storage ss = sockaddr_for(addr, port, len);
    int fd = ::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | flags, 0);
    if (fd < 0) return -1;
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6) ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    if (::bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0 || ::listen(fd, 4096) != 0) {
        int err = errno;
        ::close(fd);
        errno = err;
        return -1;
    }
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    addr_from_sockaddr(reinterpret_cast<sockaddr*>(&ss), &port);
    return fd;
}

// connect() of a TYPE socket from the calling process: 0 or errno. The family
// follows the text ("::ffff:1.2.3.4" is an AF_INET6 socket with a v4-mapped
// address). With OUT_FD the connected socket is handed back instead of closed.
inline int try_connect(const std::string& addr, uint16_t port, int type = SOCK_STREAM, int* out_fd = nullptr) {
    socklen_t len = 0;
    sockaddr_storage ss = sockaddr_for(addr, port, len);
    int fd = ::socket(ss.ss_family, type | SOCK_CLOEXEC, 0);
    if (fd < 0) return errno;
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
    int err = rc == 0 ? 0 : errno;
    if (out_fd && rc == 0)
        *out_fd = fd;
    else
        ::close(fd);
    return err;
}

// Gives ports LO..HI of PROTO on ADDR/PREFIX the VERDICT under POLICY, as the
// one range of port set SET (PREFIX in 128-bit terms: v4 /n is 96 + n).
inline void put_one_range(loader::Datapath& dp, uint32_t policy, uint32_t set, const std::string& addr, int prefix,
                          uint16_t lo, uint16_t hi, uint8_t verdict, uint8_t proto = REDIR_PROTO_TCP) {
    redir_portset ps{};
    ps.count = 1;
    ps.r[0] = {lo, hi, proto, verdict, 0};
    dp.put_portset({policy, set}, ps);
    redir_lpm_key k{};
    k.policy_id = policy;
    k.prefixlen = 32 + prefix;
    std::memcpy(k.addr, addr_parse(addr)->b, 16);
    dp.put_lpm(k, {set, 0, 0, 0});
}

// One datapath per test binary (loading it runs the verifier on every
// program: seconds under emulation), one fresh cgroup, attachment and policy
// id per case, so cases share nothing they could observe.
class SandboxTest : public ::testing::Test {
protected:
    static loader::Datapath& datapath() {
        struct Shared {
            // Named by our pid: a directory of that name can only be left by a
            // crashed run whose pid was reused, with maps of an older layout.
            std::string dir = fresh_pin_dir("/sys/fs/bpf/redir-ktest-" + std::to_string(::getpid()));
            std::unique_ptr<loader::Datapath> dp = loader::Datapath::open({dir});
            static std::string fresh_pin_dir(std::string d) {
                std::error_code ec;
                std::filesystem::remove_all(d, ec);
                return d;
            }
            ~Shared() {
                dp.reset();  // closes our fds; then the pins go
                std::error_code ec;
                std::filesystem::remove_all(dir, ec);
            }
        };
        static Shared shared;
        static bool configured = [] {
            redir_config cfg{};
            cfg.agent_netns_cookie = testsupport::current_netns_cookie();
            cfg.terminator4 = *addr_parse("127.0.0.1");
            cfg.terminator6 = *addr_parse("::1");
            shared.dp->set_config(cfg);
            shared.dp->open_events([](const redir_event& e) {
                if (sink()) sink()->push_back(e);
            });
            return true;
        }();
        (void)configured;
        return *shared.dp;
    }
    static std::vector<redir_event>*& sink() {
        static std::vector<redir_event>* s = nullptr;
        return s;
    }

    void SetUp() override {
        static uint32_t next_policy = kPolicy;
        policy_id_ = next_policy++;
        dp_ = &datapath();
        dp_->consume_events();  // whatever an earlier case left
        sink() = &events_;
        events_.clear();
        cg_ = std::make_unique<TempCgroup>("ktest");
        redir_attach_val v{};
        v.policy_id = policy_id_;
        dp_->attach(loader::open_cgroup(cg_->path()), v);
        bpffs_ = dp_->bpffs_dir();
    }

    void TearDown() override {
        if (cg_) dp_->detach(loader::open_cgroup(cg_->path()).id);
        dp_->delete_policy(policy_id_);
        dp_->consume_events();
        sink() = nullptr;
        cg_.reset();
    }

    // Ports LO..HI of PROTO on ADDR/PREFIX get VERDICT, in a port set of their own.
    void put_range(const std::string& addr, int prefix, uint16_t lo, uint16_t hi, uint8_t verdict,
                   uint8_t proto = REDIR_PROTO_TCP) {
        put_one_range(*dp_, policy_id_, next_set_++, addr, prefix, lo, hi, verdict, proto);
    }
    // Allow every port of PROTO on ADDR/PREFIX (prefix in 128-bit terms: v4 /n is 96 + n).
    void allow_all_ports(const std::string& addr, int prefix, uint8_t proto = REDIR_PROTO_TCP) {
        put_range(addr, prefix, 1, 65535, REDIR_VERDICT_ALLOW, proto);
    }

    int in_sandbox(const std::function<int()>& fn) { return run_in_cgroup(cg_->path(), fn); }
    static int outside(const std::function<int()>& fn) { return run_in_cgroup("", fn); }

    std::vector<redir_event> drain_events() {
        dp_->consume_events();
        return std::move(events_);
    }

    uint64_t cgroup_id() const { return loader::open_cgroup(cg_->path()).id; }

    std::string bpffs_;
    loader::Datapath* dp_ = nullptr;
    std::unique_ptr<TempCgroup> cg_;
    std::vector<redir_event> events_;
    uint32_t policy_id_ = 0;
    uint32_t next_set_ = 1;
};

}  // namespace redir::kerneltest
