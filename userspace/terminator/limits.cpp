// Quotas, the refusal throttle and clip() (see limits.hpp).
#include "terminator/limits.hpp"

namespace redir::terminator {

Quota::Ticket& Quota::Ticket::operator=(Ticket&& o) noexcept {
    if (this != &o) {
        release();
        q_ = std::move(o.q_);
        key_ = o.key_;
        amount_ = o.amount_;
        o.q_.reset();
    }
    return *this;
}

void Quota::Ticket::release() {
    if (!q_) return;
    q_->give_back(key_, amount_);
    q_.reset();
}

Quota::Ticket Quota::try_acquire(std::uint64_t sandbox, std::uint64_t amount, Refusal* why) {
    std::lock_guard lk(mu_);
    auto it = used_.find(sandbox);
    const std::uint64_t mine = it == used_.end() ? 0 : it->second;
    Refusal r = Refusal::None;
    if (caps_.per_sandbox && mine + amount > caps_.per_sandbox)
        r = Refusal::Sandbox;
    else if (caps_.total && total_ + amount > caps_.total)
        r = Refusal::Total;
    if (why) *why = r;
    if (r != Refusal::None) return {};
    if (it == used_.end())
        used_.emplace(sandbox, amount);
    else
        it->second += amount;
    total_ += amount;
    return Ticket(shared_from_this(), sandbox, amount);
}

void Quota::give_back(std::uint64_t sandbox, std::uint64_t amount) {
    std::lock_guard lk(mu_);
    total_ -= amount;
    auto it = used_.find(sandbox);
    if (it == used_.end()) return;
    it->second -= amount;
    // Sandboxes come and go: keep no entry for one that holds nothing.
    if (it->second == 0) used_.erase(it);
}

std::uint64_t Quota::in_use(std::uint64_t sandbox) const {
    std::lock_guard lk(mu_);
    auto it = used_.find(sandbox);
    return it == used_.end() ? 0 : it->second;
}

std::uint64_t Quota::total_in_use() const {
    std::lock_guard lk(mu_);
    return total_;
}

bool RefusalThrottle::should_record(std::uint64_t sandbox, std::uint64_t& suppressed, Clock::time_point now) {
    std::lock_guard lk(mu_);
    // Forget sandboxes that went quiet, so the table stays as small as the
    // set of sandboxes refused within one interval.
    if (seen_.size() > 1024)
        std::erase_if(seen_, [&](const auto& kv) { return now - kv.second.last >= interval_; });
    auto [it, fresh] = seen_.try_emplace(sandbox);
    auto& e = it->second;
    if (!fresh && now - e.last < interval_) {
        ++e.suppressed;
        return false;
    }
    suppressed = e.suppressed;
    e.suppressed = 0;
    e.last = now;
    return true;
}

std::string clip(std::string_view s, std::size_t max) {
    if (s.size() <= max) return std::string(s);
    std::size_t cut = max;
    // Never end inside a UTF-8 sequence: the log stays valid UTF-8.
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    std::string out;
    out.reserve(cut + 40);
    out.append(s.substr(0, cut));
    out += "\xE2\x80\xA6(truncated, ";
    out += std::to_string(s.size());
    out += " bytes)";
    return out;
}

}  // namespace redir::terminator
