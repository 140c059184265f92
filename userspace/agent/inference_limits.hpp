#pragma once
// redird's inference limiter (policy "inference.limits"): the gateway's two
// hooks (admit a request, charge a finished one) over terminator's
// InferenceLimiter, with its counters kept in STATE_DIR/inference-limits.json
// (loaded at start, saved atomically once a second when changed and at exit).
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <optional>
#include <string>

#include "terminator/inference_limits.hpp"
#include "terminator/request.hpp"

namespace redir::agent {

class InferenceLimitsKeeper {
public:
    // A damaged file is kept beside as PATH.damaged and counting starts again.
    InferenceLimitsKeeper(boost::asio::io_context& io, std::string path);
    ~InferenceLimitsKeeper();  // saves what changed

    // GatewayOptions::admit_request (gateway threads).
    std::optional<terminator::LimitExceeded> admit(uint64_t cgroup_id, const terminator::InferenceLimits& limits);
    // A finished request's tokens: as reported, or estimated for an answer without usage (gateway threads),
    // counted at NOW_MS (wall-clock milliseconds: the record's one clock read, shared with the usage ledger).
    void charge(const terminator::RequestLog& r, int64_t now_ms);
    // Writes the counters if they changed (the agent's thread).
    void save();

private:
    void schedule();

    std::string path_;
    terminator::InferenceLimiter limiter_;
    boost::asio::steady_timer timer_;
};

}  // namespace redir::agent
