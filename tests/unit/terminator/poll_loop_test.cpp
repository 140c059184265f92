// The io threads' polling before sleep (poll_loop.hpp): how the window adapts,
// and that run_polling runs an io_context as run() does — stops when told,
// takes work from other threads — and polls only while work comes soon.
#include "terminator/poll_loop.hpp"

#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>

#include <atomic>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <functional>
#include <future>
#include <thread>

namespace redir::terminator {
namespace {

namespace asio = boost::asio;
using std::chrono::microseconds;
using std::chrono::milliseconds;
using D = PollWindow::Duration;

TEST(PollWindowTest, StartsClosedAndOpensAtTheGrowStartOnTheFirstShortSleep) {
    PollWindow w(microseconds(200));
    EXPECT_EQ(w.window(), D::zero());
    w.slept(microseconds(3));
    EXPECT_EQ(w.window(), PollWindow::kGrowStart);
}

TEST(PollWindowTest, DoublesWhileALongerWindowWouldHaveCaughtTheWorkUpToTheMost) {
    PollWindow w(microseconds(200));
    std::vector<D> seen;
    for (int i = 0; i < 8; ++i) {
        w.slept(microseconds(190));
        seen.push_back(w.window());
    }
    EXPECT_EQ(seen, (std::vector<D>{microseconds(10), microseconds(20), microseconds(40), microseconds(80),
                                    microseconds(160), microseconds(200), microseconds(200), microseconds(200)}));
}

TEST(PollWindowTest, StaysWhenTheWorkCameWithinIt) {
    PollWindow w(microseconds(200));
    for (int i = 0; i < 4; ++i) w.slept(microseconds(50));  // 10, 20, 40, 80
    ASSERT_EQ(w.window(), microseconds(80));
    w.slept(microseconds(80));
    w.slept(microseconds(30));
    EXPECT_EQ(w.window(), microseconds(80));
}

TEST(PollWindowTest, HalvesToClosedWhileSleepsOutlastTheMost) {
    PollWindow w(microseconds(200));
    for (int i = 0; i < 6; ++i) w.slept(microseconds(190));
    ASSERT_EQ(w.window(), microseconds(200));
    std::vector<D> seen;
    for (int i = 0; i < 5; ++i) {
        w.slept(milliseconds(20));
        seen.push_back(w.window());
    }
    // Below the grow start a window catches nothing: it closes.
    EXPECT_EQ(seen, (std::vector<D>{microseconds(100), microseconds(50), microseconds(25), std::chrono::nanoseconds(12'500),
                                    D::zero()}));
}

TEST(PollWindowTest, ZeroMostNeverOpens) {
    PollWindow w(D::zero());
    w.slept(microseconds(1));
    w.slept(D::zero());
    EXPECT_EQ(w.window(), D::zero());
}

// Runs run_polling on its own thread until the test stops it (in a group of
// its own, or in GROUP's).
struct PollingThread {
    asio::io_context io{1};
    asio::executor_work_guard<asio::io_context::executor_type> guard = asio::make_work_guard(io);
    PollStats own;
    PollStats& stats;
    std::atomic<bool> light{true};  // what the thread's light() says
    std::thread thread;

    explicit PollingThread(D max, PollStats* group = nullptr)
        : stats(group ? *group : own),
          thread([this, max] { run_polling(io, max, &stats, [this] { return light.load(); }); }) {}
    ~PollingThread() {
        io.stop();
        thread.join();
    }
};

// A chain of N timers of PERIOD each, armed one from the other's handler on
// the polling thread; returns when the last has fired.
void chain_of_timers(PollingThread& t, int n, D period) {
    std::promise<void> done;
    asio::steady_timer timer(t.io);
    std::function<void(int)> arm = [&](int left) {
        if (left == 0) return done.set_value();
        timer.expires_after(period);
        timer.async_wait([&, left](auto) { arm(left - 1); });
    };
    asio::post(t.io, [&] { arm(n); });
    ASSERT_EQ(done.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);
}

// Chains of N timers of PERIOD on T until STATS has caught work while
// polling, at most ATTEMPTS chains. Polling rightly gives way while
// something else wants the CPU (a loaded test machine): more chains give a
// quiet moment a chance; a loop that never polls still catches nothing.
void chains_until_caught(PollingThread& t, PollStats& stats, int n, D period, int attempts = 5) {
    for (int i = 0; i < attempts && stats.caught.load() == 0; ++i) chain_of_timers(t, n, period);
}

TEST(RunPollingTest, StopEndsItAndWorkPostedFromAnotherThreadRuns) {
    PollingThread t(microseconds(200));
    for (int i = 0; i < 100; ++i) {
        std::promise<std::thread::id> ran;
        asio::post(t.io, [&] { ran.set_value(std::this_thread::get_id()); });
        auto f = ran.get_future();
        ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready) << "post " << i;
        EXPECT_EQ(f.get(), t.thread.get_id());
    }
    // ~PollingThread stops and joins: a hang here is the failure.
}

TEST(RunPollingTest, WorkComingSoonAfterTheLastIsCaughtWhilePolling) {
    PollingThread t(microseconds(2000));
    chains_until_caught(t, t.stats, 300, microseconds(100));
    EXPECT_GT(t.stats.caught.load(), 0u) << "slept " << t.stats.slept.load() << " times, never caught work polling";
}

// The guard against a thread that burns its CPU while idle: work sparser
// than the most never opens the window, so the thread never polls.
TEST(RunPollingTest, SparseWorkIsNeverPolledFor) {
    PollingThread t(microseconds(200));
    chain_of_timers(t, 30, milliseconds(3));
    EXPECT_EQ(t.stats.caught.load(), 0u);
    EXPECT_GE(t.stats.slept.load(), 30u);
    EXPECT_EQ(t.stats.expired.load(), 0u);
    EXPECT_EQ(t.stats.polled_ns.load(), 0u) << "an idle thread burnt CPU polling for sparse work";
}

// What polling costs is counted: bursts of close work open the window, and
// the long gap after each burst is polled for in vain (the window runs out)
// before the thread sleeps. The counters say how often and for how long.
TEST(RunPollingTest, PollingInVainIsCountedWithItsTime) {
    PollingThread t(microseconds(500));
    // Up to 100 bursts while none has expired (a loaded machine makes the
    // polls yield instead).
    for (int burst = 0; burst < 100 && (burst < 20 || t.stats.expired.load() == 0); ++burst) {
        chain_of_timers(t, 20, microseconds(50));
        std::this_thread::sleep_for(milliseconds(3));
    }
    EXPECT_GT(t.stats.expired.load(), 0u) << "caught " << t.stats.caught.load() << ", slept " << t.stats.slept.load();
    EXPECT_LE(t.stats.expired.load(), t.stats.slept.load());
    // Each expiry polled at least the smallest open window.
    EXPECT_GE(t.stats.polled_ns.load(),
              t.stats.expired.load() * static_cast<std::uint64_t>(PollWindow::kGrowStart.count()));
}

// The escape attempt: a sandbox pacing its requests to keep the io thread
// polling (work every 30 us, well inside the window) while the agent, the
// provider or another sandbox needs that CPU. Both threads on one CPU: every
// poll round's yield lets the neighbour run, the thread stops polling and
// sleeps, and the neighbour gets the CPU as if the thread never polled.
TEST(RunPollingTest, PollingStopsWhenAnotherThreadWantsTheCpu) {
    cpu_set_t mine;
    ASSERT_EQ(sched_getaffinity(0, sizeof mine, &mine), 0);
    int cpu = 0;
    while (cpu < CPU_SETSIZE && !CPU_ISSET(cpu, &mine)) ++cpu;
    ASSERT_LT(cpu, CPU_SETSIZE);
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);

    PollingThread t(microseconds(2000));
    ASSERT_EQ(pthread_setaffinity_np(t.thread.native_handle(), sizeof one, &one), 0);
    std::atomic<bool> stop{false};
    std::atomic<double> neighbour_share{0};
    std::thread neighbour([&] {
        pthread_setaffinity_np(pthread_self(), sizeof one, &one);
        auto cpu_now = [] {
            timespec ts{};
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
            return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
        };
        const auto wall0 = std::chrono::steady_clock::now();
        const auto cpu0 = cpu_now();
        while (!stop.load(std::memory_order_relaxed)) {
        }
        neighbour_share = std::chrono::duration<double>(cpu_now() - cpu0) /
                          std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0);
    });
    chain_of_timers(t, 500, microseconds(30));
    stop = true;
    neighbour.join();
    EXPECT_GT(t.stats.yielded.load(), 0u) << "caught " << t.stats.caught.load() << ", slept " << t.stats.slept.load();
    // A thread that kept polling would hold the CPU half the time; one that
    // sleeps uses it only to run its handlers.
    EXPECT_GT(neighbour_share.load(), 0.6) << "caught " << t.stats.caught.load() << ", yielded "
                                           << t.stats.yielded.load();
}

// Two io threads of one gateway: while one runs handlers (a loaded gateway)
// the other does not poll, though its work comes quickly; once the first is
// idle again, it does.
TEST(RunPollingTest, NoPollingWhileAnotherThreadOfTheGroupRuns) {
    PollStats group;
    PollingThread busy(microseconds(2000), &group), quick(microseconds(2000), &group);
    std::atomic<bool> release{false};
    std::promise<void> running;
    // Posted from a handler: it runs in the loop's poll() after the
    // handler that woke the thread, as a loaded thread's work does (the
    // handler run_one() wakes for counts as idle: no hook around it).
    asio::post(busy.io, [&] {
        asio::post(busy.io, [&] {
            running.set_value();
            while (!release.load()) {
            }
        });
    });
    running.get_future().wait();
    chain_of_timers(quick, 300, microseconds(100));
    EXPECT_EQ(group.caught.load(), 0u);
    EXPECT_GT(group.loaded.load(), 0u);
    release = true;
    chains_until_caught(quick, group, 300, microseconds(100));
    EXPECT_GT(group.caught.load(), 0u);
}

// The gateway's own test of load (more calls in flight on the thread than
// polling serves): while it says loaded, the thread sleeps at once.
TEST(RunPollingTest, NoPollingWhileTheThreadSaysItIsLoaded) {
    PollingThread t(microseconds(2000));
    t.light = false;
    chain_of_timers(t, 300, microseconds(100));
    EXPECT_EQ(t.stats.caught.load(), 0u);
    EXPECT_GT(t.stats.loaded.load(), 0u);
    t.light = true;
    chains_until_caught(t, t.stats, 300, microseconds(100));
    EXPECT_GT(t.stats.caught.load(), 0u);
}

TEST(RunPollingTest, ZeroMostIsRunAndCountsNothing) {
    PollingThread t(D::zero());
    chain_of_timers(t, 50, microseconds(50));
    EXPECT_EQ(t.stats.caught.load() + t.stats.slept.load() + t.stats.polled_ns.load(), 0u);
}

}  // namespace
}  // namespace redir::terminator
