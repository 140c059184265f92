#include "agent/inference_limits.hpp"

#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>

#include "agent/json_out.hpp"
#include "common/atomic_file.hpp"

namespace redir::agent {
namespace {
// Wall clock (the counters outlive the process), as the audit records' ts_ms
// and the time charge() is given.
int64_t wall_ms() { return static_cast<int64_t>(now_ms()); }
}  // namespace

InferenceLimitsKeeper::InferenceLimitsKeeper(boost::asio::io_context& io, std::string path)
    : path_(std::move(path)), timer_(io) {
    std::error_code ec;
    if (std::filesystem::exists(path_, ec)) {
        try {
            limiter_.load_json(read_file(path_));
        } catch (const std::exception& e) {
            spdlog::error("{}: {}; kept as {}.damaged, inference limits count from zero", path_, e.what(), path_);
            std::filesystem::rename(path_, path_ + ".damaged", ec);
        }
    }
    schedule();
}

InferenceLimitsKeeper::~InferenceLimitsKeeper() {
    timer_.cancel();
    try {
        save();
    } catch (const std::exception& e) {
        spdlog::error("saving inference limit counters to {} failed: {}", path_, e.what());
    }
}

std::optional<terminator::LimitExceeded> InferenceLimitsKeeper::admit(uint64_t cgroup_id,
                                                                      const terminator::InferenceLimits& limits) {
    if (limits == terminator::InferenceLimits{}) return std::nullopt;  // nothing to count against
    return limiter_.admit(cgroup_id, limits, wall_ms());
}

void InferenceLimitsKeeper::charge(const terminator::RequestLog& r, int64_t now_ms) {
    const bool answered = r.status >= 200 && r.status < 300;
    if (!r.usage.known() && !answered) return;  // refused or failed before an answer: nothing was used
    const auto& u = r.usage;
    limiter_.charge_tokens(r.conn.cgroup_id,
                           terminator::tokens_to_charge(u.input_tokens.value_or(0), u.output_tokens.value_or(0),
                                                        u.known(), r.bytes_in, r.bytes_out),
                           now_ms);
}

void InferenceLimitsKeeper::save() {
    if (!limiter_.dirty()) return;
    write_file_atomic(path_, limiter_.to_json(wall_ms()), 0600);
}

void InferenceLimitsKeeper::schedule() {
    timer_.expires_after(std::chrono::seconds(1));
    timer_.async_wait([this](const boost::system::error_code& ec) {
        if (ec) return;
        try {
            save();
        } catch (const std::exception& e) {
            spdlog::error("saving inference limit counters to {} failed: {}", path_, e.what());
        }
        schedule();
    });
}

}  // namespace redir::agent
