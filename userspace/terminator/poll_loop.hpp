#pragma once
// An io thread that polls for work a little before it sleeps.
//
// On a VM whose idle vCPUs halt (no guest halt polling), waking a thread
// asleep in epoll_wait on the other vCPU costs ~40 us: the host must wake the
// halted vCPU. At one connection a proxy pays that twice a request more than
// the direct path (the sandbox's request waking it, the provider's answer
// waking it), whatever its own code costs. A thread that is still polling when
// the next piece of work comes skips its wake-up. Polling is what KVM's halt
// polling does for a whole vCPU, and it is decided the same way: the window
// grows while the thread keeps being woken soon after it went to sleep (a
// longer window would have caught the work) and shrinks while it sleeps
// longer than the largest window (polling was wasted). A thread whose work is
// sparse (a few SSE events a second) stops polling; one whose work comes in
// quick succession (a call and its answer) polls through the gaps.
//
// While polling the thread yields the CPU on every round, and when the yield
// let another thread run (the agent in the sandbox, the provider, wrk) the
// CPU is wanted: the thread stops polling and sleeps, and the window shrinks
// as after a long sleep. So polling takes what would be idle time, not
// someone else's (KVM polls only a vCPU with nothing else to run). It does
// show in the agent's CPU time.
#include <atomic>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <functional>

namespace redir::terminator {

class PollWindow {
public:
    using Clock = std::chrono::steady_clock;
    using Duration = std::chrono::nanoseconds;
    // A window that grows to reach 0 < MAX is never shorter than this (KVM's
    // halt_poll_ns_grow_start): shorter polls catch nothing a wake-up loses.
    static constexpr Duration kGrowStart = std::chrono::microseconds(10);

    explicit PollWindow(Duration max) : max_(max) {}

    // How long to poll before sleeping, now.
    Duration window() const { return window_; }
    Duration max() const { return max_; }

    // The thread slept and was woken IDLE after it ran out of work (the
    // window's polling included): a window of IDLE would have caught it.
    // The thread polled and another thread took its CPU when it yielded:
    // the CPU is wanted, polling would take from what it is wanted for.
    void contended() { shrink(); }

    void slept(Duration idle) {
        if (idle > max_) {
            // Polling was wasted, and would be with any window.
            shrink();
        } else if (window_ < idle) {
            window_ = window_ < kGrowStart ? kGrowStart : window_ * 2;
            if (window_ > max_) window_ = max_;
        }
    }

private:
    void shrink() {
        window_ /= 2;
        if (window_ < kGrowStart) window_ = Duration::zero();
    }

    Duration max_;
    Duration window_{0};
};

// The io threads that poll together (a gateway's): what they did, and how
// many run handlers now. Read from any thread.
struct PollStats {
    std::atomic<std::uint64_t> caught{0};   // work found while polling: a wake-up saved
    std::atomic<std::uint64_t> slept{0};    // the thread slept (window ran out or was 0, or see below)
    std::atomic<std::uint64_t> yielded{0};  // of those, polling stopped because another thread took the CPU
    std::atomic<std::uint64_t> loaded{0};   // of those, not polled: the group was loaded (below)
    std::atomic<std::uint64_t> expired{0};  // of those, the window ran out: polled in vain
    std::atomic<std::uint64_t> polled_ns{0};  // time spent polling, in vain or not (its CPU cost)
    // Threads of the group running handlers now (not polling, not asleep).
    // While one does, the others do not poll: see run_polling.
    std::atomic<std::int64_t> busy{0};
};

// Runs CTX's handlers on this thread until CTX is stopped, like
// io_context::run(), polling up to a window adapted as above (at most MAX;
// 0 = never, which is run()). CTX must be run by this thread only. STATS, when
// given, is the group: the threads sharing it count into it.
//
// A loaded thread does not poll: when another thread of the group runs
// handlers, or when LIGHT (asked as the thread runs out of work) says no —
// the gateway's: more calls in flight on the thread than polling serves. A
// polling CPU does not look idle to the scheduler: on a busy machine it
// queues the threads it wakes (the provider, the sandbox's client) behind
// busy ones instead of on the CPU that only polls, and their latency is what
// the call waits for. Measured (#11): two io threads polling under load read
// a worse p99 at 50 connections, and one polling among 1,000 SSE streams a
// p99 per event 0.5-1 ms worse; one call on a quiet machine gains ~80 us.
void run_polling(boost::asio::io_context& ctx, PollWindow::Duration max, PollStats* stats = nullptr,
                 const std::function<bool()>& light = {});

}  // namespace redir::terminator
