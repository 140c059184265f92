#pragma once
// Audit records about one redirected connection (inspect relay, terminator):
// every one names the connection the same way, and every refusal by a cap
// carries the same fields.
#include <cstdint>
#include <string>
#include <string_view>

#include "agent/json_out.hpp"
#include "common/conn_info.hpp"

namespace redir::agent {

using Record = redir::BasicJsonOut<rapidjson::Writer<rapidjson::StringBuffer>>;

// Starts a record: ts_ms, event, verdict. The caller adds its own fields and
// finishes with conn_record_end().
inline Record& conn_record(Record& j, std::string_view event, std::string_view verdict) {
    return j.begin().num("ts_ms", now_ms()).str("event", event).str("verdict", verdict);
}

// Names the connection (ORIG_DST: with where it was going) and closes the record.
inline std::string conn_record_end(Record& j, const ConnInfo& ci, bool orig_dst) {
    j.str("client", ci.client);
    if (orig_dst) j.str("orig_dst", ci.orig);
    return j.num("pid", ci.pid).num("cgroup_id", ci.cgroup_id).end().take();
}

// What a cap refused, for the audit record of the refusal.
struct CapRefusal {
    std::string_view reason;  // one sentence for people
    std::string_view limit;   // the redird flag's subject
    std::uint64_t cap = 0;
    std::uint64_t suppressed = 0;  // refusals of this sandbox not recorded since the last one
};

inline std::string refusal_record(std::string_view event, const CapRefusal& r, const ConnInfo& ci, bool orig_dst) {
    JsonOut j;
    conn_record(j, event, "refused")
        .str("reason", r.reason)
        .str("limit", r.limit)
        .num("cap", r.cap)
        .num("suppressed", r.suppressed);
    return conn_record_end(j, ci, orig_dst);
}

}  // namespace redir::agent
