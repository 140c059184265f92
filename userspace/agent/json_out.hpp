#pragma once
// Small builder over RapidJSON's Writer for control API responses and audit
// records, so call sites read as the JSON they produce.
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace redir::agent {

class JsonOut {
public:
    JsonOut() : w_(sb_) {}
    JsonOut& begin() { w_.StartObject(); return *this; }
    JsonOut& end() { w_.EndObject(); return *this; }
    JsonOut& begin_array(std::string_view k) { key(k); w_.StartArray(); return *this; }
    JsonOut& begin_array() { w_.StartArray(); return *this; }
    JsonOut& end_array() { w_.EndArray(); return *this; }
    JsonOut& begin_object(std::string_view k) { key(k); w_.StartObject(); return *this; }
    JsonOut& key(std::string_view k) { w_.Key(k.data(), static_cast<rapidjson::SizeType>(k.size())); return *this; }
    JsonOut& str(std::string_view k, std::string_view v) { key(k); return str(v); }
    JsonOut& str(std::string_view v) { w_.String(v.data(), static_cast<rapidjson::SizeType>(v.size())); return *this; }
    JsonOut& num(std::string_view k, uint64_t v) { key(k); w_.Uint64(v); return *this; }
    JsonOut& num(uint64_t v) { w_.Uint64(v); return *this; }
    JsonOut& boolean(std::string_view k, bool v) { key(k); w_.Bool(v); return *this; }
    // Inserts already-serialised JSON as the value of K.
    JsonOut& raw(std::string_view k, std::string_view json) {
        key(k);
        w_.RawValue(json.data(), json.size(), rapidjson::kObjectType);
        return *this;
    }
    // Inserts already-serialised JSON as an array element.
    JsonOut& raw_value(std::string_view json) {
        w_.RawValue(json.data(), json.size(), rapidjson::kObjectType);
        return *this;
    }
    std::string take() { return sb_.GetString(); }

private:
    rapidjson::StringBuffer sb_;
    rapidjson::Writer<rapidjson::StringBuffer> w_;
};

// Wall-clock milliseconds since the epoch: the "ts_ms" of every audit record.
inline uint64_t now_ms() {
    return static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count());
}

inline std::string error_response(std::string_view msg) {
    JsonOut j;
    j.begin().boolean("ok", false).str("error", msg).end();
    return j.take();
}

}  // namespace redir::agent
