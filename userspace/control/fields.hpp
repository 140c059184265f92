#pragma once
// How a message's fields map to JSON. Each message lists its fields once, in
// wire order (`f("cgroup", self.cgroup)`); that one list drives both writing
// (FieldWriter, through JsonOut: every string escaped) and reading
// (FieldReader: a missing or wrong-typed field is a ProtocolError naming it).
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <rapidjson/document.h>

#include "common/json_out.hpp"
#include "control/error.hpp"

namespace redir::control {

// A JSON value carried as its compact text (a normalised policy, an audit record).
struct RawJson {
    std::string text;
    bool operator==(const RawJson&) const = default;
};

// Absent on the wire: an error (required) or the member's default (optional).
// An optional string or bool equal to its default is left out when writing.
enum class Need { required, optional };

class FieldReader;

// A struct that lists its fields: a message or a part of one.
template <class T>
concept HasFields = requires(T& t, FieldReader& r) { T::fields(t, r); };

class FieldWriter {
public:
    explicit FieldWriter(JsonOut& j) : j_(j) {}

    void operator()(std::string_view k, const std::string& v, Need n = Need::required) {
        if (n == Need::optional && v.empty()) return;
        j_.str(k, v);
    }
    template <class T>
    void operator()(std::string_view k, const std::optional<T>& v, Need = Need::optional) {
        if (v) (*this)(k, *v);
    }
    void operator()(std::string_view k, uint64_t v, Need = Need::required) { j_.num(k, v); }
    void operator()(std::string_view k, bool v, Need n = Need::required) {
        if (n == Need::optional && !v) return;
        j_.boolean(k, v);
    }
    void operator()(std::string_view k, const RawJson& v, Need = Need::required) { j_.raw(k, v.text); }
    void operator()(std::string_view k, const std::map<std::string, std::string>& m, Need = Need::required) {
        j_.begin_object(k);
        for (auto& [mk, mv] : m) j_.str(mk, mv);
        j_.end();
    }
    template <class T>
    void operator()(std::string_view k, const std::vector<T>& v, Need = Need::required) {
        j_.begin_array(k);
        for (auto& e : v) element(e);
        j_.end_array();
    }
    template <HasFields T>
    void operator()(std::string_view k, const T& v, Need = Need::required) {
        j_.begin_object(k);
        T::fields(v, *this);
        j_.end();
    }

    // The members of V into the object already begun.
    template <HasFields T>
    void members(const T& v) { T::fields(v, *this); }

private:
    void element(const std::string& v) { j_.str(v); }
    void element(uint64_t v) { j_.num(v); }
    void element(const RawJson& v) { j_.raw_value(v.text); }
    template <HasFields T>
    void element(const T& v) {
        j_.begin();
        T::fields(v, *this);
        j_.end();
    }

    JsonOut& j_;
};

class FieldReader {
public:
    // PATH names OBJ in error messages ("" for the top level, "provider", "attachments[2]").
    FieldReader(const rapidjson::Value& obj, std::string path) : obj_(obj), path_(std::move(path)) {}

    void operator()(std::string_view k, std::string& v, Need n = Need::required);
    void operator()(std::string_view k, uint64_t& v, Need n = Need::required);
    void operator()(std::string_view k, bool& v, Need n = Need::required);
    void operator()(std::string_view k, RawJson& v, Need n = Need::required);
    void operator()(std::string_view k, std::map<std::string, std::string>& m, Need n = Need::required);
    template <class T>
    void operator()(std::string_view k, std::vector<T>& v, Need n = Need::required) {
        auto* m = find(k, n);
        if (!m) return;
        if (!m->IsArray()) throw wrong_type(k, "an array");
        v.clear();
        for (rapidjson::SizeType i = 0; i < m->Size(); i++) {
            T e{};
            element((*m)[i], at(k) + "[" + std::to_string(i) + "]", e);
            v.push_back(std::move(e));
        }
    }
    template <class T>
    void operator()(std::string_view k, std::optional<T>& v, Need = Need::optional) {
        if (!find(k, Need::optional)) return;
        v.emplace();
        (*this)(k, *v, Need::required);
    }
    template <HasFields T>
    void operator()(std::string_view k, T& v, Need n = Need::required) {
        auto* m = find(k, n);
        if (!m) return;
        element(*m, at(k), v);
    }

    // The members of the object this reader reads, into V.
    template <HasFields T>
    void members(T& v) { T::fields(v, *this); }

private:
    // The member K, or null when absent and optional; throws when absent and required.
    const rapidjson::Value* find(std::string_view k, Need n) const;
    std::string at(std::string_view k) const;
    ProtocolError wrong_type(std::string_view k, const char* expected) const;

    static std::string string_of(const rapidjson::Value& v, const std::string& where);
    static void element(const rapidjson::Value& v, const std::string& where, std::string& out);
    static void element(const rapidjson::Value& v, const std::string& where, uint64_t& out);
    static void element(const rapidjson::Value& v, const std::string& where, RawJson& out);
    template <HasFields T>
    static void element(const rapidjson::Value& v, const std::string& where, T& out) {
        if (!v.IsObject()) throw ProtocolError(ErrorCode::wrong_type, where, "field \"" + where + "\" must be an object");
        FieldReader sub(v, where);
        T::fields(out, sub);
    }

    const rapidjson::Value& obj_;
    std::string path_;
};

}  // namespace redir::control
