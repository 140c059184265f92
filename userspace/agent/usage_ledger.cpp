// The usage ledger: counters in memory, one JSON state file on disk.
#include "agent/usage_ledger.hpp"

#include <rapidjson/document.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "common/atomic_file.hpp"
#include "common/error.hpp"
#include "common/json_state.hpp"
#include "terminator/request.hpp"

namespace redir::agent {

namespace {

std::uint64_t sat_add(std::uint64_t a, std::uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

std::int64_t wall_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
}

constexpr std::int64_t kMinuteMs = 60'000;

std::uint64_t u64(const rapidjson::Value& o, const char* k) {
    auto m = o.FindMember(k);
    return m != o.MemberEnd() && m->value.IsUint64() ? m->value.GetUint64() : 0;
}
std::int64_t i64(const rapidjson::Value& o, const char* k) {
    auto m = o.FindMember(k);
    return m != o.MemberEnd() && m->value.IsInt64() ? m->value.GetInt64() : 0;
}
std::string str(const rapidjson::Value& o, const char* k) {
    auto m = o.FindMember(k);
    return m != o.MemberEnd() && m->value.IsString() ? std::string(m->value.GetString(), m->value.GetStringLength())
                                                     : std::string();
}

}  // namespace

UsageLedger::UsageLedger(std::string path) : path_(std::move(path)) {
    try {
        load();
    } catch (const std::exception& e) {
        std::error_code ec;
        std::filesystem::rename(path_, path_ + ".damaged", ec);
        spdlog::error("usage ledger {} could not be read ({}); kept as {}.damaged, counting starts again from zero",
                      path_, e.what(), path_);
        std::lock_guard lk(mu_);
        rows_.clear();
        minutes_.clear();
        paths_.clear();
    }
}

UsageLedger::~UsageLedger() {
    try {
        flush();
    } catch (const std::exception& e) {
        spdlog::error("usage ledger: the last second of counts was not saved: {}", e.what());
    }
}

void UsageLedger::load() {
    std::error_code ec;
    if (!std::filesystem::exists(path_, ec)) return;
    std::string text = read_file(path_);
    rapidjson::Document d;
    d.Parse(text.c_str(), text.size());
    if (d.HasParseError() || !d.IsObject()) throw Error("not a JSON object");
    auto sbs = d.FindMember("sandboxes");
    if (sbs == d.MemberEnd() || !sbs->value.IsArray()) throw Error("no \"sandboxes\" array");
    std::lock_guard lk(mu_);
    for (const auto& sb : sbs->value.GetArray()) {
        if (!sb.IsObject()) continue;
        const std::uint64_t id = u64(sb, "cgroup_id");
        if (auto p = str(sb, "cgroup"); !p.empty()) paths_[id] = p;
        if (auto rs = sb.FindMember("routes"); rs != sb.MemberEnd() && rs->value.IsArray()) {
            for (const auto& r : rs->value.GetArray()) {
                if (!r.IsObject()) continue;
                UsageCounters& c = rows_[{id, str(r, "route")}];
                c.requests = u64(r, "requests");
                c.input_tokens = u64(r, "input_tokens");
                c.output_tokens = u64(r, "output_tokens");
                c.requests_without_usage = u64(r, "requests_without_usage");
                c.last_request_ms = i64(r, "last_request_ms");
                if (auto es = r.FindMember("errors"); es != r.MemberEnd() && es->value.IsObject())
                    for (const auto& e : es->value.GetObject())
                        if (e.value.IsUint64()) c.errors[std::atoi(e.name.GetString())] = e.value.GetUint64();
            }
        }
        if (auto ms = sb.FindMember("minutes"); ms != sb.MemberEnd() && ms->value.IsArray()) {
            for (const auto& m : ms->value.GetArray())
                if (m.IsArray() && m.Size() == 2 && m[0].IsInt64() && m[1].IsUint64())
                    minutes_[id][m[0].GetInt64()] = m[1].GetUint64();
        }
    }
}

void UsageLedger::record(const UsageRecord& r) {
    std::function<void(const UsageRecord&)> hook;
    {
        std::lock_guard lk(mu_);
        UsageCounters& c = rows_[{r.cgroup_id, r.route}];
        ++c.requests;
        const bool known = r.input_tokens || r.output_tokens;
        if (!known) ++c.requests_without_usage;
        c.input_tokens = sat_add(c.input_tokens, r.input_tokens.value_or(0));
        c.output_tokens = sat_add(c.output_tokens, r.output_tokens.value_or(0));
        if (r.status >= 400) ++c.errors[r.status];
        c.last_request_ms = std::max(c.last_request_ms, r.at_ms);
        const std::uint64_t tokens = sat_add(r.input_tokens.value_or(0), r.output_tokens.value_or(0));
        if (tokens) {
            auto& slot = minutes_[r.cgroup_id][r.at_ms / kMinuteMs];
            slot = sat_add(slot, tokens);
        }
        ++changes_;
        hook = hook_;
    }
    if (hook) hook(r);
}

std::uint64_t UsageLedger::tokens_since(std::uint64_t cgroup_id, std::int64_t since_ms) const {
    std::lock_guard lk(mu_);
    auto it = minutes_.find(cgroup_id);
    if (it == minutes_.end()) return 0;
    std::uint64_t sum = 0;
    for (auto m = it->second.lower_bound(since_ms / kMinuteMs); m != it->second.end(); ++m) sum = sat_add(sum, m->second);
    return sum;
}

void UsageLedger::on_record(std::function<void(const UsageRecord&)> hook) {
    std::lock_guard lk(mu_);
    hook_ = std::move(hook);
}

void UsageLedger::label(std::uint64_t cgroup_id, const std::string& path) {
    std::lock_guard lk(mu_);
    auto& p = paths_[cgroup_id];
    if (p == path) return;
    p = path;
    ++changes_;
}

std::vector<UsageRow> UsageLedger::rows() const {
    std::lock_guard lk(mu_);
    std::vector<UsageRow> out;
    out.reserve(rows_.size());
    for (const auto& [k, c] : rows_) {
        auto p = paths_.find(k.first);
        out.push_back({k.first, p == paths_.end() ? std::string() : p->second, k.second, c});
    }
    return out;
}

void UsageLedger::prune_locked(std::int64_t now_ms) {
    const std::int64_t oldest = (now_ms - kHistoryMs) / kMinuteMs;
    for (auto it = minutes_.begin(); it != minutes_.end();) {
        auto& m = it->second;
        m.erase(m.begin(), m.lower_bound(oldest));
        it = m.empty() ? minutes_.erase(it) : std::next(it);
    }
    if (rows_.size() <= kMaxRows) return;
    // Too many sandboxes (transient `run`s): the ones idle longest go first.
    std::vector<std::pair<std::int64_t, Key>> by_age;
    for (const auto& [k, c] : rows_) by_age.emplace_back(c.last_request_ms, k);
    std::sort(by_age.begin(), by_age.end());
    const std::size_t drop = rows_.size() - kMaxRows;
    for (std::size_t i = 0; i < drop; ++i) rows_.erase(by_age[i].second);
}

bool UsageLedger::flush() {
    std::lock_guard wl(write_mu_);
    std::string doc;
    std::uint64_t version = 0;
    {
        std::lock_guard lk(mu_);
        if (changes_ == flushed_) return false;
        prune_locked(wall_ms());
        version = changes_;
        PrettyJsonOut j;
        j.begin().num("version", 1).begin_array("sandboxes");
        std::map<std::uint64_t, bool> ids;
        for (const auto& [k, c] : rows_) ids[k.first] = true;
        for (const auto& [id, m] : minutes_) ids[id] = true;
        for (const auto& [id, _] : ids) {
            j.begin().num("cgroup_id", id);
            if (auto p = paths_.find(id); p != paths_.end()) j.str("cgroup", p->second);
            j.begin_array("routes");
            for (auto it = rows_.lower_bound({id, std::string()}); it != rows_.end() && it->first.first == id; ++it) {
                const auto& c = it->second;
                j.begin()
                    .str("route", it->first.second)
                    .num("requests", c.requests)
                    .num("input_tokens", c.input_tokens)
                    .num("output_tokens", c.output_tokens)
                    .num("requests_without_usage", c.requests_without_usage)
                    .num("last_request_ms", static_cast<std::uint64_t>(std::max<std::int64_t>(c.last_request_ms, 0)))
                    .begin_object("errors");
                for (const auto& [status, n] : c.errors) j.num(std::to_string(status), n);
                j.end().end();
            }
            j.end_array().begin_array("minutes");
            if (auto m = minutes_.find(id); m != minutes_.end())
                for (const auto& [minute, tokens] : m->second)
                    j.begin_array().num(static_cast<std::uint64_t>(std::max<std::int64_t>(minute, 0))).num(tokens).end_array();
            j.end_array().end();
        }
        j.end_array().end();
        doc = j.take();
    }
    write_file_atomic(path_, doc, 0600);
    std::lock_guard lk(mu_);
    flushed_ = std::max(flushed_, version);
    return true;
}

UsageRecord usage_record_of(const terminator::RequestLog& r, std::int64_t at_ms) {
    UsageRecord u;
    u.cgroup_id = r.conn.cgroup_id;
    u.route = r.route.empty() ? std::string(terminator::kDefaultRoute) : r.route;
    u.status = r.status;
    u.input_tokens = r.usage.input_tokens;
    u.output_tokens = r.usage.output_tokens;
    u.at_ms = at_ms;
    return u;
}

namespace {

// A Prometheus label value: backslash, quote and newline escaped.
std::string label_value(const std::string& v) {
    std::string o;
    for (char c : v) {
        if (c == '\\' || c == '"') o += '\\';
        if (c == '\n') {
            o += "\\n";
            continue;
        }
        o += c;
    }
    return o;
}

}  // namespace

std::string usage_metrics(const std::vector<UsageRow>& rows) {
    std::string o;
    auto family = [&](const char* name, const char* help, auto value) {
        o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n";
        for (const auto& r : rows) {
            const std::string labels =
                "cgroup_id=\"" + std::to_string(r.cgroup_id) + "\",route=\"" + label_value(r.route) + "\"";
            value(r, labels);
        }
    };
    auto line = [&](const char* name, const std::string& labels, std::uint64_t v) {
        o += std::string(name) + "{" + labels + "} " + std::to_string(v) + "\n";
    };
    family("redir_inference_requests_total", "inference requests per sandbox and route",
           [&](const UsageRow& r, const std::string& l) { line("redir_inference_requests_total", l, r.counters.requests); });
    family("redir_inference_input_tokens_total", "input tokens as the provider reported them",
           [&](const UsageRow& r, const std::string& l) {
               line("redir_inference_input_tokens_total", l, r.counters.input_tokens);
           });
    family("redir_inference_output_tokens_total", "output tokens as the provider reported them",
           [&](const UsageRow& r, const std::string& l) {
               line("redir_inference_output_tokens_total", l, r.counters.output_tokens);
           });
    family("redir_inference_requests_without_usage_total", "requests whose answer reported no usage (tokens unknown)",
           [&](const UsageRow& r, const std::string& l) {
               line("redir_inference_requests_without_usage_total", l, r.counters.requests_without_usage);
           });
    family("redir_inference_errors_total", "inference requests answered with an HTTP error, by status",
           [&](const UsageRow& r, const std::string& l) {
               for (const auto& [status, n] : r.counters.errors)
                   line("redir_inference_errors_total", l + ",status=\"" + std::to_string(status) + "\"", n);
           });
    return o;
}

}  // namespace redir::agent
