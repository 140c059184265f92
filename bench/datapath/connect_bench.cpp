// connect() cost inside a sandbox by policy size, against the same loop with
// no programs attached, all measured in one run (these machines are noisy, so
// only ratios within a run mean anything). Also the compile+load time of a
// 100,000-rule policy. Runs as root in a private network namespace; the UDP
// connect() it times sends no packet.
//
// Targets (asserted, exit 1 when missed):
//   connect overhead at 100,000 rules within 10% of the 10-rule figure
//   100,000-rule policy parsed, compiled and written to the maps in < 1 s
#include <arpa/inet.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "loader/datapath.hpp"
#include "netns.hpp"
#include "policy/compile.hpp"
#include "policy/parse.hpp"

using namespace redir;
using Clock = std::chrono::steady_clock;

namespace {

// N rules: N-1 scattered /32s and /24s in public-looking space that no test
// address uses, plus the one that admits the benchmark's destination.
std::string make_policy(const std::string& name, size_t n) {
    std::mt19937 rng(42);
    std::string s = "{\"version\":1,\"name\":\"" + name + "\",\"allow\":[";
    s += "{\"cidr\":\"203.0.113.0/24\",\"ports\":[\"5000-6000\"],\"protocol\":\"udp\"}";
    for (size_t i = 1; i < n; i++) {
        uint32_t a = 0x14000000u + (rng() % 0x0c000000u);  // 20.0.0.0 - 43.255.255.255
        bool net24 = (i % 3) == 0;
        if (net24) a &= 0xffffff00u;
        char buf[64];
        std::snprintf(buf, sizeof(buf), ",\n{\"cidr\":\"%u.%u.%u.%u/%d\",\"ports\":[%u,\"%u-%u\"]}", a >> 24,
                      (a >> 16) & 255, (a >> 8) & 255, a & 255, net24 ? 24 : 32, 443, 8000 + (unsigned)(i % 50),
                      8100 + (unsigned)(i % 50));
        s += buf;
    }
    s += "]}";
    return s;
}

struct LoadTimes {
    double parse_ms, compile_ms, write_ms;
    size_t lpm, portsets;
};

LoadTimes load(loader::Datapath& dp, const std::string& text, uint32_t id) {
    LoadTimes t{};
    auto t0 = Clock::now();
    auto r = policy::parse_policy(text, "bench.json");
    if (!r.ok()) throw std::runtime_error(r.error_text());
    auto t1 = Clock::now();
    auto c = policy::compile(*r.policy, id);
    auto t2 = Clock::now();
    for (auto& ps : c.portsets) dp.put_portset(ps.key, ps.set);
    for (auto& e : c.lpm) dp.put_lpm(e.key, e.val);
    auto t3 = Clock::now();
    auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
    t.parse_ms = ms(t0, t1);
    t.compile_ms = ms(t1, t2);
    t.write_ms = ms(t2, t3);
    t.lpm = c.lpm.size();
    t.portsets = c.portsets.size();
    return t;
}

// ns per connect() of one UDP socket re-connected ITERS times, run in CGROUP.
double time_connects(const std::string& cgroup, int iters) {
    int pipefd[2];
    if (::pipe(pipefd) != 0) throw std::runtime_error("pipe");
    pid_t pid = ::fork();
    if (pid == 0) {
        std::ofstream(cgroup + "/cgroup.procs") << ::getpid() << std::endl;
        int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
        sockaddr_in sa{};
        sa.sin_family = AF_INET;
        sa.sin_port = htons(5353);
        inet_pton(AF_INET, "203.0.113.5", &sa.sin_addr);
        double ns = -1;
        for (int i = 0; i < 1000; i++) ::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa));  // warm up
        auto t0 = Clock::now();
        int fails = 0;
        for (int i = 0; i < iters; i++)
            if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) fails++;
        auto t1 = Clock::now();
        if (fails == 0) ns = std::chrono::duration<double, std::nano>(t1 - t0).count() / iters;
        ::write(pipefd[1], &ns, sizeof(ns));
        ::_exit(0);
    }
    double ns = -1;
    ::read(pipefd[0], &ns, sizeof(ns));
    ::waitpid(pid, nullptr, 0);
    ::close(pipefd[0]);
    ::close(pipefd[1]);
    if (ns < 0) throw std::runtime_error("connect() failed inside the sandbox: policy did not admit the target");
    return ns;
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    int iters = argc > 1 ? std::atoi(argv[1]) : 300000;
    int rounds = argc > 2 ? std::atoi(argv[2]) : 7;
    if (::geteuid() != 0) {
        std::fprintf(stderr, "connect_bench needs root\n");
        return 2;
    }
    testsupport::enter_private_netns({"203.0.113.1/24"});
    std::string bpffs = "/sys/fs/bpf/redir-bench-" + std::to_string(::getpid());
    int rc = 0;
    {
        auto dp = loader::Datapath::open({bpffs});
        redir_config cfg{};
        cfg.agent_netns_cookie = testsupport::current_netns_cookie();
        dp->set_config(cfg);

        const size_t sizes[] = {10, 1000, 100000};
        std::vector<LoadTimes> loads;
        for (uint32_t i = 0; i < 3; i++) loads.push_back(load(*dp, make_policy("p" + std::to_string(sizes[i]), sizes[i]), i + 1));

        testsupport::TempCgroup bare("bench-bare"), sandbox("bench-sb");
        auto cg = loader::open_cgroup(sandbox.path());
        redir_attach_val av{};
        av.policy_id = 1;
        dp->attach(cg, av);

        // Interleave every configuration in each round so drift hits all alike.
        std::vector<double> base, with[3];
        for (int r = 0; r < rounds; r++) {
            base.push_back(time_connects(bare.path(), iters));
            for (uint32_t i = 0; i < 3; i++) {
                av.policy_id = i + 1;
                dp->set_attachment(cg.id, av);
                with[i].push_back(time_connects(sandbox.path(), iters));
            }
        }
        dp->detach(cg.id);

        double b = median(base);
        std::printf("connect() of a UDP socket, %d iterations x %d rounds, median ns/op\n", iters, rounds);
        std::printf("  %-26s %8.1f ns  (ratio 1.00)\n", "no programs (baseline)", b);
        double m[3];
        for (int i = 0; i < 3; i++) {
            m[i] = median(with[i]);
            std::printf("  %-26s %8.1f ns  (ratio %.2f, overhead %+.1f ns)\n",
                        ("sandbox, " + std::to_string(sizes[i]) + " rules").c_str(), m[i], m[i] / b, m[i] - b);
        }
        double r100k = m[2] / m[0];
        std::printf("connect at 100000 rules / at 10 rules: %.3f (target <= 1.10)\n", r100k);
        for (int i = 0; i < 3; i++)
            std::printf("load %6zu rules: parse %7.1f ms, compile %7.1f ms, write %7.1f ms, total %7.1f ms "
                        "(%zu LPM entries, %zu port sets)\n",
                        sizes[i], loads[i].parse_ms, loads[i].compile_ms, loads[i].write_ms,
                        loads[i].parse_ms + loads[i].compile_ms + loads[i].write_ms, loads[i].lpm, loads[i].portsets);
        double total100k = loads[2].parse_ms + loads[2].compile_ms + loads[2].write_ms;
        std::printf("100000-rule load: %.0f ms (target < 1000 ms)\n", total100k);
        if (r100k > 1.10) {
            std::printf("FAIL: connect cost at 100000 rules is more than 10%% above the 10-rule figure\n");
            rc = 1;
        }
        if (total100k >= 1000) {
            std::printf("FAIL: 100000-rule load took %.0f ms\n", total100k);
            rc = 1;
        }
    }
    std::filesystem::remove_all(bpffs);
    return rc;
}
