#include "terminator/poll_loop.hpp"

#include <sched.h>

namespace redir::terminator {

namespace {
// A poll round (epoll_wait with no wait, sched_yield) that took longer than
// this let another thread run (~1-2 us when nothing else did, here). A VM
// exit can read as one too: it only stops polling early.
constexpr auto kYieldedTo = std::chrono::microseconds(8);

// This thread's part of PollStats::busy, given back however the loop ends
// (a handler's exception included: the gateway runs the loop again).
class Running {
public:
    explicit Running(std::atomic<std::int64_t>& busy) : busy_(busy) { set(true); }
    ~Running() { set(false); }
    Running(const Running&) = delete;
    Running& operator=(const Running&) = delete;
    void set(bool on) {
        if (on == on_) return;
        busy_.fetch_add(on ? 1 : -1, std::memory_order_relaxed);
        on_ = on;
    }

private:
    std::atomic<std::int64_t>& busy_;
    bool on_ = false;
};
}  // namespace

void run_polling(boost::asio::io_context& ctx, PollWindow::Duration max, PollStats* stats,
                 const std::function<bool()>& light) {
    if (max <= PollWindow::Duration::zero()) {
        ctx.run();
        return;
    }
    using Clock = PollWindow::Clock;
    PollWindow w(max);
    PollStats local;
    PollStats& s = stats ? *stats : local;
    auto count = [](std::atomic<std::uint64_t>& c) { c.fetch_add(1, std::memory_order_relaxed); };
    // Handlers run by the polls below and by run_one() count as idle (there
    // is no hook around them); the loop's first poll(), where a loaded
    // thread spends its time, counts as running.
    Running running(s.busy);
    while (!ctx.stopped()) {
        // poll() runs every handler ready now (and those they make ready,
        // the held sends at the end of the turn included) without waiting.
        running.set(true);
        if (ctx.poll() > 0) continue;
        if (ctx.stopped()) break;
        running.set(false);
        const auto idle_from = Clock::now();
        const auto until = idle_from + w.window();
        bool caught = false, yielded = false, loaded = false;
        if (until > idle_from && light && !light()) loaded = true;
        auto now = idle_from;
        while (now < until && !loaded) {
            if (s.busy.load(std::memory_order_relaxed) > 0) {
                loaded = true;
                break;
            }
            if (ctx.poll() > 0) {
                caught = true;
                now = Clock::now();
                break;
            }
            // Anything else runnable on this CPU goes first; if something
            // did, the CPU is wanted and this thread sleeps instead.
            sched_yield();
            const auto after = Clock::now();
            const bool other_ran = after - now > kYieldedTo;
            now = after;
            if (other_ran) {
                yielded = true;
                break;
            }
        }
        if (now > idle_from) {
            s.polled_ns.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(now - idle_from).count(),
                                  std::memory_order_relaxed);
        }
        if (caught) {
            count(s.caught);
            continue;
        }
        count(s.slept);
        if (yielded) {
            count(s.yielded);
            w.contended();
        }
        if (loaded) count(s.loaded);
        if (!yielded && !loaded && until > idle_from) count(s.expired);
        // Blocks in epoll_wait until a handler is ready, then runs that one.
        // What it measures includes that handler's run (there is no hook
        // between the wake-up and the handler): a long one reads as a longer
        // sleep, which can only shrink the window.
        if (ctx.run_one() == 0) break;
        w.slept(Clock::now() - idle_from);
    }
}

}  // namespace redir::terminator
