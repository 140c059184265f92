// The compiler checked against the real BPF programs: random overlapping
// policies (the generator of the compiler's unit test) are compiled, written
// to the maps, and a sandboxed process connect()s to addresses near their
// rules; what the kernel did must be what the policy means (the brute-force
// reference). The unit test checks the compiler against a C++ model of the
// lookup; this one has no model in between.
//
// Reading the kernel's verdict from connect(): EPERM is DENY; a TCP connect
// that completes is REDIRECT (the only listener in this test's network
// namespace is the relay); any other outcome (ENETUNREACH, ECONNREFUSED, a UDP
// connect that succeeds) is ALLOW. The namespace has only lo, so no packet
// can leave it whatever the address.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>
#include <vector>

#include "common/addr.hpp"
#include "kernel_main.hpp"
#include "loader/datapath.hpp"
#include "netns.hpp"
#include "policy_reference.hpp"
#include "sandbox_fixture.hpp"

using namespace redir;
using namespace redir::testsupport::policyref;
using redir::testsupport::TempCgroup;

namespace {

struct Query {
    policy::Addr addr;
    uint16_t port;
    uint8_t proto;
    bool as_v4;  // a v4-mapped address dialled from an AF_INET socket (else AF_INET6, mapped)
};

bool is_v4_mapped(const policy::Addr& a) {
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return std::memcmp(a.data(), prefix, 12) == 0;
}

// connect() for Q from the calling process: 0 or errno.
int connect_once(const Query& q) {
    const int type = q.proto == REDIR_PROTO_TCP ? SOCK_STREAM : SOCK_DGRAM;
    sockaddr_storage ss{};
    socklen_t len;
    int fam;
    if (q.as_v4) {
        auto* s = reinterpret_cast<sockaddr_in*>(&ss);
        s->sin_family = fam = AF_INET;
        s->sin_port = htons(q.port);
        std::memcpy(&s->sin_addr, q.addr.data() + 12, 4);
        len = sizeof(*s);
    } else {
        auto* s = reinterpret_cast<sockaddr_in6*>(&ss);
        s->sin6_family = fam = AF_INET6;
        s->sin6_port = htons(q.port);
        std::memcpy(&s->sin6_addr, q.addr.data(), 16);
        len = sizeof(*s);
    }
    int fd = ::socket(fam, type | SOCK_CLOEXEC, 0);
    if (fd < 0) return 1000 + errno;
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
    int err = rc == 0 ? 0 : errno;
    ::close(fd);
    return err;
}

// Runs every query in one child placed in CGROUP; returns each outcome.
std::vector<int> connect_all(const std::string& cgroup, const std::vector<Query>& qs) {
    int p[2];
    if (::pipe(p) != 0) throw std::runtime_error("pipe failed");
    pid_t pid = ::fork();
    if (pid == 0) {
        ::close(p[0]);
        std::ofstream(cgroup + "/cgroup.procs") << ::getpid() << std::endl;
        std::vector<int> out;
        for (const auto& q : qs) out.push_back(connect_once(q));
        const char* b = reinterpret_cast<const char*>(out.data());
        size_t left = out.size() * sizeof(int);
        while (left > 0) {
            ssize_t n = ::write(p[1], b, left);
            if (n <= 0) ::_exit(1);
            b += n;
            left -= static_cast<size_t>(n);
        }
        ::_exit(0);
    }
    ::close(p[1]);
    std::vector<int> out(qs.size(), -1);
    char* b = reinterpret_cast<char*>(out.data());
    size_t left = out.size() * sizeof(int);
    while (left > 0) {
        ssize_t n = ::read(p[0], b, left);
        if (n <= 0) break;
        b += n;
        left -= static_cast<size_t>(n);
    }
    ::close(p[0]);
    ::waitpid(pid, nullptr, 0);
    if (left != 0) throw std::runtime_error("the sandboxed child did not report every connect");
    return out;
}

uint8_t verdict_of(int outcome, uint8_t proto) {
    if (outcome == EPERM) return REDIR_VERDICT_DENY;
    if (outcome == 0 && proto == REDIR_PROTO_TCP) return REDIR_VERDICT_REDIRECT;
    return REDIR_VERDICT_ALLOW;
}

const char* verdict_name(uint8_t v) {
    return v == REDIR_VERDICT_DENY ? "DENY" : v == REDIR_VERDICT_ALLOW ? "ALLOW" : "REDIRECT";
}

class PolicyInKernelTest : public ::testing::Test {
protected:
    void SetUp() override {
        bpffs_ = "/sys/fs/bpf/redir-test-" + std::to_string(::getpid()) + "-policy";
        dp_ = loader::Datapath::open({bpffs_});
        cg_ = std::make_unique<TempCgroup>("polk");
        // Non-blocking: the acceptor below drains each backlog until EAGAIN.
        relay4_ = kerneltest::listen_on("127.0.0.1", relay_port_, SOCK_NONBLOCK);
        ASSERT_GE(relay4_, 0) << "cannot listen on 127.0.0.1: " << std::strerror(errno);
        relay6_ = kerneltest::listen_on("::1", relay_port_, SOCK_NONBLOCK);
        ASSERT_GE(relay6_, 0) << "cannot listen on [::1]:" << relay_port_ << ": " << std::strerror(errno);
        redir_config cfg{};
        cfg.agent_netns_cookie = redir::testsupport::current_netns_cookie();
        cfg.terminator4 = *addr_parse("127.0.0.1");
        cfg.terminator6 = *addr_parse("::1");
        cfg.relay_port = relay_port_;
        dp_->set_config(cfg);
        // Redirected connections are accepted and closed, so the backlog never fills.
        acceptor_ = std::thread([this] {
            while (!stop_) {
                pollfd pf[2] = {{relay4_, POLLIN, 0}, {relay6_, POLLIN, 0}};
                if (::poll(pf, 2, 50) <= 0) continue;
                for (auto& p : pf) {
                    int c;
                    while ((c = ::accept4(p.fd, nullptr, nullptr, SOCK_CLOEXEC)) >= 0) ::close(c);
                }
            }
        });
    }
    void TearDown() override {
        stop_ = true;
        if (acceptor_.joinable()) acceptor_.join();
        if (dp_) dp_->detach(loader::open_cgroup(cg_->path()).id);
        ::close(relay4_);
        ::close(relay6_);
        dp_.reset();
        cg_.reset();
        std::filesystem::remove_all(bpffs_);
    }

    // Writes POLICY compiled under ID and points the sandbox at it.
    void install(const policy::Policy& p, uint32_t id) {
        auto cp = policy::compile(p, id);
        for (const auto& ps : cp.portsets) dp_->put_portset(ps.key, ps.set);
        for (const auto& e : cp.lpm) dp_->put_lpm(e.key, e.val);
        redir_attach_val v{};
        v.policy_id = id;
        if (!attached_) {
            dp_->attach(loader::open_cgroup(cg_->path()), v);
            attached_ = true;
        } else {
            dp_->set_attachment(loader::open_cgroup(cg_->path()).id, v);
        }
    }

    std::string bpffs_;
    std::unique_ptr<loader::Datapath> dp_;
    std::unique_ptr<TempCgroup> cg_;
    int relay4_ = -1, relay6_ = -1;
    uint16_t relay_port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread acceptor_;
    bool attached_ = false;
};

TEST_F(PolicyInKernelTest, RandomPoliciesMatchReferenceInTheKernel) {
    std::mt19937 rng(20261203);
    int checked = 0, by_verdict[3] = {0, 0, 0};
    for (uint32_t iter = 0; iter < 60; ++iter) {
        auto list = [&](int max, bool tcp_only) {
            std::string s;
            int n = std::uniform_int_distribution<int>(0, max)(rng);
            for (int i = 0; i < n; ++i) s += (i ? "," : "") + random_rule(rng, tcp_only);
            return s;
        };
        const std::string text = doc(list(8, false), list(4, false), list(3, true));
        auto r = policy::parse_policy(text, "r.json");
        ASSERT_TRUE(r.ok()) << r.error_text() << text;
        const policy::Policy& p = *r.policy;
        if (p.allow.empty() && p.deny.empty() && p.inspect.empty()) continue;
        install(p, 100 + iter);

        std::vector<Query> qs;
        for (int i = 0; i < 100; ++i) {
            Query q;
            q.addr = random_addr_near(rng, p);
            q.port = static_cast<uint16_t>(std::uniform_int_distribution<int>(1, 52)(rng));  // 53 is DNS's
            q.proto = rng() % 2 ? REDIR_PROTO_TCP : REDIR_PROTO_UDP;
            q.as_v4 = is_v4_mapped(q.addr) && rng() % 2;
            qs.push_back(q);
        }
        auto outcomes = connect_all(cg_->path(), qs);
        for (size_t i = 0; i < qs.size(); ++i) {
            const auto& q = qs[i];
            const uint8_t want = reference(p, q.addr, q.port, q.proto);
            const uint8_t got = verdict_of(outcomes[i], q.proto);
            ASSERT_EQ(verdict_name(got), std::string(verdict_name(want)))
                << "policy " << text << "\naddr " << policy::addr_to_string(q.addr) << (q.as_v4 ? " (AF_INET)" : "")
                << " port " << q.port << " proto " << (q.proto == REDIR_PROTO_TCP ? "tcp" : "udp")
                << ", connect() gave " << (outcomes[i] ? std::strerror(outcomes[i]) : "success");
            ++checked;
            ++by_verdict[want == REDIR_VERDICT_DENY ? 0 : want == REDIR_VERDICT_ALLOW ? 1 : 2];
        }
    }
    // The draw must exercise every verdict, or the comparison proves little.
    EXPECT_GT(by_verdict[0], 100) << "DENY cases";
    EXPECT_GT(by_verdict[1], 100) << "ALLOW cases";
    EXPECT_GT(by_verdict[2], 20) << "REDIRECT cases";
    std::printf("checked %d connects: %d DENY, %d ALLOW, %d REDIRECT\n", checked, by_verdict[0], by_verdict[1],
                by_verdict[2]);
}

}  // namespace

int main(int argc, char** argv) {
    return redir::testsupport::kernel_test_main(argc, argv, {"203.0.113.1/24", "2001:db8::1/64"});
}
