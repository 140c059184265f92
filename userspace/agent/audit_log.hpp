#pragma once
// Audit records: one JSON object per line, to a size-rotated file and to the
// in-memory tail that `redirctl events` reads and follows. Every proxied
// request ends in one, so a record costs, in the steady state, no heap
// allocation (RotatingFile, AuditTail, the reused batch buffer) and, from the
// terminator's io threads, a share of one writev(2) per io-loop turn rather
// than one each (write_from_loop).
// Repeated identical records of one sandbox are rate-limited: a burst is
// written, the rest counted and summarised in one "suppressed" record.
#include <boost/asio/io_context.hpp>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <span>
#include <string_view>
#include <unordered_map>
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
    // Writes what is pending (flush()).
    ~AuditLog();

    // Never throws and never blocks on a full disk: a failed file write is
    // counted (write_errors, one per record lost) and the record still
    // reaches the tail. The file, the tail and the followers see the records
    // in one order, also when several threads write. The record (and any
    // pending before it) is in the file when this returns.
    void write(std::string_view json_line);
    // The same, except that the record reaches the file with the next
    // flush() (or once kFlushBytes are pending); the tail and the followers
    // have it at once. True when the calling thread must make flush() run
    // soon: this is the first record it added to the pending batch. Each
    // thread writing so posts its own flush (to its own io_context: see
    // write_from_loop), so none of its records waits for another thread.
    bool write_deferred(std::string_view json_line);
    // Writes the pending records to the file: one writev(2), more only where
    // a rotation splits the batch.
    void flush();
    // A batch this large is written at once, without waiting for flush().
    static constexpr size_t kFlushBytes = 64u << 10;

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
    // The last N records (tail(N)) and, from the next record on, SUBSCRIBER,
    // under one lock: no record falls between the two, none is in both.
    std::vector<std::string> subscribe_after_tail(size_t n, Subscriber s);

    uint64_t written() const { return written_.load(std::memory_order_relaxed); }
    uint64_t suppressed() const { return suppressed_; }
    uint64_t write_errors() const { return write_errors_.load(std::memory_order_relaxed); }
    // writev(2) calls made to the file (tests: records are batched).
    uint64_t file_writes() const;

private:
    struct Window {
        std::chrono::steady_clock::time_point start;
        unsigned written = 0;
        uint64_t suppressed = 0;
    };
    std::vector<std::string> take_ended(std::chrono::steady_clock::time_point now);
    std::string summary(uint64_t cgroup_id, const std::string& key, const Window& w) const;
    // Under mu_: the record into the batch, the tail and the followers.
    void push_locked(std::string_view line);
    // Under mu_: the batch to the file.
    void drain_locked();

    AuditOptions opts_;
    // One lock for the file, the batch, the tail and the followers: a record
    // joins the batch, is kept and is delivered before the next one starts,
    // and batches reach the file in the order they filled, so all three see
    // the same order (rotation needs the file serialised anyway; spdlog's
    // sink held a lock across its write too).
    mutable std::mutex mu_;
    RotatingFile file_;
    // Records not yet in the file, each ended by its newline, and where each
    // ends. Reused: cleared, never freed, unless a huge record grew it.
    std::string pending_;
    std::vector<size_t> pending_ends_;
    // Names the pending batch, unique across AuditLogs (a new one after each
    // drain): a thread that added to batch B has a flush posted until the
    // batch named B is written (see write_deferred).
    uint64_t batch_;
    AuditTail tail_;
    std::vector<Subscriber> subs_;
    std::atomic<uint64_t> written_{0};
    std::mutex limit_mu_;
    std::unordered_map<uint64_t, std::unordered_map<std::string, Window>> windows_;
    uint64_t suppressed_ = 0;
    std::atomic<uint64_t> write_errors_{0};
};

// For writers on io threads (the terminator's): LINE goes to LOG with
// write_deferred, and when it is the first record this thread adds to the
// batch, one flush() is deferred to run on this thread once the current
// handler returns (boost::asio::defer: a continuation goes to the thread's
// private queue, no lock, no wakeup), so a record reaches the page cache
// before the end of the loop turn in which it was written. LOOPS: the
// io_contexts the calling thread may be running; when it runs none of them
// the record is written at once.
void write_from_loop(AuditLog& log, std::string_view line,
                     std::span<const boost::asio::io_context::executor_type> loops);

}  // namespace redir::agent
