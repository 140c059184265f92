// The audit log's file and tail: spdlog's rotation names and sizes kept byte
// for byte (records written one by one or in batches), whole lines in one
// order with several writer threads, failed writes counted per record (a full
// disk), batches of an io-loop turn in one writev and flushed before the turn
// ends, the tail's bounds, the rate limit, and no heap allocation per record
// once warm.
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

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
#include <numeric>
#include <random>
#include <set>
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

// The same files when the records come in batches (write_deferred, then
// flush) of random sizes: a batch that crosses the limit is split at the
// record that would cross it, and a batch costs one writev per file it lands
// in.
TEST_F(AuditLogTest, BatchesRotateAsSpdlogsSinkDid) {
    const std::size_t max = 4096, keep = 3;
    fs::create_directories(dir_ / "ours");
    fs::create_directories(dir_ / "spdlog");
    std::mt19937 rng(11);
    std::vector<std::string> recs;
    for (std::size_t i = 0; i < 600; ++i) recs.push_back(record(i, 60 + rng() % 700));
    recs.insert(recs.begin() + 300, record(1000, 5000));  // larger than a file, inside a batch
    recs.insert(recs.begin() + 301, record(1001, 9000));  // and another right after it
    auto sink = std::make_shared<spdlog::sinks::rotating_file_sink_st>((dir_ / "spdlog/audit.log").string(), max, keep);
    spdlog::logger ref("ref", sink);
    ref.set_pattern("%v");
    ref.flush_on(spdlog::level::trace);
    AuditLog ours((dir_ / "ours/audit.log").string(), {.max_file_bytes = max, .keep_files = keep});
    std::size_t batches = 0;
    for (std::size_t i = 0; i < recs.size(); ++batches) {
        const std::size_t n = std::min<std::size_t>(1 + rng() % 40, recs.size() - i);
        const auto writes = ours.file_writes();
        for (std::size_t k = 0; k < n; ++k, ++i) {
            ref.info(recs[i]);
            ours.write_deferred(recs[i]);
        }
        ASSERT_EQ(ours.file_writes(), writes) << "nothing is written before the flush";
        ours.flush();
        ASSERT_GT(ours.file_writes(), writes);
    }
    EXPECT_EQ(ours.write_errors(), 0u);
    // A writev per batch, and one more per rotation inside a batch (a file
    // holds 4096 bytes, about 10 records).
    const std::size_t bytes = std::accumulate(recs.begin(), recs.end(), std::size_t{0},
                                              [](std::size_t a, const std::string& r) { return a + r.size() + 1; });
    EXPECT_LE(ours.file_writes(), batches + bytes / 2000) << "batches were not written together";
    for (const char* f : {"audit.log", "audit.1.log", "audit.2.log", "audit.3.log"}) {
        ASSERT_TRUE(fs::exists(dir_ / "ours" / f)) << f;
        EXPECT_EQ(read(dir_ / "ours" / f), read(dir_ / "spdlog" / f)) << f;
    }
    EXPECT_FALSE(fs::exists(dir_ / "ours/audit.4.log"));
}

// A rotation whose rename fails (audit.1.log is a directory with something in
// it) costs one counted error, and the live file is truncated anyway: it stays
// bounded, in batches as one by one.
TEST_F(AuditLogTest, AFailedRotationIsCountedAndTheFileStaysBounded) {
    fs::create_directories(dir_ / "audit.1.log/x");
    AuditLog log((dir_ / "audit.log").string(), {.max_file_bytes = 1000, .keep_files = 1});
    for (std::size_t i = 0; i < 5; ++i) log.write(record(i, 300));  // 3 in the file, then a rotation
    EXPECT_EQ(log.write_errors(), 1u);
    for (std::size_t i = 5; i < 10; ++i) log.write_deferred(record(i, 300));
    log.flush();  // the batch splits at two more rotations
    EXPECT_EQ(log.write_errors(), 3u);
    EXPECT_EQ(lines(read(dir_ / "audit.log")), (std::vector<std::string>{record(9, 300)}));
    EXPECT_LE(fs::file_size(dir_ / "audit.log"), 1000u);
}

// Deferred records are in the tail and with the followers at once, and in
// the file after flush(): all of them in one writev(2), in order.
TEST_F(AuditLogTest, DeferredRecordsReachTheFileInOneWriteAtTheFlush) {
    AuditLog log((dir_ / "audit.log").string());
    std::vector<std::string> followed, want;
    log.subscribe([&](const std::string& l) {
        followed.push_back(l);
        return true;
    });
    for (std::size_t i = 0; i < 50; ++i) {
        want.push_back(record(i, 200 + i));
        EXPECT_EQ(log.write_deferred(want.back()), i == 0) << "only the batch's first record asks for a flush";
    }
    EXPECT_EQ(log.tail(100), want);
    EXPECT_EQ(followed, want);
    EXPECT_EQ(fs::file_size(dir_ / "audit.log"), 0u);
    EXPECT_EQ(log.file_writes(), 0u);
    log.flush();
    EXPECT_EQ(log.file_writes(), 1u);
    EXPECT_EQ(lines(read(dir_ / "audit.log")), want);
    log.flush();  // nothing pending: no write
    EXPECT_EQ(log.file_writes(), 1u);
    // The next batch asks again; an immediate write takes the pending records
    // with it, in order, in the same writev.
    EXPECT_TRUE(log.write_deferred(record(50, 100)));
    want.push_back(record(50, 100));
    log.write(record(51, 100));
    want.push_back(record(51, 100));
    EXPECT_EQ(log.file_writes(), 2u);
    EXPECT_EQ(lines(read(dir_ / "audit.log")), want);
    EXPECT_EQ(log.written(), want.size());
}

// A batch that reaches kFlushBytes is written without waiting for the flush.
TEST_F(AuditLogTest, ALargeBatchIsWrittenWithoutWaitingForTheFlush) {
    AuditLog log((dir_ / "audit.log").string());
    std::size_t bytes = 0, i = 0;
    for (; bytes < AuditLog::kFlushBytes - 1000; ++i) {
        log.write_deferred(record(i, 1000));
        bytes += 1001;
    }
    EXPECT_EQ(log.file_writes(), 0u);
    EXPECT_FALSE(log.write_deferred(record(i++, 1000))) << "written now: no flush needed for it";
    EXPECT_EQ(log.file_writes(), 1u);
    EXPECT_EQ(lines(read(dir_ / "audit.log")).size(), i);
}

// Each thread that adds to a batch is told to flush it (its own io_context
// then writes it by the end of its turn), not only the first: a record never
// waits for another thread's turn to end.
TEST_F(AuditLogTest, EachWritingThreadIsAskedForItsOwnFlush) {
    AuditLog log((dir_ / "audit.log").string());
    auto on_thread = [&](const std::string& l) {
        bool post = false;
        std::thread([&] { post = log.write_deferred(l); }).join();
        return post;
    };
    EXPECT_TRUE(log.write_deferred("a1"));
    EXPECT_TRUE(on_thread("b1"));
    EXPECT_FALSE(log.write_deferred("a2"));
    log.flush();
    EXPECT_TRUE(log.write_deferred("a3")) << "the batch it added to was written: a new one needs a new flush";
    AuditLog other((dir_ / "other.log").string());
    EXPECT_TRUE(other.write_deferred("x")) << "another log's batch is another batch";
    EXPECT_FALSE(other.write_deferred("y"));
    log.flush();
    other.flush();
    EXPECT_EQ(lines(read(dir_ / "audit.log")), (std::vector<std::string>{"a1", "b1", "a2", "a3"}));
    EXPECT_EQ(lines(read(dir_ / "other.log")), (std::vector<std::string>{"x", "y"}));
}

// Records still pending when the log goes (the agent exits) reach the file.
TEST_F(AuditLogTest, PendingRecordsAreWrittenWhenTheLogIsDestroyed) {
    {
        AuditLog log((dir_ / "audit.log").string());
        log.write_deferred("one");
        log.write_deferred("two");
    }
    EXPECT_EQ(lines(read(dir_ / "audit.log")), (std::vector<std::string>{"one", "two"}));
}

// From io threads (write_from_loop): the records of one loop turn reach the
// file in one writev, before the thread goes back to wait: when run() returns
// (the queue is empty) they are all in the file, the log still open.
TEST_F(AuditLogTest, IoThreadsWriteOneBatchPerLoopTurn) {
    AuditLog log((dir_ / "audit.log").string());
    boost::asio::io_context io(1);
    const std::vector loops{io.get_executor()};
    std::vector<std::string> want;
    for (std::size_t i = 0; i < 40; ++i) {
        want.push_back(record(i, 300));
        boost::asio::post(io, [&, i] { write_from_loop(log, want[i], loops); });
    }
    io.run();
    EXPECT_EQ(log.file_writes(), 1u) << "40 records ready in one turn";
    EXPECT_EQ(lines(read(dir_ / "audit.log")), want);
    // A handler that writes and then waits: its record is in the file before
    // the thread waits (the timer's handler looks).
    io.restart();
    boost::asio::steady_timer timer(io);
    std::string seen;
    boost::asio::post(io, [&] {
        write_from_loop(log, "late", loops);
        timer.expires_after(std::chrono::milliseconds(20));
        timer.async_wait([&](boost::system::error_code) { seen = read(dir_ / "audit.log"); });
    });
    io.run();
    EXPECT_EQ(lines(seen).back(), "late");
    // Not on one of the loops: written at once.
    write_from_loop(log, "elsewhere", loops);
    EXPECT_EQ(lines(read(dir_ / "audit.log")).back(), "elsewhere");
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

// Two io threads writing batches (write_from_loop) and another thread writing
// at once (the event reader): the file, the tail and a follower in one order,
// each writer's records in its order, and records batched.
TEST_F(AuditLogTest, LoopWritersAndImmediateWritersKeepOneOrder) {
    const int loops_n = 2, handlers = 300, per_handler = 7, immediate = 500;
    AuditLog log((dir_ / "audit.log").string(),
                 {.max_file_bytes = 256 << 10, .keep_files = 40, .tail_records = 100000, .tail_bytes = 64 << 20});
    std::vector<std::string> followed;
    log.subscribe([&](const std::string& l) {
        followed.push_back(l);
        return true;
    });
    auto line = [](int w, int i) {
        return R"({"w":)" + std::to_string(w) + R"(,"i":)" + std::to_string(i) + R"(,"pad":")" +
               std::string(static_cast<std::size_t>(100 + (i * 37 + w * 101) % 600), static_cast<char>('a' + w)) + "\"}";
    };
    std::vector<std::unique_ptr<boost::asio::io_context>> ios;
    std::vector<boost::asio::io_context::executor_type> loops;
    for (int w = 0; w < loops_n; ++w) {
        ios.push_back(std::make_unique<boost::asio::io_context>(1));
        loops.push_back(ios.back()->get_executor());
    }
    std::vector<std::thread> ts;
    for (int w = 0; w < loops_n; ++w)
        ts.emplace_back([&, w] {
            auto& io = *ios[static_cast<std::size_t>(w)];
            // A chain of handlers, each writing a few records, as requests
            // ending in one turn do.
            std::function<void(int)> step = [&](int h) {
                for (int k = 0; k < per_handler; ++k) write_from_loop(log, line(w, h * per_handler + k), loops);
                if (h + 1 < handlers) boost::asio::post(io, [&step, h] { step(h + 1); });
            };
            boost::asio::post(io, [&] { step(0); });
            io.run();
        });
    ts.emplace_back([&] {
        for (int i = 0; i < immediate; ++i) log.write(line(loops_n, i));
    });
    for (auto& t : ts) t.join();

    std::string all;
    for (int i = 39; i >= 1; --i)
        if (fs::exists(dir_ / rotated_name("audit.log", static_cast<std::size_t>(i))))
            all += read(dir_ / rotated_name("audit.log", static_cast<std::size_t>(i)));
    all += read(dir_ / "audit.log");
    const auto in_file = lines(all);
    const std::size_t total = loops_n * handlers * per_handler + immediate;
    ASSERT_EQ(in_file.size(), total);
    std::vector<int> next(loops_n + 1, 0);
    for (const auto& l : in_file) {
        int w = -1, i = -1;
        ASSERT_EQ(std::sscanf(l.c_str(), R"({"w":%d,"i":%d,)", &w, &i), 2) << l;
        ASSERT_TRUE(w >= 0 && w <= loops_n) << l;
        EXPECT_EQ(i, next[static_cast<std::size_t>(w)]++) << "writer " << w << " out of order";
        EXPECT_EQ(l, line(w, i));
    }
    EXPECT_EQ(followed, in_file);
    EXPECT_EQ(log.tail(total), in_file);
    EXPECT_EQ(log.write_errors(), 0u);
    EXPECT_LT(log.file_writes(), total / 2) << "the io threads' records were not batched";
    for (const auto& f : files()) EXPECT_LE(fs::file_size(dir_ / f), 256u << 10) << f;
}

// subscribe_after_tail while another thread writes as fast as it can: the
// tail and then the followed records are consecutive (nothing lost between
// the two, nothing twice), whatever the moment.
TEST_F(AuditLogTest, TheTailAndTheFollowedRecordsNeitherGapNorOverlap) {
    AuditLog log((dir_ / "audit.log").string(), {.max_file_bytes = 64 << 20, .tail_records = 1000});
    std::atomic<long> last{-1};
    std::jthread writer([&](std::stop_token stop) {  // stopped and joined however the test ends
        for (long i = 0; !stop.stop_requested(); ++i) {
            log.write_deferred(std::to_string(i));
            if (i % 16 == 15) log.flush();
            last = i;
        }
    });
    while (last < 100) std::this_thread::yield();
    for (int round = 0; round < 200; ++round) {
        // Filled by the writer's thread (the subscriber runs under the log's
        // lock there), read here once it says 20.
        struct Seen {
            long n[20];
            std::atomic<std::size_t> count{0};
        };
        auto seen = std::make_shared<Seen>();
        const auto tail = log.subscribe_after_tail(round % 2 ? 1 : 50, [seen](const std::string& l) {
            const std::size_t k = seen->count.load(std::memory_order_relaxed);
            seen->n[k] = std::stol(l);
            seen->count.store(k + 1, std::memory_order_release);
            return k + 1 < 20;  // then unsubscribed
        });
        while (seen->count.load(std::memory_order_acquire) < 20) std::this_thread::yield();
        ASSERT_FALSE(tail.empty());
        std::vector<long> all;
        for (auto& t : tail) all.push_back(std::stol(t));
        all.insert(all.end(), seen->n, seen->n + 20);
        for (std::size_t i = 1; i < all.size(); ++i) ASSERT_EQ(all[i], all[i - 1] + 1) << "round " << round << " at " << i;
    }
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

// The disk fills in the middle of batches: every record is either whole in a
// file or counted as a write error (the one the disk cut short too), never
// both, never neither; no line holds two records.
TEST_F(AuditLogTest, AFullDiskMidBatchCountsEachRecordLost) {
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
        std::size_t written = 0, errors = 0;
        {
            AuditLog log((disk / "audit.log").string(), {.max_file_bytes = 48 << 10, .keep_files = 1});
            std::size_t i = 0;
            for (int b = 0; b < 20; ++b) {
                for (int k = 0; k < 9; ++k, ++i) log.write_deferred(record(i, 700 + (i * 131) % 600));
                log.flush();
            }
            written = log.written();
            errors = log.write_errors();
            if (errors == 0) code = 1;  // never filled
        }
        std::size_t whole = 0;
        std::set<int> seen;
        for (const char* f : {"audit.log", "audit.1.log"}) {
            std::ifstream in(disk / f);
            for (std::string l; std::getline(in, l);) {
                if (std::count(l.begin(), l.end(), '{') > 1) code = 4;  // two records on a line
                int n = -1;
                if (std::sscanf(l.c_str(), R"({"event":"test","n":%d,)", &n) == 1 &&
                    l == record(static_cast<std::size_t>(n), 700 + (static_cast<std::size_t>(n) * 131) % 600)) {
                    ++whole;
                    if (!seen.insert(n).second) code = 5;  // twice
                }
            }
        }
        if (whole + errors != written) code = 6;
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

// The same from an io thread: the batch buffer is reused and the deferred
// flush's handler comes from Asio's per-thread recycling allocator, so once
// warm a turn's records and its flush allocate nothing.
TEST_F(AuditLogTest, LoopWritesAllocateNothingOnceWarm) {
    // No rotation in the test (its file names allocate, once per rotation).
    AuditLog log((dir_ / "audit.log").string(), {.max_file_bytes = 8 << 20, .keep_files = 2, .tail_records = 64});
    std::vector<std::string> recs;
    for (std::size_t i = 0; i < 256; ++i) recs.push_back(record(i, 300 + i % 200));
    boost::asio::io_context io(1);
    const std::vector loops{io.get_executor()};
    // Turns of 16 records; each handler posts the next one.
    std::function<void(std::size_t, bool)> turn = [&](std::size_t t, bool count) {
        if (t == 0 && count) g_counting = true;
        for (std::size_t k = 0; k < 16; ++k) write_from_loop(log, recs[(t * 16 + k) % recs.size()], loops);
        if (t + 1 < 64)
            boost::asio::post(io, [&turn, t, count] { turn(t + 1, count); });
        else
            boost::asio::post(io, [] { g_counting = false; });
    };
    for (bool count : {false, false, true}) {
        if (count) g_allocs = 0;
        boost::asio::post(io, [&turn, count] { turn(0, count); });
        io.restart();
        io.run();
    }
    EXPECT_EQ(g_allocs, 0u) << "heap allocations in 64 turns of 16 records";
    EXPECT_GE(log.file_writes(), 3u * 64u);
    EXPECT_EQ(log.file_writes(), 3u * 64u) << "one writev a turn";
    EXPECT_EQ(log.write_errors(), 0u);
}

}  // namespace
}  // namespace redir::agent
