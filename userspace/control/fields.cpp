// Reading a message's fields from a parsed JSON object, with the field at
// fault named in every refusal.
#include "control/fields.hpp"

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace redir::control {
namespace {

ProtocolError wrong_type_at(const std::string& where, const char* expected) {
    return ProtocolError(ErrorCode::wrong_type, where, "field \"" + where + "\" must be " + expected);
}

}  // namespace

std::string FieldReader::at(std::string_view k) const {
    return path_.empty() ? std::string(k) : path_ + "." + std::string(k);
}

ProtocolError FieldReader::wrong_type(std::string_view k, const char* expected) const {
    return wrong_type_at(at(k), expected);
}

const rapidjson::Value* FieldReader::find(std::string_view k, Need n) const {
    auto it = obj_.FindMember(rapidjson::Value(rapidjson::StringRef(k.data(), static_cast<rapidjson::SizeType>(k.size()))));
    if (it != obj_.MemberEnd()) return &it->value;
    if (n == Need::optional) return nullptr;
    throw ProtocolError(ErrorCode::missing_field, at(k), "field \"" + at(k) + "\" is missing");
}

// A NUL would cut a path or name short where it reaches a C API (open_cgroup,
// a header): refused rather than truncated.
std::string FieldReader::string_of(const rapidjson::Value& v, const std::string& where) {
    if (!v.IsString()) throw wrong_type_at(where, "a string");
    std::string s(v.GetString(), v.GetStringLength());
    if (s.find('\0') != std::string::npos)
        throw ProtocolError(ErrorCode::invalid_value, where, "field \"" + where + "\" contains a NUL byte");
    return s;
}

void FieldReader::operator()(std::string_view k, std::string& v, Need n) {
    if (auto* m = find(k, n)) v = string_of(*m, at(k));
}

void FieldReader::operator()(std::string_view k, uint64_t& v, Need n) {
    if (auto* m = find(k, n)) element(*m, at(k), v);
}

void FieldReader::operator()(std::string_view k, bool& v, Need n) {
    auto* m = find(k, n);
    if (!m) return;
    if (!m->IsBool()) throw wrong_type(k, "true or false");
    v = m->GetBool();
}

void FieldReader::operator()(std::string_view k, RawJson& v, Need n) {
    if (auto* m = find(k, n)) element(*m, at(k), v);
}

void FieldReader::operator()(std::string_view k, std::map<std::string, std::string>& out, Need n) {
    auto* m = find(k, n);
    if (!m) return;
    if (!m->IsObject()) throw wrong_type(k, "an object of strings");
    out.clear();
    for (auto& e : m->GetObject()) {
        std::string key = string_of(e.name, at(k));
        out[key] = string_of(e.value, at(k) + "." + key);
    }
}

void FieldReader::element(const rapidjson::Value& v, const std::string& where, std::string& out) {
    out = string_of(v, where);
}

void FieldReader::element(const rapidjson::Value& v, const std::string& where, uint64_t& out) {
    if (!v.IsUint64()) throw wrong_type_at(where, "a non-negative integer");
    out = v.GetUint64();
}

void FieldReader::element(const rapidjson::Value& v, const std::string&, RawJson& out) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    v.Accept(w);
    out.text.assign(sb.GetString(), sb.GetSize());
}

}  // namespace redir::control
