// Audit log: rotation, rate limit of repeated records, bounded in-memory tail.
#include "agent/audit_log.hpp"

#include <boost/asio/defer.hpp>

#include "agent/json_out.hpp"

namespace redir::agent {
namespace {
// Batch names: unique across every AuditLog of the process, never 0.
std::atomic<uint64_t> g_next_batch{1};
uint64_t new_batch() { return g_next_batch.fetch_add(1, std::memory_order_relaxed); }
// The last batch the calling thread added a record to with write_deferred
// (and so has a flush posted for, until that batch is written).
thread_local uint64_t t_flush_posted_for = 0;
// A batch buffer that grew past this (a huge record) is freed once written.
constexpr size_t kPendingKept = 4 * AuditLog::kFlushBytes;
// Distinct keys remembered per sandbox; past this, further new keys share one
// bucket, so a sandbox varying its target cannot grow the agent's memory.
constexpr size_t kMaxKeysPerSandbox = 4096;
const std::string kOverflowKey = "(other records)";
}  // namespace

AuditLog::AuditLog(const std::string& path, AuditOptions opts)
    : opts_(opts),
      file_(path, opts_.max_file_bytes, opts_.keep_files),
      batch_(new_batch()),
      tail_(opts_.tail_records, opts_.tail_bytes) {}

AuditLog::~AuditLog() { flush(); }

void AuditLog::push_locked(std::string_view line) {
    pending_.append(line);
    pending_ += '\n';
    pending_ends_.push_back(pending_.size());
    written_.fetch_add(1, std::memory_order_relaxed);
    tail_.push(line);
    if (subs_.empty()) return;
    // Subscribers take a std::string; with followers attached, a record that
    // does not fit SSO costs one copy here (the follow path, not the hot one).
    const std::string copy(line);
    std::erase_if(subs_, [&](Subscriber& s) { return !s(copy); });
}

void AuditLog::drain_locked() {
    if (pending_ends_.empty()) return;
    // A full disk makes every write fail: counted per record lost, never thrown or printed.
    if (const size_t lost = file_.append(pending_, pending_ends_))
        write_errors_.fetch_add(lost, std::memory_order_relaxed);
    pending_.clear();
    pending_ends_.clear();
    if (pending_.capacity() > kPendingKept) std::string().swap(pending_);
    batch_ = new_batch();
}

void AuditLog::write(std::string_view line) {
    std::lock_guard lk(mu_);
    push_locked(line);
    drain_locked();
}

bool AuditLog::write_deferred(std::string_view line) {
    std::lock_guard lk(mu_);
    push_locked(line);
    // This thread's flush is still to run while the batch it added to is
    // pending: every drain names a new batch.
    const bool post = t_flush_posted_for != batch_;
    t_flush_posted_for = batch_;
    if (pending_.size() >= kFlushBytes) {
        drain_locked();
        return false;  // nothing of this thread's is pending now
    }
    return post;
}

void AuditLog::flush() {
    std::lock_guard lk(mu_);
    drain_locked();
}

uint64_t AuditLog::file_writes() const {
    std::lock_guard lk(mu_);
    return file_.writes();
}

void write_from_loop(AuditLog& log, std::string_view line,
                     std::span<const boost::asio::io_context::executor_type> loops) {
    if (!log.write_deferred(line)) return;  // this thread's flush is already on its way
    for (const auto& ex : loops)
        if (ex.running_in_this_thread()) {
            // The handler holds one pointer: Asio recycles its memory per thread.
            boost::asio::defer(ex, [&log] { log.flush(); });
            return;
        }
    log.flush();  // not on one of the loops: nothing would run a posted flush
}

std::vector<std::string> AuditLog::tail(size_t n) const {
    std::lock_guard lk(mu_);
    return tail_.last(n);
}

void AuditLog::subscribe(Subscriber s) {
    std::lock_guard lk(mu_);
    subs_.push_back(std::move(s));
}

std::vector<std::string> AuditLog::subscribe_after_tail(size_t n, Subscriber s) {
    std::lock_guard lk(mu_);
    subs_.push_back(std::move(s));
    return tail_.last(n);
}

std::string AuditLog::summary(uint64_t cgroup_id, const std::string& key, const Window& w) const {
    JsonOut j;
    j.begin()
        .num("ts_ms", now_ms())
        .str("event", "suppressed")
        .num("cgroup_id", cgroup_id)
        .str("key", key)
        .num("count", w.suppressed)
        .num("window_ms", static_cast<uint64_t>(opts_.window.count()))
        .end();
    return j.take();
}

bool AuditLog::admit(uint64_t cgroup_id, const std::string& key) {
    const auto now = std::chrono::steady_clock::now();
    std::vector<std::string> summaries;
    bool ok = false;
    {
        std::lock_guard lk(limit_mu_);
        auto& keys = windows_[cgroup_id];
        const std::string* k = &key;
        if (!keys.count(key) && keys.size() >= kMaxKeysPerSandbox) k = &kOverflowKey;
        auto& w = keys[*k];
        if (w.start.time_since_epoch().count() == 0 || now - w.start >= opts_.window) {
            if (w.suppressed) summaries.push_back(summary(cgroup_id, *k, w));
            w = Window{now, 0, 0};
        }
        if (w.written < opts_.burst) {
            ++w.written;
            ok = true;
        } else {
            ++w.suppressed;
            ++suppressed_;
        }
    }
    for (auto& s : summaries) write(s);
    return ok;
}

std::vector<std::string> AuditLog::take_ended(std::chrono::steady_clock::time_point now) {
    std::vector<std::string> out;
    std::lock_guard lk(limit_mu_);
    for (auto sit = windows_.begin(); sit != windows_.end();) {
        auto& keys = sit->second;
        for (auto it = keys.begin(); it != keys.end();) {
            if (now - it->second.start < opts_.window) {
                ++it;
                continue;
            }
            if (it->second.suppressed) out.push_back(summary(sit->first, it->first, it->second));
            it = keys.erase(it);
        }
        sit = keys.empty() ? windows_.erase(sit) : std::next(sit);
    }
    return out;
}

void AuditLog::flush_suppressed() {
    for (auto& s : take_ended(std::chrono::steady_clock::now())) write(s);
}

}  // namespace redir::agent
