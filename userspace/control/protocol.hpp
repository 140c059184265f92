#pragma once
// The control protocol: one JSON object per line each way. The command table
// is the Request variant (name → request type → reply type); requests and
// replies are encoded and decoded here, by redird and redirctl alike.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "control/messages.hpp"

namespace redir::control {

// The command table, one alternative per command.
using Request = std::variant<StatusRequest, AttachRequest, DetachRequest, PolicyLoadRequest, PolicyShowRequest,
                             PolicyListRequest, PolicyDeleteRequest, EventsRequest, ProviderCreateRequest,
                             ProviderGetRequest, ProviderListRequest, ProviderUpdateRequest, ProviderDeleteRequest,
                             InferenceSetRequest, InferenceGetRequest, InferenceUpdateRequest, InferenceListRequest,
                             InferenceDeleteRequest, CaExportRequest, UsageRequest>;

// A request line longer than this is refused (too_large): a 100k-rule policy is a few MB.
inline constexpr size_t kMaxLine = 64 << 20;
// Nesting deeper than this is refused (too_deep) before parsing: no request
// needs more than a handful of levels, and the parser must not recurse on
// what a client sends.
inline constexpr size_t kMaxDepth = 64;

// The wire names of every command, in table order.
std::vector<std::string_view> command_names();
// The table index of command NAME, or nullopt.
std::optional<size_t> command_index(std::string_view name);

// Parses one request line. Throws ProtocolError (never anything else) for
// what is not a well-formed request of a known command.
Request decode_request(std::string_view line);

// Parses one line into a JSON object, refusing it (ProtocolError) when too
// large, too deep, or not an object. Parsing is iterative, never recursive.
void parse_object(std::string_view line, rapidjson::Document& d);

// {"cmd":NAME, fields...}
template <class Req>
std::string encode_request(const Req& r) {
    JsonOut j;
    j.begin().str("cmd", Req::kName);
    FieldWriter(j).members(r);
    return j.end().take();
}
std::string encode_request(const Request& r);

// {"ok":true, fields...}
template <class Reply>
std::string encode_reply(const Reply& r) {
    JsonOut j;
    j.begin().boolean("ok", true);
    FieldWriter(j).members(r);
    return j.end().take();
}

// V alone as a JSON object, or a list of them as an array (`--json` output of part of a reply).
template <HasFields T>
std::string encode_object(const T& v) {
    JsonOut j;
    j.begin();
    FieldWriter(j).members(v);
    return j.end().take();
}
template <HasFields T>
std::string encode_array(const std::vector<T>& v) {
    JsonOut j;
    j.begin_array();
    for (auto& e : v) {
        j.begin();
        FieldWriter(j).members(e);
        j.end();
    }
    return j.end_array().take();
}

// {"ok":false,"error":...}
std::string encode_error(const ErrorReply& e);
std::string encode_error(const ProtocolError& e);

// A decoded answer: the reply, or the agent's error.
template <class Reply>
struct Answer {
    std::optional<Reply> reply;
    ErrorReply error;

    explicit operator bool() const { return reply.has_value(); }
    const Reply& operator*() const { return *reply; }
    const Reply* operator->() const { return &*reply; }
};

namespace detail {
// Whether LINE's "ok" is true; fills D. Throws ProtocolError when malformed.
bool parse_answer(std::string_view line, rapidjson::Document& d);
ErrorReply read_error(const rapidjson::Document& d);
}  // namespace detail

// Parses an answer line. Throws ProtocolError when it is malformed.
template <class Reply>
Answer<Reply> decode_answer(std::string_view line) {
    rapidjson::Document d;
    Answer<Reply> a;
    if (!detail::parse_answer(line, d)) {
        a.error = detail::read_error(d);
        return a;
    }
    FieldReader r(d, "");
    a.reply.emplace();
    r.members(*a.reply);
    return a;
}

}  // namespace redir::control
