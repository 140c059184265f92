#pragma once
// Inference usage per sandbox (the attached cgroup the kernel saw at
// connect()) and route: requests, tokens as the provider reported them,
// errors by status, last request; and tokens per minute for the last two days,
// which limits ask for. Recorded from the terminator's threads, persisted
// atomically by a once-a-second flush, so a crash loses at most that second.
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace redir::terminator {
struct RequestLog;
}

namespace redir::agent {

// One finished inference request.
struct UsageRecord {
    std::uint64_t cgroup_id = 0;
    std::string route = "default";
    int status = 0;
    std::optional<std::uint64_t> input_tokens;   // nullopt: the provider reported none
    std::optional<std::uint64_t> output_tokens;
    std::int64_t at_ms = 0;  // wall clock (ms since the epoch)
};

struct UsageCounters {
    std::uint64_t requests = 0;
    std::uint64_t input_tokens = 0;
    std::uint64_t output_tokens = 0;
    // Requests whose answer carried no usage (errors, refusals, a provider or
    // a broken stream that reported none): counted, tokens unknown.
    std::uint64_t requests_without_usage = 0;
    std::map<int, std::uint64_t> errors;  // HTTP status >= 400 → requests
    std::int64_t last_request_ms = 0;
};

struct UsageRow {
    std::uint64_t cgroup_id = 0;
    std::string cgroup;  // path, as last known ("" if never attached while this agent ran)
    std::string route;
    UsageCounters counters;
};

class UsageLedger {
public:
    // Reads PATH if it exists. A damaged file is renamed to PATH.damaged and
    // the ledger starts empty (the agent must start: enforcement comes first).
    explicit UsageLedger(std::string path);
    // Writes what is not yet on disk (SIGTERM, tests).
    ~UsageLedger();
    UsageLedger(const UsageLedger&) = delete;
    UsageLedger& operator=(const UsageLedger&) = delete;

    // Thread-safe; then calls the hook (outside the lock).
    void record(const UsageRecord& r);
    // Input + output tokens of sandbox CGROUP_ID (all routes) recorded since
    // SINCE_MS, at minute resolution (the minute holding SINCE_MS counts
    // whole), as far back as two days. Thread-safe.
    std::uint64_t tokens_since(std::uint64_t cgroup_id, std::int64_t since_ms) const;
    // Called after every record() with what was recorded (limits, tests).
    void on_record(std::function<void(const UsageRecord&)> hook);
    // The cgroup path shown for CGROUP_ID (the agent knows it, the gateway does not).
    void label(std::uint64_t cgroup_id, const std::string& path);
    // Every (sandbox, route), ordered by cgroup id then route.
    std::vector<UsageRow> rows() const;
    // Writes the ledger atomically if it changed since the last flush.
    // Returns whether it wrote; throws redir::Error when the write fails.
    bool flush();

    static constexpr std::int64_t kHistoryMs = 48ll * 3600 * 1000;
    static constexpr std::size_t kMaxRows = 10000;  // oldest rows dropped beyond it

private:
    using Key = std::pair<std::uint64_t, std::string>;
    void load();
    void prune_locked(std::int64_t now_ms);

    std::string path_;
    mutable std::mutex mu_;
    std::map<Key, UsageCounters> rows_;
    std::map<std::uint64_t, std::string> paths_;
    std::map<std::uint64_t, std::map<std::int64_t, std::uint64_t>> minutes_;  // cgroup → minute → tokens
    std::uint64_t changes_ = 0;  // bumped by every change; flush() writes when it moved
    std::uint64_t flushed_ = 0;
    std::function<void(const UsageRecord&)> hook_;
    std::mutex write_mu_;  // one writer of the file at a time
};

// What the ledger records of the terminator's access-log record R, finished at AT_MS.
UsageRecord usage_record_of(const terminator::RequestLog& r, std::int64_t at_ms);

// Prometheus text of ROWS: requests, tokens, unknown usage and errors per
// sandbox (cgroup_id) and route.
std::string usage_metrics(const std::vector<UsageRow>& rows);

}  // namespace redir::agent
