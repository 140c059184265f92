#pragma once
// How long an accept loop waits after a failed accept(). On EMFILE/ENFILE the
// pending connection stays queued and the listener stays readable, so
// accepting again at once spins at 100% CPU without ever succeeding: wait,
// doubling up to a ceiling, and start again from the floor after a success.
#include <algorithm>
#include <chrono>
#include <cstdint>

namespace redir::agent {

class AcceptBackoff {
public:
    using ms = std::chrono::milliseconds;
    explicit AcceptBackoff(ms floor = ms(10), ms ceiling = ms(1000)) : floor_(floor), ceiling_(ceiling), next_(floor) {}

    // After a failed accept: the wait before the next attempt.
    ms failed() {
        ++failures_;
        ++streak_;
        ms d = next_;
        next_ = std::min(ceiling_, next_ * 2);
        return d;
    }
    // After a successful accept; returns how many failures the streak had.
    std::uint64_t succeeded() {
        next_ = floor_;
        auto s = streak_;
        streak_ = 0;
        return s;
    }
    std::uint64_t failures() const { return failures_; }  // over the listener's life
    std::uint64_t streak() const { return streak_; }

private:
    ms floor_, ceiling_, next_;
    std::uint64_t failures_ = 0;
    std::uint64_t streak_ = 0;
};

}  // namespace redir::agent
