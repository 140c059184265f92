// Audit log: rotation, rate limit of repeated records, bounded in-memory tail.
#include "agent/audit_log.hpp"

#include <atomic>
#include <spdlog/sinks/rotating_file_sink.h>
#include <spdlog/spdlog.h>

#include "agent/json_out.hpp"

namespace redir::agent {
namespace {
// Distinct keys remembered per sandbox; past this, further new keys share one
// bucket, so a sandbox varying its target cannot grow the agent's memory.
constexpr size_t kMaxKeysPerSandbox = 4096;
const std::string kOverflowKey = "(other records)";
}  // namespace

AuditLog::AuditLog(const std::string& path, AuditOptions opts)
    : opts_(opts), write_errors_(std::make_shared<std::atomic<uint64_t>>(0)) {
    auto sink = std::make_shared<spdlog::sinks::rotating_file_sink_mt>(path, opts_.max_file_bytes, opts_.keep_files);
    logger_ = std::make_shared<spdlog::logger>("audit", sink);
    logger_->set_pattern("%v");
    // Audit records must reach the kernel's page cache before the agent may
    // be killed (write(2) per record, no fsync).
    logger_->flush_on(spdlog::level::trace);
    // A full disk makes every write fail: count it, never throw or print per record.
    logger_->set_error_handler([errs = write_errors_](const std::string&) { ++*errs; });
}

AuditLog::~AuditLog() = default;

void AuditLog::write(const std::string& line) {
    try {
        logger_->info(line);
    } catch (...) {
        ++*write_errors_;
    }
    std::lock_guard deliver(deliver_mu_);
    std::vector<Subscriber> subs;
    {
        std::lock_guard lk(mu_);
        written_++;
        tail_.push_back(line);
        tail_bytes_ += line.size();
        while (tail_.size() > opts_.tail_records || (tail_bytes_ > opts_.tail_bytes && tail_.size() > 1)) {
            tail_bytes_ -= tail_.front().size();
            tail_.pop_front();
        }
        subs.swap(subs_);
    }
    std::vector<Subscriber> keep;
    for (auto& s : subs)
        if (s(line)) keep.push_back(std::move(s));
    std::lock_guard lk(mu_);
    for (auto& s : keep) subs_.push_back(std::move(s));
}

std::vector<std::string> AuditLog::tail(size_t n) const {
    std::lock_guard lk(mu_);
    size_t start = tail_.size() > n ? tail_.size() - n : 0;
    return {tail_.begin() + static_cast<long>(start), tail_.end()};
}

void AuditLog::subscribe(Subscriber s) {
    std::lock_guard lk(mu_);
    subs_.push_back(std::move(s));
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
