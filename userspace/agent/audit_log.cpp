// Audit log: rotation, rate limit of repeated records, bounded in-memory tail.
#include "agent/audit_log.hpp"

#include "agent/json_out.hpp"

namespace redir::agent {
namespace {
// Distinct keys remembered per sandbox; past this, further new keys share one
// bucket, so a sandbox varying its target cannot grow the agent's memory.
constexpr size_t kMaxKeysPerSandbox = 4096;
const std::string kOverflowKey = "(other records)";
}  // namespace

AuditLog::AuditLog(const std::string& path, AuditOptions opts)
    : opts_(opts), file_(path, opts_.max_file_bytes, opts_.keep_files), tail_(opts_.tail_records, opts_.tail_bytes) {}

AuditLog::~AuditLog() = default;

void AuditLog::write(std::string_view line) {
    std::lock_guard lk(mu_);
    // A full disk makes every write fail: counted, never thrown or printed per record.
    if (!file_.append(line)) write_errors_.fetch_add(1, std::memory_order_relaxed);
    written_.fetch_add(1, std::memory_order_relaxed);
    tail_.push(line);
    if (subs_.empty()) return;
    // Subscribers take a std::string; with followers attached, a record that
    // does not fit SSO costs one copy here (the follow path, not the hot one).
    const std::string copy(line);
    std::erase_if(subs_, [&](Subscriber& s) { return !s(copy); });
}

std::vector<std::string> AuditLog::tail(size_t n) const {
    std::lock_guard lk(mu_);
    return tail_.last(n);
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
