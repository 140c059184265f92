// The real DNS service under the sandbox owner, over the in-memory datapath:
// admissions re-keyed at restore, and a sandbox detached while its answer is
// in flight. Responders and the fake upstream listen on 127.0.0.1 only.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <thread>

#include "agent/admission_journal.hpp"
#include "agent/audit_log.hpp"
#include "agent/dns_service.hpp"
#include "common/fd.hpp"
#include "dns/dns_test_util.hpp"
#include "fixture.hpp"

namespace redir::enforce::test {
namespace {

namespace fs = std::filesystem;
using redir::dns::test::Bytes;

uint64_t boot_ns() {
    timespec ts{};
    ::clock_gettime(CLOCK_BOOTTIME, &ts);
    return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

std::array<uint8_t, 16> v4(const char* text) {
    std::array<uint8_t, 16> a{};
    a[10] = a[11] = 0xff;
    ::inet_pton(AF_INET, text, &a[12]);
    return a;
}

redir_dns_allow_key allow_key(uint64_t cg, const char* addr) {
    redir_dns_allow_key k{};
    k.cgroup_id = cg;
    auto a = v4(addr);
    std::memcpy(k.addr.b, a.data(), 16);
    return k;
}

// A UDP socket on 127.0.0.1 (port 0: the kernel picks).
struct Udp {
    UniqueFd fd{::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)};
    uint16_t port = 0;
    Udp() {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        EXPECT_EQ(::bind(fd.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
        socklen_t len = sizeof(a);
        ::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&a), &len);
        port = ntohs(a.sin_port);
    }
    void send_to(const Bytes& b, const sockaddr_in& to) {
        ::sendto(fd.get(), b.data(), b.size(), 0, reinterpret_cast<const sockaddr*>(&to), sizeof(to));
    }
    void send_to(const Bytes& b, uint16_t to_port) {
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a.sin_port = htons(to_port);
        send_to(b, a);
    }
    // One datagram within TIMEOUT_MS, with its sender.
    std::optional<std::pair<Bytes, sockaddr_in>> recv(int timeout_ms) {
        pollfd p{fd.get(), POLLIN, 0};
        if (::poll(&p, 1, timeout_ms) != 1) return std::nullopt;
        Bytes b(4096);
        sockaddr_in from{};
        socklen_t len = sizeof(from);
        ssize_t n = ::recvfrom(fd.get(), b.data(), b.size(), 0, reinterpret_cast<sockaddr*>(&from), &len);
        if (n < 0) return std::nullopt;
        b.resize(static_cast<size_t>(n));
        return std::make_pair(b, from);
    }
};

std::string question_of(const Bytes& query) {
    auto p = redir::dns::test::parse(query);
    if (!p) return {};
    char* s = ldns_rdf2str(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_question(p.get()), 0)));
    std::string name = s ? s : "";
    free(s);
    return name;
}

constexpr const char* kPolicy = R"({"version": 1, "name": "web", "allow": [
    {"host": "keep.example", "ports": [80]}, {"host": "short.example", "ports": [80]}]})";

class DnsLifetimeTest : public ::testing::Test {
protected:
    fs::path dir = fs::temp_directory_path() / ("redir-enforce-" + std::to_string(::getpid()) + "-" +
                                                ::testing::UnitTest::GetInstance()->current_test_info()->name());
    loader::FakeKernel kernel;
    loader::FakeDatapath dp{kernel, 2};
    boost::asio::io_context io;
    std::unique_ptr<agent::AuditLog> audit;
    std::unique_ptr<agent::DnsService> dns;
    std::unique_ptr<Sandboxes> sbx;
    std::vector<StoredAttachment> records;
    Udp upstream;
    std::thread io_thread;
    std::optional<boost::asio::executor_work_guard<boost::asio::io_context::executor_type>> work;
    std::map<std::string, uint64_t> cgroups = {{"/cg/a", 101}, {"/cg/b", 102}};

    // Runs FN on the agent's io thread (where the control API calls the registry) and waits.
    template <typename Fn>
    auto on_io(Fn fn) {
        if (!io_thread.joinable()) return fn();
        std::packaged_task<decltype(fn())()> task(std::move(fn));
        auto f = task.get_future();
        boost::asio::post(io, [&] { task(); });
        return f.get();
    }

    void SetUp() override { fs::create_directories(dir); }
    void TearDown() override {
        on_io([&] {
            sbx.reset();
            dns.reset();
        });
        work.reset();
        io.stop();
        if (io_thread.joinable()) io_thread.join();
        std::error_code ec;
        fs::remove_all(dir, ec);
    }

    void start() {
        audit = std::make_unique<agent::AuditLog>((dir / "audit.log").string());
        agent::DnsOptions o;
        o.upstream = "127.0.0.1:" + std::to_string(upstream.port);
        o.journal_path = (dir / "journal").string();
        dns = std::make_unique<agent::DnsService>(io, dp, *audit, o);
        SandboxesDeps deps{dp, *dns, [this](const std::vector<StoredAttachment>& r) { records = r; }};
        deps.open_cgroup = [this](const std::string& p) {
            loader::Cgroup c;
            c.path = p;
            c.id = cgroups.at(p);
            return c;
        };
        sbx = std::make_unique<Sandboxes>(std::move(deps));
        work.emplace(io.get_executor());
        io_thread = std::thread([this] { io.run(); });
    }

    std::optional<redir_dns_allow_val> admission(uint64_t cg, const char* addr) {
        return on_io([&]() -> std::optional<redir_dns_allow_val> {
            auto k = allow_key(cg, addr);
            for (auto& [key, v] : dp.dns_admissions())
                if (std::memcmp(&key, &k, sizeof(k)) == 0) return v;
            return std::nullopt;
        });
    }
};

TEST_F(DnsLifetimeTest, RestoreReKeysAdmissionsUnderTheNewPolicyIdAndWithdrawsTheRest) {
    // What the previous agent left: its attachment under policy id 7, three
    // admissions, and the journal naming them.
    loader::FakeDatapath previous(kernel, 1);
    redir_attach_val v{};
    v.policy_id = 7;
    loader::Cgroup a;
    a.path = "/cg/a";
    a.id = 101;
    previous.attach(a, v);
    const uint64_t expires = boot_ns() + 600'000'000'000ull;
    previous.put_dns_allow(allow_key(101, "203.0.113.90"), {7, 1, expires});
    previous.put_dns_allow(allow_key(101, "203.0.113.92"), {7, 1, expires});  // no longer allowed
    previous.put_dns_allow(allow_key(102, "203.0.113.90"), {7, 1, expires});  // cgroup no longer attached
    {
        agent::AdmissionJournal j((dir / "journal").string());
        j.append(101, v4("203.0.113.90"), "keep.example");
        j.append(101, v4("203.0.113.92"), "other.example");
        j.append(102, v4("203.0.113.90"), "keep.example");
    }
    records = {{"/cg/a", 101, "web"}};
    start();
    PolicyRef web{"web", 20, false, compile_text(kPolicy, 20)};
    on_io([&] {
        sbx->restore(records, [&](const std::string& n) { return n == "web" ? &web : nullptr; });
    });
    auto kept = admission(101, "203.0.113.90");
    ASSERT_TRUE(kept);
    EXPECT_EQ(kept->policy_id, 20u);
    EXPECT_EQ(kept->expires_ns, expires);
    EXPECT_FALSE(admission(101, "203.0.113.92"));
    EXPECT_FALSE(admission(102, "203.0.113.90"));
    auto c = on_io([&] { return dns->counters(); });
    EXPECT_EQ(c.restored, 1u);
    EXPECT_EQ(c.restore_withdrawn, 2u);
}

// A reload whose DNS re-check fails half-way (the admission map refuses a
// write) puts the kernel entry, the responder and every admission back on
// the old policy id: an admission under an id the sandbox does not run
// would be dead, one under the new id with the entry still old a leak.
TEST_F(DnsLifetimeTest, ReloadWhoseDnsRecheckFailsKeepsTheOldIdEverywhere) {
    loader::FakeDatapath previous(kernel, 1);
    redir_attach_val v{};
    v.policy_id = 7;
    previous.attach(loader::Cgroup{"/cg/a", 101, {}}, v);
    const uint64_t expires = boot_ns() + 600'000'000'000ull;
    previous.put_dns_allow(allow_key(101, "203.0.113.90"), {7, 1, expires});
    {
        agent::AdmissionJournal j((dir / "journal").string());
        j.append(101, v4("203.0.113.90"), "keep.example");
    }
    records = {{"/cg/a", 101, "web"}};
    start();
    PolicyRef web20{"web", 20, false, compile_text(kPolicy, 20)};
    PolicyRef web21{"web", 21, true, compile_text(kPolicy, 21)};
    on_io([&] { sbx->restore(records, [&](const std::string&) { return &web20; }); });
    ASSERT_EQ(admission(101, "203.0.113.90")->policy_id, 20u);

    on_io([&] { dp.fail_at("put_dns_allow"); });
    EXPECT_THROW(on_io([&] { return sbx->reload(web21, web20); }), Error);
    EXPECT_EQ(on_io([&] { return dp.attachment(101)->policy_id; }), 20u);
    EXPECT_EQ(on_io([&] { return sbx->find(101)->policy_id; }), 20u);
    auto kept = admission(101, "203.0.113.90");
    ASSERT_TRUE(kept) << "the rollback dropped an admission the old policy allows";
    EXPECT_EQ(kept->policy_id, 20u);
}

// Attacker: a sandbox asks for a name, then its cgroup is detached while the
// upstream answer is still on its way. The answer must find the sandbox gone
// (no admission written for a detached cgroup, nothing freed touched), while
// a sandbox that stays attached gets its answer and its admission.
TEST_F(DnsLifetimeTest, DetachWhileAnAnswerIsInFlightWritesNothingForTheGoneSandbox) {
    start();
    PolicyRef web{"web", 20, false, compile_text(kPolicy, 20)};
    uint16_t port_a = on_io([&] { return sbx->attach(loader::Cgroup{"/cg/a", 101, {}}, web).dns_port; });
    uint16_t port_b = on_io([&] { return sbx->attach(loader::Cgroup{"/cg/b", 102, {}}, web).dns_port; });

    Udp client_a, client_b;
    client_a.send_to(redir::dns::test::make_query("keep.example.", LDNS_RR_TYPE_A, 0x1111), port_a);
    client_b.send_to(redir::dns::test::make_query("short.example.", LDNS_RR_TYPE_A, 0x2222), port_b);
    std::map<std::string, std::pair<Bytes, sockaddr_in>> held;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (held.size() < 2 && std::chrono::steady_clock::now() < deadline)
        if (auto q = upstream.recv(100)) held[question_of(q->first)] = *q;
    ASSERT_EQ(held.size(), 2u) << "the responders did not forward both queries";

    ASSERT_EQ(on_io([&] { return sbx->detach(102, "/cg/b"); }), "/cg/b");

    // The gone sandbox's answer first, so it is processed before the other's.
    auto& [qb, from_b] = held.at("short.example.");
    upstream.send_to(redir::dns::test::make_answer(qb, {"short.example. 600 IN A 203.0.113.91"}), from_b);
    auto& [qa, from_a] = held.at("keep.example.");
    upstream.send_to(redir::dns::test::make_answer(qa, {"keep.example. 600 IN A 203.0.113.90"}), from_a);

    auto answer = client_a.recv(5000);
    ASSERT_TRUE(answer) << "the attached sandbox got no answer";
    EXPECT_EQ(redir::dns::test::rcode_of(answer->first), LDNS_RCODE_NOERROR);
    EXPECT_TRUE(admission(101, "203.0.113.90"));
    EXPECT_FALSE(admission(102, "203.0.113.91"));
    EXPECT_EQ(on_io([&] { return kernel.stray_admissions; }), 0u);
    EXPECT_FALSE(client_b.recv(200)) << "a detached sandbox's responder still answered";
}

}  // namespace
}  // namespace redir::enforce::test
