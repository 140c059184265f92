#pragma once
// The one JSON output helper: a small builder over RapidJSON's writers, so
// call sites read as the JSON they produce (compact for the wire, pretty for
// state files people may read).
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "common/utf8.hpp"

namespace redir {

template <class W>
class BasicJsonOut {
public:
    BasicJsonOut() : w_(sb_) {}
    BasicJsonOut(const BasicJsonOut&) = delete;
    BasicJsonOut& operator=(const BasicJsonOut&) = delete;

    BasicJsonOut& begin() { w_.StartObject(); return *this; }
    BasicJsonOut& end() { w_.EndObject(); return *this; }
    BasicJsonOut& begin_array(std::string_view k) { key(k); w_.StartArray(); return *this; }
    BasicJsonOut& begin_array() { w_.StartArray(); return *this; }
    BasicJsonOut& end_array() { w_.EndArray(); return *this; }
    BasicJsonOut& begin_object(std::string_view k) { key(k); w_.StartObject(); return *this; }
    BasicJsonOut& key(std::string_view k) {
        if (!utf8_valid(k)) return key(utf8_sanitized(k));
        w_.Key(k.data(), size(k));
        return *this;
    }
    BasicJsonOut& str(std::string_view k, std::string_view v) { key(k); return str(v); }
    // Quotes, backslashes and control bytes are escaped by the writer; bytes
    // that are not UTF-8 become U+FFFD, so the document stays valid JSON.
    BasicJsonOut& str(std::string_view v) {
        if (!utf8_valid(v)) return str(utf8_sanitized(v));
        w_.String(v.data(), size(v));
        return *this;
    }
    BasicJsonOut& num(std::string_view k, uint64_t v) { key(k); w_.Uint64(v); return *this; }
    BasicJsonOut& num(uint64_t v) { w_.Uint64(v); return *this; }
    BasicJsonOut& boolean(std::string_view k, bool v) { key(k); w_.Bool(v); return *this; }
    BasicJsonOut& null(std::string_view k) { key(k); return null(); }
    BasicJsonOut& null() { w_.Null(); return *this; }
    // A number written with its fraction ("1.0"), for values that are reals by type.
    BasicJsonOut& real(double v) { w_.Double(v); return *this; }
    // Inserts already-serialised JSON as the value of K.
    BasicJsonOut& raw(std::string_view k, std::string_view json) { key(k); return raw_value(json); }
    // Inserts already-serialised JSON as an array element.
    BasicJsonOut& raw_value(std::string_view json) {
        w_.RawValue(json.data(), json.size(), rapidjson::kObjectType);
        return *this;
    }
    // Writes a parsed document or value (re-serialising it in this writer's layout).
    template <class Value>
    BasicJsonOut& value(const Value& v) { v.Accept(w_); return *this; }
    std::string take() const { return std::string(sb_.GetString(), sb_.GetSize()); }

private:
    static rapidjson::SizeType size(std::string_view s) { return static_cast<rapidjson::SizeType>(s.size()); }

    rapidjson::StringBuffer sb_;
    W w_;
};

// One line, no spaces: control API replies, audit records, requests.
class JsonOut : public BasicJsonOut<rapidjson::Writer<rapidjson::StringBuffer>> {};
// Indented four spaces, one member per line: state files and human output.
class PrettyJsonOut : public BasicJsonOut<rapidjson::PrettyWriter<rapidjson::StringBuffer>> {};

// S as a JSON string literal, quotes included.
inline std::string json_quote(std::string_view s) { return JsonOut().str(s).take(); }

}  // namespace redir
