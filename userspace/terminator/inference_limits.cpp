#include "terminator/inference_limits.hpp"

#include <rapidjson/document.h>

#include <algorithm>

#include "common/error.hpp"
#include "common/json_out.hpp"

namespace redir::terminator {

void SlidingSum::add(int64_t now_ms, uint64_t amount) {
    if (amount == 0) return;
    const int64_t start = now_ms - ((now_ms % bucket_ms_) + bucket_ms_) % bucket_ms_;
    buckets_[start] += amount;
}

uint64_t SlidingSum::total(int64_t now_ms) const {
    uint64_t sum = 0;
    for (auto it = buckets_.rbegin(); it != buckets_.rend() && counts(it->first, now_ms); ++it) sum += it->second;
    return sum;
}

int64_t SlidingSum::ms_until_below(int64_t now_ms, uint64_t limit) const {
    uint64_t sum = total(now_ms);
    if (sum < limit) return 0;
    // The oldest buckets leave first: wait for as many as must go.
    for (const auto& [start, amount] : buckets_) {
        if (!counts(start, now_ms)) continue;
        sum -= amount;
        if (sum < limit) return start + bucket_ms_ + window_ms_ - now_ms;
    }
    return 0;  // unreachable: an empty window is below any limit > 0
}

bool SlidingSum::prune(int64_t now_ms) {
    while (!buckets_.empty() && !counts(buckets_.begin()->first, now_ms)) buckets_.erase(buckets_.begin());
    return buckets_.empty();
}

std::string LimitExceeded::message() const {
    const bool requests = limit == "requests_per_minute";
    return "this sandbox is over its inference limit of " + std::to_string(cap) +
           (requests ? " requests per minute" : " tokens per day") + " (" + std::to_string(used) +
           (requests ? " requests in the last minute" : " tokens in the last 24 hours") + "); retry after " +
           std::to_string(retry_after_s) + " s, or raise \"inference\": {\"limits\": {\"" + limit +
           "\"}} in its policy";
}

std::vector<std::pair<std::string, std::string>> LimitExceeded::headers() const {
    std::vector<std::pair<std::string, std::string>> h{{"retry-after", std::to_string(retry_after_s)}};
    if (retry_after_s > kSdkMaxRetryAfterS) h.emplace_back("x-should-retry", "false");
    return h;
}

namespace {
uint64_t whole_seconds(int64_t ms) { return std::max<int64_t>(1, (ms + 999) / 1000); }
}  // namespace

std::optional<LimitExceeded> InferenceLimiter::admit(uint64_t sandbox, const InferenceLimits& limits, int64_t now_ms) {
    std::lock_guard lk(mu_);
    auto& c = of(sandbox);
    std::optional<LimitExceeded> out;
    // Both limits are checked, so the retry-after covers whichever frees last.
    auto check = [&](const SlidingSum& sum, uint64_t cap, const char* name) {
        if (cap == 0) return;
        const uint64_t used = sum.total(now_ms);
        if (used < cap) return;
        const uint64_t wait = whole_seconds(sum.ms_until_below(now_ms, cap));
        if (!out || wait > out->retry_after_s) out = LimitExceeded{name, cap, used, wait};
    };
    check(c.tokens, limits.tokens_per_day, "tokens_per_day");
    check(c.requests, limits.requests_per_minute, "requests_per_minute");
    if (out) return out;
    c.requests.add(now_ms, 1);
    dirty_ = true;
    return std::nullopt;
}

void InferenceLimiter::charge_tokens(uint64_t sandbox, uint64_t tokens, int64_t now_ms) {
    if (tokens == 0) return;
    std::lock_guard lk(mu_);
    of(sandbox).tokens.add(now_ms, tokens);
    dirty_ = true;
}

uint64_t InferenceLimiter::requests_in_window(uint64_t sandbox, int64_t now_ms) const {
    std::lock_guard lk(mu_);
    auto it = sandboxes_.find(sandbox);
    return it == sandboxes_.end() ? 0 : it->second.requests.total(now_ms);
}

uint64_t InferenceLimiter::tokens_in_window(uint64_t sandbox, int64_t now_ms) const {
    std::lock_guard lk(mu_);
    auto it = sandboxes_.find(sandbox);
    return it == sandboxes_.end() ? 0 : it->second.tokens.total(now_ms);
}

bool InferenceLimiter::dirty() const {
    std::lock_guard lk(mu_);
    return dirty_;
}

namespace {
void write_sum(JsonOut& j, std::string_view key, const SlidingSum& s) {
    j.begin_array(key);
    for (const auto& [start, amount] : s.buckets()) j.begin_array().num(static_cast<uint64_t>(start)).num(amount).end_array();
    j.end_array();
}

void read_sum(const rapidjson::Value& o, const char* key, SlidingSum& s) {
    auto m = o.FindMember(key);
    if (m == o.MemberEnd()) return;
    if (!m->value.IsArray()) throw Error(std::string("inference limits state: \"") + key + "\" must be an array");
    for (const auto& b : m->value.GetArray()) {
        if (!b.IsArray() || b.Size() != 2 || !b[0].IsUint64() || !b[1].IsUint64())
            throw Error(std::string("inference limits state: each \"") + key + "\" bucket must be [start_ms, amount]");
        s.restore(static_cast<int64_t>(b[0].GetUint64()), b[1].GetUint64());
    }
}
}  // namespace

std::string InferenceLimiter::to_json(int64_t now_ms) {
    std::lock_guard lk(mu_);
    JsonOut j;
    j.begin().num("version", 1).begin_object("sandboxes");
    for (auto it = sandboxes_.begin(); it != sandboxes_.end();) {
        auto& c = it->second;
        const bool requests_gone = c.requests.prune(now_ms);
        if (c.tokens.prune(now_ms) && requests_gone) {
            it = sandboxes_.erase(it);  // nothing counts any more: forgotten
            continue;
        }
        j.begin_object(std::to_string(it->first));
        write_sum(j, "requests", c.requests);
        write_sum(j, "tokens", c.tokens);
        j.end();
        ++it;
    }
    dirty_ = false;
    return j.end().end().take();
}

void InferenceLimiter::load_json(std::string_view json) {
    rapidjson::Document d;
    d.Parse(json.data(), json.size());
    if (d.HasParseError() || !d.IsObject()) throw Error("inference limits state is not a JSON object");
    auto sb = d.FindMember("sandboxes");
    if (sb == d.MemberEnd() || !sb->value.IsObject())
        throw Error("inference limits state has no \"sandboxes\" object");
    std::map<uint64_t, Counters> loaded;
    for (const auto& m : sb->value.GetObject()) {
        const std::string id = m.name.GetString();
        if (id.empty() || id.find_first_not_of("0123456789") != std::string::npos || !m.value.IsObject())
            throw Error("inference limits state: sandbox \"" + id + "\" is not a cgroup id with an object");
        auto& c = loaded[std::stoull(id)];
        read_sum(m.value, "requests", c.requests);
        read_sum(m.value, "tokens", c.tokens);
    }
    std::lock_guard lk(mu_);
    sandboxes_ = std::move(loaded);
}

uint64_t tokens_to_charge(uint64_t reported_input, uint64_t reported_output, bool reported, uint64_t bytes_in,
                          uint64_t bytes_out) {
    if (reported) return reported_input + reported_output;
    return (bytes_in + 3) / 4 + (bytes_out + 3) / 4;
}

}  // namespace redir::terminator
