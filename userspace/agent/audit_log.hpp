#pragma once
// Audit records: one JSON object per line, to a size-rotated file and to the
// in-memory tail that `redirctl events` reads and follows. Every proxied
// request ends in one, so a record costs one write(2) of the caller's bytes
// and, in the steady state, no heap allocation (RotatingFile, AuditTail).
// Repeated identical records of one sandbox are rate-limited: a burst is
// written, the rest counted and summarised in one "suppressed" record.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <string_view>
#include <vector>

#include "agent/audit_tail.hpp"
#include "agent/rotating_file.hpp"

namespace redir::agent {

struct AuditOptions {
    size_t max_file_bytes = 64u << 20;  // rotate past this size
    size_t keep_files = 4;              // rotated files kept besides the live one
    unsigned burst = 5;                 // identical records written per sandbox and window
    std::chrono::milliseconds window{10000};
    size_t tail_records = 4096;  // kept in memory for `redirctl events`
    size_t tail_bytes = 4u << 20;
};

class AuditLog {
public:
    explicit AuditLog(const std::string& path, AuditOptions opts = {});
    ~AuditLog();

    // Never throws and never blocks on a full disk: a failed file write is
    // counted (write_errors) and the record still reaches the tail. The file,
    // the tail and the followers see the records in one order, also when
    // several threads write.
    void write(std::string_view json_line);
    std::vector<std::string> tail(size_t n) const;

    // Rate limit: true when the record identified by KEY (what was refused,
    // and why, without the pid: a fork loop must not evade it) for sandbox
    // CGROUP_ID may be written now; false when it is only counted.
    bool admit(uint64_t cgroup_id, const std::string& key);
    // Writes a "suppressed" record for every window that has ended with
    // records counted in it. Call periodically.
    void flush_suppressed();

    // Called with every record written from now on, in order, under the
    // log's lock: it must not call back into this AuditLog, nor block.
    using Subscriber = std::function<bool(const std::string&)>;  // false: unsubscribe
    void subscribe(Subscriber s);

    uint64_t written() const { return written_.load(std::memory_order_relaxed); }
    uint64_t suppressed() const { return suppressed_; }
    uint64_t write_errors() const { return write_errors_.load(std::memory_order_relaxed); }

private:
    struct Window {
        std::chrono::steady_clock::time_point start;
        unsigned written = 0;
        uint64_t suppressed = 0;
    };
    std::vector<std::string> take_ended(std::chrono::steady_clock::time_point now);
    std::string summary(uint64_t cgroup_id, const std::string& key, const Window& w) const;

    AuditOptions opts_;
    // One lock for the file, the tail and the followers: a record is appended,
    // kept and delivered before the next one starts, so all three see the same
    // order (rotation needs the file serialised anyway; spdlog's sink held a
    // lock across its write too).
    mutable std::mutex mu_;
    RotatingFile file_;
    AuditTail tail_;
    std::vector<Subscriber> subs_;
    std::atomic<uint64_t> written_{0};
    std::mutex limit_mu_;
    std::unordered_map<uint64_t, std::unordered_map<std::string, Window>> windows_;
    uint64_t suppressed_ = 0;
    std::atomic<uint64_t> write_errors_{0};
};

}  // namespace redir::agent
