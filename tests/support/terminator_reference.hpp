#pragma once
// The terminator's request-path code as it was before session 6 made it
// cheaper, kept in one place as the reference the new code must match byte
// for byte: the unit tests compare against it, and bench_terminator_json
// times it as the "old" side of its same-run ratios.
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "terminator/request.hpp"

namespace redir::terminator::reference {

// normalise_target's dot-segment folding through a list of segments, then joined.
inline std::string fold_segments(std::string_view t) {
    std::vector<std::string_view> segs;
    size_t i = 0;
    while (i <= t.size()) {
        size_t j = t.find('/', i);
        if (j == std::string_view::npos) j = t.size();
        std::string_view seg = t.substr(i, j - i);
        if (seg == "..") {
            if (!segs.empty()) segs.pop_back();
        } else if (!seg.empty() && seg != ".") {
            segs.push_back(seg);
        }
        i = j + 1;
    }
    std::string out;
    for (auto s : segs) out += "/" + std::string(s);
    return out.empty() ? "/" : out;
}

// The audit line through rapidjson::Writer and a StringBuffer, copied out.
inline std::string log_json(const RequestLog& r) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    auto put = [&](std::string_view v) { w.String(v.data(), static_cast<rapidjson::SizeType>(v.size())); };
    auto key = [&](std::string_view k) { w.Key(k.data(), static_cast<rapidjson::SizeType>(k.size())); };
    auto opt = [&](std::string_view k, std::string_view v) {
        if (!v.empty()) key(k), put(v);
    };
    w.StartObject();
    key("event"), put("inference");
    key("cgroup_id"), w.Uint64(r.conn.cgroup_id);
    key("pid"), w.Uint(r.conn.pid);
    opt("client", r.conn.client);
    key("method"), put(r.method);
    key("path"), put(r.path);
    opt("route", r.route);
    key("provider"), put(r.provider);
    opt("provider_type", r.provider_type);
    key("model_requested"), put(r.model_requested);
    key("model_used"), put(r.model_used);
    key("config_version"), w.Uint64(r.config_version);
    key("status"), w.Int(r.status);
    key("stream"), w.Bool(r.stream);
    key("bytes_in"), w.Uint64(r.bytes_in);
    key("bytes_out"), w.Uint64(r.bytes_out);
    key("duration_ms"), w.Double(static_cast<double>(static_cast<int64_t>(r.duration_ms * 1000)) / 1000.0);
    if (r.usage.known()) {
        key("usage"), w.StartObject();
        if (r.usage.input_tokens) key("input_tokens"), w.Uint64(*r.usage.input_tokens);
        if (r.usage.output_tokens) key("output_tokens"), w.Uint64(*r.usage.output_tokens);
        w.EndObject();
    }
    if (r.credential) {
        key("credential"), put(r.credential->header.empty() ? "none" : "injected");
        opt("credential_header", r.credential->header);
        opt("credential_key", r.credential->key);
    }
    opt("error", r.error);
    w.EndObject();
    return std::string(sb.GetString(), sb.GetSize());
}

}  // namespace redir::terminator::reference
