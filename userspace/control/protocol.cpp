// Parsing and writing control lines: the command table, the bounds a client
// line must keep, and the typed error for everything else.
#include "control/protocol.hpp"

#include <array>
#include <utility>

#include <rapidjson/error/en.h>

namespace redir::control {
namespace {

constexpr const char* kExpected = "a JSON object with a \"cmd\" string";

constexpr size_t kCommands = std::variant_size_v<Request>;

template <size_t... I>
constexpr std::array<std::string_view, kCommands> names_of(std::index_sequence<I...>) {
    return {std::variant_alternative_t<I, Request>::kName...};
}
constexpr auto kNames = names_of(std::make_index_sequence<kCommands>());

using Decoder = Request (*)(FieldReader&);

template <size_t I>
Request decode_as(FieldReader& r) {
    std::variant_alternative_t<I, Request> req;
    r.members(req);
    return req;
}

template <size_t... I>
constexpr std::array<Decoder, kCommands> decoders_of(std::index_sequence<I...>) {
    return {&decode_as<I>...};
}
constexpr auto kDecoders = decoders_of(std::make_index_sequence<kCommands>());

// Deepest nesting of objects and arrays in LINE (strings skipped), stopping
// early once it passes kMaxDepth.
size_t nesting_depth(std::string_view line) {
    size_t depth = 0, deepest = 0;
    bool in_string = false, escaped = false;
    for (char c : line) {
        if (in_string) {
            if (escaped)
                escaped = false;
            else if (c == '\\')
                escaped = true;
            else if (c == '"')
                in_string = false;
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '{' || c == '[') {
            deepest = std::max(deepest, ++depth);
            if (deepest > kMaxDepth) break;
        } else if ((c == '}' || c == ']') && depth > 0) {
            depth--;
        }
    }
    return deepest;
}

// The start of client text quoted in a message: a 10 MB command name is not echoed.
std::string clipped(std::string_view s) {
    constexpr size_t kMax = 64;
    return s.size() <= kMax ? std::string(s) : std::string(s.substr(0, kMax)) + "...";
}

void parse_bounded(std::string_view line, rapidjson::Document& d, const std::string& what, const char* expected) {
    if (line.size() > kMaxLine)
        throw ProtocolError(ErrorCode::too_large, "",
                            what + " of " + std::to_string(line.size()) + " bytes is over the limit of " +
                                std::to_string(kMaxLine) + " bytes");
    if (nesting_depth(line) > kMaxDepth)
        throw ProtocolError(ErrorCode::too_deep, "",
                            what + " nests objects or arrays deeper than " + std::to_string(kMaxDepth) + " levels");
    // JSON text never holds a raw NUL, and the parser would take one for the end of the line.
    if (auto nul = line.find('\0'); nul != std::string_view::npos)
        throw ProtocolError(ErrorCode::malformed_json, "",
                            "malformed " + what + ": a NUL byte at byte " + std::to_string(nul));
    d.Parse<rapidjson::kParseIterativeFlag>(line.data(), line.size());
    if (d.HasParseError())
        throw ProtocolError(ErrorCode::malformed_json, "",
                            "malformed " + what + ": expected " + expected + " (" +
                                rapidjson::GetParseError_En(d.GetParseError()) + " at byte " +
                                std::to_string(d.GetErrorOffset()) + ")");
    if (!d.IsObject())
        throw ProtocolError(ErrorCode::malformed_json, "",
                            "malformed " + what + ": expected " + expected);
}

}  // namespace

std::string_view code_name(ErrorCode code) {
    switch (code) {
        case ErrorCode::malformed_json: return "malformed_json";
        case ErrorCode::too_large: return "too_large";
        case ErrorCode::too_deep: return "too_deep";
        case ErrorCode::unknown_command: return "unknown_command";
        case ErrorCode::missing_field: return "missing_field";
        case ErrorCode::wrong_type: return "wrong_type";
        case ErrorCode::invalid_value: return "invalid_value";
    }
    return "invalid_value";
}

std::vector<std::string_view> command_names() { return {kNames.begin(), kNames.end()}; }

std::optional<size_t> command_index(std::string_view name) {
    for (size_t i = 0; i < kNames.size(); i++)
        if (kNames[i] == name) return i;
    return std::nullopt;
}

void parse_object(std::string_view line, rapidjson::Document& d) { parse_bounded(line, d, "control request", kExpected); }

Request decode_request(std::string_view line) {
    rapidjson::Document d;
    parse_object(line, d);
    auto cmd = d.FindMember("cmd");
    if (cmd == d.MemberEnd() || !cmd->value.IsString())
        throw ProtocolError(cmd == d.MemberEnd() ? ErrorCode::missing_field : ErrorCode::wrong_type, "cmd",
                            std::string("malformed control request: expected ") + kExpected);
    std::string_view name(cmd->value.GetString(), cmd->value.GetStringLength());
    auto index = command_index(name);
    if (!index)
        throw ProtocolError(ErrorCode::unknown_command, "cmd", "unknown command \"" + clipped(name) + "\"");
    FieldReader r(d, "");
    try {
        return kDecoders[*index](r);
    } catch (const ProtocolError& e) {
        throw ProtocolError(e.code, e.field, std::string(name) + " request refused: " + e.what());
    }
}

std::string encode_request(const Request& r) {
    return std::visit([](const auto& q) { return encode_request(q); }, r);
}

std::string encode_error(const ErrorReply& e) {
    JsonOut j;
    j.begin().boolean("ok", false);
    FieldWriter(j).members(e);
    return j.end().take();
}

std::string encode_error(const ProtocolError& e) {
    return encode_error(ErrorReply{e.what(), std::nullopt, std::string(code_name(e.code)), e.field});
}

namespace detail {

bool parse_answer(std::string_view line, rapidjson::Document& d) {
    parse_bounded(line, d, "answer from redird", "a JSON object");
    auto ok = d.FindMember("ok");
    if (ok == d.MemberEnd() || !ok->value.IsBool())
        throw ProtocolError(ErrorCode::missing_field, "ok", "malformed answer from redird: no \"ok\" true or false");
    return ok->value.GetBool();
}

ErrorReply read_error(const rapidjson::Document& d) {
    ErrorReply e;
    FieldReader r(d, "");
    r.members(e);
    return e;
}

}  // namespace detail

}  // namespace redir::control
