// The audit log's file and tail: spdlog's rotation names and sizes kept byte
// for byte, whole lines in one order with several writer threads, failed
// writes counted (a full disk), the tail's bounds, the rate limit, and no heap
// allocation per record once warm.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <sched.h>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <new>
#include <random>
#include <sstream>
#include <thread>

#include "agent/audit_log.hpp"
#include "agent/audit_tail.hpp"
#include "agent/rotating_file.hpp"

// Heap allocations made by the calling thread while counting is on. The
// replacements pair malloc with free, which GCC cannot see through.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
namespace {
thread_local bool g_counting = false;
thread_local std::size_t g_allocs = 0;
}  // namespace

void* operator new(std::size_t n) {
    if (g_counting) ++g_allocs;
    if (void* p = std::malloc(n ? n : 1)) return p;
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace redir::agent {
namespace {

namespace fs = std::filesystem;

class AuditLogTest : public ::testing::Test {
protected:
    void SetUp() override {
        dir_ = fs::temp_directory_path() / ("audit-log-" + std::to_string(::getpid()) + "-" +
                                            ::testing::UnitTest::GetInstance()->current_test_info()->name());
        fs::remove_all(dir_);
        fs::create_directories(dir_);
    }
    void TearDown() override { fs::remove_all(dir_); }

    static std::string read(const fs::path& p) {
        std::ifstream f(p, std::ios::binary);
        std::stringstream s;
        s << f.rdbuf();
        return s.str();
    }
    static std::vector<std::string> lines(const std::string& text) {
        std::vector<std::string> out;
        std::istringstream in(text);
        for (std::string l; std::getline(in, l);) out.push_back(l);
        return out;
    }
    std::vector<std::string> files() const {
        std::vector<std::string> out;
        for (auto& e : fs::directory_iterator(dir_)) out.push_back(e.path().filename().string());
        std::sort(out.begin(), out.end());
        return out;
    }
    // A record of about LEN bytes, its number in it.
    static std::string record(std::size_t i, std::size_t len) {
        std::string s = R"({"event":"test","n":)" + std::to_string(i) + R"(,"pad":")";
        s.append(len > s.size() + 2 ? len - s.size() - 2 : 0, 'x');
        return s + "\"}";
    }

    fs::path dir_;
};

TEST(RotatedName, IsSpdlogsName) {
    for (const std::string p : {"/var/log/redir/audit.log", "audit.log", "/a/audit", "/a/.audit", "/etc/rc.d/audit",
                                "/a/b.c/audit.log.gz", "audit.", "/a/.x.log", "x"})
        for (std::size_t i : {0u, 1u, 2u, 17u})
            EXPECT_EQ(rotated_name(p, i), spdlog::sinks::rotating_file_sink_st::calc_filename(p, i)) << p << " " << i;
}

// The files spdlog's sink wrote (same names, same sizes, same lines in each),
// for records of mixed lengths around the limit, the live file reopened
// half-way as a restarted agent does.
TEST_F(AuditLogTest, RotatesAsSpdlogsSinkDid) {
    const std::size_t max = 4096, keep = 3;
    fs::create_directories(dir_ / "ours");
    fs::create_directories(dir_ / "spdlog");
    std::mt19937 rng(7);
    std::vector<std::string> recs;
    for (std::size_t i = 0; i < 400; ++i) recs.push_back(record(i, 60 + rng() % 700));
    recs.push_back(record(400, 5000));  // larger than a file: written whole to a fresh one
    recs.push_back(record(401, 100));
    for (int half = 0; half < 2; ++half) {
        auto sink = std::make_shared<spdlog::sinks::rotating_file_sink_st>((dir_ / "spdlog/audit.log").string(), max,
                                                                           keep);
        spdlog::logger ref("ref", sink);
        ref.set_pattern("%v");
        ref.flush_on(spdlog::level::trace);
        AuditLog ours((dir_ / "ours/audit.log").string(), {.max_file_bytes = max, .keep_files = keep});
        for (std::size_t i = half * recs.size() / 2; i < (half + 1) * recs.size() / 2; ++i) {
            ref.info(recs[i]);
            ours.write(recs[i]);
        }
        EXPECT_EQ(ours.write_errors(), 0u);
    }
    for (const char* f : {"audit.log", "audit.1.log", "audit.2.log", "audit.3.log"}) {
        ASSERT_TRUE(fs::exists(dir_ / "ours" / f)) << f;
        EXPECT_EQ(read(dir_ / "ours" / f), read(dir_ / "spdlog" / f)) << f;
    }
    EXPECT_FALSE(fs::exists(dir_ / "ours/audit.4.log"));
}

// Several threads (the terminator's io threads) writing at once: every line
// whole, each writer's lines in its order, nothing lost across rotations, and
// the file, the tail and a follower in the same order.
TEST_F(AuditLogTest, ConcurrentWritersKeepLinesWholeAndInOneOrder) {
    const int writers = 4, per_writer = 3000;
    AuditLog log((dir_ / "audit.log").string(),
                 {.max_file_bytes = 1 << 20, .keep_files = 20, .tail_records = 100000, .tail_bytes = 64 << 20});
    std::vector<std::string> followed;
    log.subscribe([&](const std::string& l) {
        followed.push_back(l);
        return true;
    });
    std::vector<std::thread> ts;
    for (int w = 0; w < writers; ++w)
        ts.emplace_back([&, w] {
            for (int i = 0; i < per_writer; ++i) {
                std::string pad(static_cast<std::size_t>(100 + (i * 37 + w * 101) % 900), static_cast<char>('a' + w));
                log.write(R"({"w":)" + std::to_string(w) + R"(,"i":)" + std::to_string(i) + R"(,"pad":")" + pad + "\"}");
            }
        });
    for (auto& t : ts) t.join();

    ASSERT_FALSE(fs::exists(dir_ / "audit.20.log")) << "raise keep_files: records were rotated away";
    std::string all;
    for (int i = 19; i >= 1; --i)
        if (fs::exists(dir_ / rotated_name("audit.log", static_cast<std::size_t>(i))))
            all += read(dir_ / rotated_name("audit.log", static_cast<std::size_t>(i)));
    all += read(dir_ / "audit.log");
    const auto in_file = lines(all);
    ASSERT_EQ(in_file.size(), static_cast<std::size_t>(writers * per_writer));
    std::vector<int> next(writers, 0);
    for (const auto& l : in_file) {
        int w = -1, i = -1;
        ASSERT_EQ(std::sscanf(l.c_str(), R"({"w":%d,"i":%d,)", &w, &i), 2) << l;
        ASSERT_TRUE(w >= 0 && w < writers) << l;
        EXPECT_EQ(i, next[static_cast<std::size_t>(w)]++) << "writer " << w << " out of order";
        const std::string pad(static_cast<std::size_t>(100 + (i * 37 + w * 101) % 900), static_cast<char>('a' + w));
        EXPECT_EQ(l, R"({"w":)" + std::to_string(w) + R"(,"i":)" + std::to_string(i) + R"(,"pad":")" + pad + "\"}");
    }
    EXPECT_EQ(followed, in_file);
    EXPECT_EQ(log.tail(in_file.size()), in_file);
    EXPECT_EQ(log.written(), in_file.size());
    EXPECT_EQ(log.write_errors(), 0u);
    for (const auto& f : files()) EXPECT_LE(fs::file_size(dir_ / f), 1u << 20) << f;
}

// A follower that returns false is dropped; the others keep getting every line.
TEST_F(AuditLogTest, AFollowerThatLeavesIsDroppedAndTheOthersStay) {
    AuditLog log((dir_ / "audit.log").string());
    std::vector<std::string> a, b;
    log.subscribe([&](const std::string& l) {
        a.push_back(l);
        return a.size() < 2;
    });
    log.subscribe([&](const std::string& l) {
        b.push_back(l);
        return true;
    });
    for (int i = 0; i < 5; ++i) log.write(std::to_string(i));
    EXPECT_EQ(a, (std::vector<std::string>{"0", "1"}));
    EXPECT_EQ(b, (std::vector<std::string>{"0", "1", "2", "3", "4"}));
}

// Every write to /dev/full fails with ENOSPC: each is counted, none throws,
// and the records still reach the tail and the followers.
TEST_F(AuditLogTest, FailedWritesAreCountedAndTheTailStillGetsThem) {
    AuditLog log("/dev/full");
    int followed = 0;
    log.subscribe([&](const std::string&) { return ++followed, true; });
    for (int i = 0; i < 10; ++i) log.write(record(static_cast<std::size_t>(i), 300));
    EXPECT_EQ(log.write_errors(), 10u);
    EXPECT_EQ(log.written(), 10u);
    EXPECT_EQ(log.tail(100).size(), 10u);
    EXPECT_EQ(followed, 10);
}

// A real full disk: a 64 KiB tmpfs in a private mount namespace (a child
// process, so this test's process keeps its mounts). The disk fills
// mid-record: errors are counted, the tail carries on, and once there is room
// again the next record starts on a line of its own.
TEST_F(AuditLogTest, AFullDiskIsCountedAndLinesStayWhole) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a tmpfs";
    const fs::path disk = dir_ / "tiny";
    fs::create_directories(disk);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
        if (::unshare(CLONE_NEWNS) != 0 || ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
            ::mount("tmpfs", disk.c_str(), "tmpfs", 0, "size=64k") != 0)
            ::_exit(77);
        int code = 0;
        {
            // Files of 48 KiB: the second one cannot fit on a 64 KiB disk.
            AuditLog log((disk / "audit.log").string(), {.max_file_bytes = 48 << 10, .keep_files = 1});
            std::size_t i = 0;
            for (; i < 2000 && log.write_errors() == 0; ++i) log.write(record(i, 1000));
            for (std::size_t k = 0; k < 50; ++k) log.write(record(i + k, 1000));
            if (log.write_errors() == 0) code = 1;  // never filled
            if (log.tail(1).empty()) code = 2;      // the tail stopped
            if (log.written() != i + 50) code = 3;
            // Room again (an operator removed the rotated file): records reach
            // the file again, the first one on a line of its own.
            fs::remove(disk / "audit.1.log");
            const auto errors = log.write_errors();
            for (std::size_t k = 0; k < 5; ++k) log.write(record(i + 50 + k, 1000));
            if (log.write_errors() != errors) code = 5;
            std::ifstream in(disk / "audit.log");
            std::string l, last;
            while (std::getline(in, l)) last = l;
            if (last != record(i + 54, 1000)) code = 6;
        }
        // Whatever reached the disk is whole lines, maybe one torn record
        // ended by a newline: never two records on one line.
        for (const char* f : {"audit.log", "audit.1.log"}) {
            std::ifstream in(disk / f);
            for (std::string l; std::getline(in, l);)
                if (l.find("}{") != std::string::npos || std::count(l.begin(), l.end(), '{') > 1) code = 4;
        }
        ::umount(disk.c_str());
        ::_exit(code);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status));
    if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "cannot mount a tmpfs in a private mount namespace";
    EXPECT_EQ(WEXITSTATUS(status), 0);
}

// The tail against a deque model: the record and byte bounds (the newest kept
// even alone over the byte bound), through the ring's growth after drops.
TEST(AuditTail, KeepsWhatADequeWithBothBoundsKept) {
    for (std::size_t max_records : {1u, 3u, 50u})
        for (std::size_t max_bytes : {100u, 2000u, 1u << 20}) {
            AuditTail tail(max_records, max_bytes);
            std::deque<std::string> model;
            std::size_t bytes = 0;
            std::mt19937 rng(static_cast<unsigned>(max_records * 31 + max_bytes));
            for (std::size_t i = 0; i < 3000; ++i) {
                std::string l = std::to_string(i) + std::string(rng() % (i % 500 < 250 ? 40 : 3000), 'y');
                tail.push(l);
                model.push_back(l);
                bytes += l.size();
                while (model.size() > max_records || (bytes > max_bytes && model.size() > 1)) {
                    bytes -= model.front().size();
                    model.pop_front();
                }
                ASSERT_EQ(tail.size(), model.size()) << i;
                ASSERT_EQ(tail.bytes(), bytes) << i;
                if (i % 97 == 0 || i > 2990) {
                    ASSERT_EQ(tail.last(1000), std::vector<std::string>(model.begin(), model.end())) << i;
                    ASSERT_EQ(tail.last(2), std::vector<std::string>(model.end() - std::min<std::size_t>(2, model.size()),
                                                                     model.end()));
                }
            }
        }
}

TEST(AuditTail, NoRecordsKeptWhenTheBoundIsZero) {
    AuditTail tail(0, 100);
    tail.push("a");
    EXPECT_TRUE(tail.last(10).empty());
}

// Identical records of one sandbox: BURST written, the rest counted, one
// "suppressed" record once the window has ended.
TEST_F(AuditLogTest, RepeatedRecordsAreSuppressedAndSummarised) {
    AuditLog log((dir_ / "audit.log").string(), {.burst = 2, .window = std::chrono::milliseconds(50)});
    int admitted = 0;
    for (int i = 0; i < 7; ++i) admitted += log.admit(42, "connect deny 10.0.0.1") ? 1 : 0;
    EXPECT_EQ(admitted, 2);
    EXPECT_EQ(log.suppressed(), 5u);
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    log.flush_suppressed();
    auto t = log.tail(10);
    ASSERT_EQ(t.size(), 1u);
    EXPECT_NE(t[0].find(R"("event":"suppressed")"), std::string::npos) << t[0];
    EXPECT_NE(t[0].find(R"("count":5)"), std::string::npos) << t[0];
    EXPECT_EQ(lines(read(dir_ / "audit.log")), t);
}

// Once the tail is full and its slots have grown, a record costs no heap
// allocation: one write(2) of the caller's bytes, a copy into a reused slot.
TEST_F(AuditLogTest, ARecordAllocatesNothingOnceWarm) {
    AuditLog log((dir_ / "audit.log").string(), {.max_file_bytes = 1 << 20, .keep_files = 2, .tail_records = 64});
    std::vector<std::string> recs;
    for (std::size_t i = 0; i < 256; ++i) recs.push_back(record(i, 300 + i % 200));  // audit-line sizes
    for (int round = 0; round < 2; ++round)
        for (const auto& r : recs) log.write(r);  // warm: the ring is full, its slots grown
    g_allocs = 0;
    g_counting = true;
    for (int round = 0; round < 4; ++round)
        for (const auto& r : recs) log.write(r);
    g_counting = false;
    EXPECT_EQ(g_allocs, 0u) << "heap allocations in " << 4 * recs.size() << " records";
    EXPECT_EQ(log.write_errors(), 0u);
}

}  // namespace
}  // namespace redir::agent
