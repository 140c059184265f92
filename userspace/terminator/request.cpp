#include "terminator/request.hpp"

#include "terminator/provider_fetch.hpp"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/internal/dtoa.h>
#include <rapidjson/internal/ieee754.h>
#include <rapidjson/internal/itoa.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <ctime>
#include <memory_resource>
#include <sstream>

namespace redir::terminator {

namespace {

std::string lower(std::string_view s) {
    std::string o(s);
    for (char& c : o) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return o;
}

bool is_hop_by_hop(std::string_view n) {
    static constexpr std::string_view names[] = {"connection", "keep-alive", "proxy-connection", "te",
                                                 "trailer",    "transfer-encoding", "upgrade"};
    return std::find(std::begin(names), std::end(names), n) != std::end(names);
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (std::tolower(static_cast<unsigned char>(a[i])) != std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    return true;
}

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

// JSON string escapes exactly as rapidjson::Writer writes them (UTF-8 in and
// out, no validation): control bytes, '"' and '\\' escaped, everything else
// as is. Appended a run at a time instead of a byte at a time.
constexpr std::array<char, 256> kJsonEscape = [] {
    std::array<char, 256> t{};
    for (int c = 0; c < 0x20; ++c) t[static_cast<std::size_t>(c)] = 'u';
    t['\b'] = 'b';
    t['\t'] = 't';
    t['\n'] = 'n';
    t['\f'] = 'f';
    t['\r'] = 'r';
    t['"'] = '"';
    t['\\'] = '\\';
    return t;
}();

// Whether any of the 8 bytes of W needs an escape (exact: SWAR zero-byte tests).
bool word_needs_escape(std::uint64_t w) {
    constexpr std::uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    auto has_zero = [&](std::uint64_t x) { return ((x - ones) & ~x & highs) != 0; };
    const bool below_space = ((w - ones * 0x20) & ~w & highs) != 0;  // some byte < 0x20
    return below_space || has_zero(w ^ (ones * '"')) || has_zero(w ^ (ones * '\\'));
}

void append_json_string(std::string& s, std::string_view v) {
    static constexpr char hex[] = "0123456789ABCDEF";
    s.push_back('"');
    std::size_t run = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
        // Prompts are mostly plain text: step over clean words.
        while (i + 8 <= v.size()) {
            std::uint64_t w;
            std::memcpy(&w, v.data() + i, 8);
            if (word_needs_escape(w)) break;
            i += 8;
        }
        if (i >= v.size()) break;
        const auto c = static_cast<unsigned char>(v[i]);
        const char e = kJsonEscape[c];
        if (!e) continue;
        s.append(v.data() + run, i - run);
        const char esc[6] = {'\\', e, '0', '0', hex[c >> 4], hex[c & 0xF]};
        s.append(esc, e == 'u' ? 6 : 2);
        run = i + 1;
    }
    s.append(v.data() + run, v.size() - run);
    s.push_back('"');
}

// Strict UTF-8 (RFC 3629: no overlongs, surrogates or code points past
// U+10FFFF), the same DFA rapidjson's kParseValidateEncodingFlag applies to
// strings, here over the whole body at once with an ASCII fast path.
bool valid_utf8(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const auto* e = p + s.size();
    auto cont = [](unsigned char c, unsigned char lo = 0x80, unsigned char hi = 0xBF) { return c >= lo && c <= hi; };
    while (p < e) {
        if (e - p >= 8) {
            std::uint64_t w;
            std::memcpy(&w, p, 8);
            if (!(w & 0x8080808080808080ull)) {
                p += 8;
                continue;
            }
        }
        const unsigned char c = *p;
        if (c < 0x80) {
            ++p;
            continue;
        }
        std::size_t n;
        bool ok;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
            ok = e - p >= 2 && cont(p[1]);
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            ok = e - p >= 3 && cont(p[1], c == 0xE0 ? 0xA0 : 0x80, c == 0xED ? 0x9F : 0xBF) && cont(p[2]);
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            ok = e - p >= 4 && cont(p[1], c == 0xF0 ? 0x90 : 0x80, c == 0xF4 ? 0x8F : 0xBF) && cont(p[2]) &&
                 cont(p[3]);
        } else {
            return false;
        }
        if (!ok) return false;
        p += n;
    }
    return true;
}

// RapidJSON output straight into a std::string: the rewritten body is built
// where it is returned, never copied out of a staging buffer.
struct StringOut {
    using Ch = char;
    std::string& s;
    void Put(char c) { s.push_back(c); }
    void Flush() {}
};
// The rewrite's parser and writer keep their stacks in pools that start in a
// buffer on the caller's stack: a typical request allocates nothing but the
// body it returns (a longer string or deeper nesting spills to the heap).
using Pool = rapidjson::MemoryPoolAllocator<>;
using BodyWriter = rapidjson::Writer<StringOut, rapidjson::UTF8<>, rapidjson::UTF8<>, Pool>;
using BodyReader = rapidjson::GenericReader<rapidjson::UTF8<>, rapidjson::UTF8<>, Pool>;

template <class W>
void put(W& w, std::string_view s) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); }
template <class W>
void key(W& w, std::string_view s) { w.Key(s.data(), static_cast<rapidjson::SizeType>(s.size())); }
// Streams the request through the writer, replacing the top-level "model"
// and, when asked (force_usage), making a stream report its usage:
// stream_options.include_usage is set to true whatever the client sent.
// SAX keeps number text and key order as the client wrote them, and the
// iterative parser bounds stack use whatever the nesting. With a FetchScanner,
// every event written is also handed to it: it sees exactly the body that
// leaves (the configured model, never the client's dropped values), as a
// second parse of the written body would, without that parse. Its finding
// never stops the rewrite, so a malformed body is refused as malformed first.
struct ModelRewriter : rapidjson::BaseReaderHandler<rapidjson::UTF8<>, ModelRewriter> {
    BodyWriter& w;
    std::string& body;   // where w writes
    FetchScanner* scan;  // null: no scan (provider fetches allowed)
    // The parse is in situ over a copy of the client's body: a parsed string
    // sits where its raw text started, so one without escapes is written out
    // as the bytes it came in as (no escape scan).
    const char* text = nullptr;  // the copy being parsed
    std::string_view raw;        // the client's body, same offsets
    std::string_view model;
    std::size_t log_max;
    int depth = 0;
    int skip = 0;  // >0 while dropping the client's model value
    bool skipping = false;
    bool saw_model = false;
    bool next_is_model = false;
    bool next_is_stream = false;
    bool started = false;
    std::pmr::set<std::pmr::string, std::less<>> keys;  // top-level keys seen (in the caller's arena)
    std::string error;
    std::string model_requested;
    bool stream = false;
    bool truncated = false;
    // stream_options (force_usage only).
    bool force_usage = false;
    bool saw_stream_options = false;
    bool next_is_stream_options = false;
    bool in_stream_options = false;  // inside the client's stream_options object (depth 2)
    bool drop_next = false;          // the next value is dropped (its key was not written)

    ModelRewriter(BodyWriter& w_, std::string& out, FetchScanner* sc, std::string_view m, std::size_t lm, bool fu,
                  std::pmr::memory_resource* arena)
        : w(w_), body(out), scan(sc), model(m), log_max(lm), keys(arena), force_usage(fu) {}

    // The writer's events, teed to the scanner (which ignores all after a finding).
    using Size = rapidjson::SizeType;
    bool out_null() {
        if (scan) scan->Null();
        return w.Null();
    }
    bool out_bool(bool b) {
        if (scan) scan->Bool(b);
        return w.Bool(b);
    }
    bool out_number(const char* s, Size n) {
        if (scan) scan->RawNumber(s, n, true);
        return w.RawValue(s, n, rapidjson::kNumberType);
    }
    // Strings: the writer places the separator (an empty raw value keeps its
    // comma/colon bookkeeping), the escaped text goes out a run at a time.
    bool out_string(std::string_view s) {
        if (scan) scan->String(s.data(), static_cast<Size>(s.size()));
        w.RawValue("", 0, rapidjson::kStringType);
        append_json_string(body, s);
        return true;
    }
    bool out_key(std::string_view s) {
        if (scan) scan->Key(s.data(), static_cast<Size>(s.size()));
        w.RawValue("", 0, rapidjson::kStringType);
        append_json_string(body, s);
        return true;
    }
    // A string of the client's: when its raw text had no escape it was
    // already JSON exactly as the writer would escape it (a valid JSON string
    // holds no raw control byte, quote or backslash), so it is copied as is.
    bool out_parsed(const char* s, Size n, bool is_key) {
        if (scan) is_key ? scan->Key(s, n) : scan->String(s, n);
        w.RawValue("", 0, rapidjson::kStringType);
        const bool in_text = text && s >= text && s <= text + raw.size();
        const std::size_t off = in_text ? static_cast<std::size_t>(s - text) : 0;
        if (in_text && off + n < raw.size() && raw[off + n] == '"' && !std::memchr(raw.data() + off, '\\', n)) {
            body.push_back('"');
            body.append(s, n);
            body.push_back('"');
        } else {
            append_json_string(body, {s, n});
        }
        return true;
    }
    bool out_start_object() {
        if (scan) scan->StartObject();
        return w.StartObject();
    }
    bool out_end_object() {
        if (scan) scan->EndObject();
        return w.EndObject();
    }
    bool out_start_array() {
        if (scan) scan->StartArray();
        return w.StartArray();
    }
    bool out_end_array() {
        if (scan) scan->EndArray();
        return w.EndArray();
    }

    void write_include_usage() {
        out_key("include_usage");
        out_bool(true);
    }
    // The client's stream_options value: an object is kept (its include_usage
    // replaced), anything else is dropped for {"include_usage":true}.
    void stream_options_value(bool object) {
        next_is_stream_options = false;
        if (object) {
            in_stream_options = true;
            return;
        }
        out_start_object();
        write_include_usage();
        out_end_object();
        skipping = true;
        skip = 0;
    }

    // Common entry for every value: false aborts the parse.
    bool value_start(bool container) {
        if (!started) {
            started = true;
            if (!container) {
                error = "request body must be a JSON object";
                return false;
            }
        }
        if (depth == 1 && next_is_model) {
            next_is_model = false;
            skipping = true;
            skip = 0;
        }
        if (drop_next) {
            drop_next = false;
            skipping = true;
            skip = 0;
        }
        return true;
    }
    // True when the current value is being dropped.
    bool dropping() const { return skipping; }
    void after_scalar() {
        if (skipping && skip == 0) skipping = false;
    }

    bool Null() {
        if (!value_start(false)) return false;
        next_is_stream = false;
        if (depth == 1 && next_is_stream_options) stream_options_value(false);
        if (dropping()) return after_scalar(), true;
        return out_null();
    }
    bool Bool(bool b) {
        if (!value_start(false)) return false;
        if (next_is_stream) stream = b, next_is_stream = false;
        if (depth == 1 && next_is_stream_options) stream_options_value(false);
        if (dropping()) return after_scalar(), true;
        return out_bool(b);
    }
    bool RawNumber(const char* s, rapidjson::SizeType n, bool) {
        if (!value_start(false)) return false;
        next_is_stream = false;
        if (depth == 1 && next_is_stream_options) stream_options_value(false);
        if (dropping()) return after_scalar(), true;
        return out_number(s, n);
    }
    bool String(const char* s, rapidjson::SizeType n, bool) {
        bool was_model = depth == 1 && next_is_model;
        if (!value_start(false)) return false;
        next_is_stream = false;
        if (depth == 1 && next_is_stream_options) stream_options_value(false);
        // Only a clipped copy: the client's model string is for the log.
        if (was_model) {
            model_requested = clip(std::string_view(s, n), log_max);
            truncated |= n > log_max;
        }
        if (dropping()) return after_scalar(), true;
        return out_parsed(s, n, false);
    }
    bool StartObject() {
        if (!value_start(true)) return false;
        next_is_stream = false;
        if (depth == 1 && next_is_stream_options) stream_options_value(true);
        ++depth;
        if (dropping()) return ++skip, true;
        return out_start_object();
    }
    bool Key(const char* s, rapidjson::SizeType n, bool) {
        if (dropping()) return true;
        if (depth == 1) {
            const std::string_view k(s, n);
            if (!keys.emplace(k).second) {
                truncated |= k.size() > log_max;
                error = "request body repeats the top-level key \"" + clip(k, log_max) + "\"";
                return false;
            }
            if (k == "model") {
                saw_model = true;
                next_is_model = true;
                out_key("model");
                return out_string(model);
            }
            next_is_stream = k == "stream";
            if (force_usage && k == "stream_options") {
                saw_stream_options = true;
                next_is_stream_options = true;
            }
        } else if (depth == 2 && in_stream_options && std::string_view(s, n) == "include_usage") {
            drop_next = true;  // written once, as true, when the object ends
            return true;
        }
        return out_parsed(s, static_cast<Size>(n), true);
    }
    bool EndObject(rapidjson::SizeType) {
        --depth;
        if (dropping()) {
            if (--skip == 0) skipping = false;
            return true;
        }
        if (depth == 1 && in_stream_options) {
            in_stream_options = false;
            write_include_usage();
        }
        if (depth == 0 && !saw_model) {
            out_key("model");
            out_string(model);
        }
        if (depth == 0 && force_usage && stream && !saw_stream_options) {
            out_key("stream_options");
            out_start_object();
            write_include_usage();
            out_end_object();
        }
        return out_end_object();
    }
    bool StartArray() {
        if (!value_start(true)) return false;
        next_is_stream = false;
        if (!started || depth == 0) {
            error = "request body must be a JSON object";
            return false;
        }
        if (depth == 1 && next_is_stream_options) stream_options_value(false);
        ++depth;
        if (dropping()) return ++skip, true;
        return out_start_array();
    }
    bool EndArray(rapidjson::SizeType) {
        --depth;
        if (dropping()) {
            if (--skip == 0) skipping = false;
            return true;
        }
        return out_end_array();
    }
};

int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

}  // namespace

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

std::optional<std::string> percent_decode(std::string_view s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] != '%') {
            out += s[i];
            continue;
        }
        if (i + 2 >= s.size()) return std::nullopt;
        int a = hexval(s[i + 1]), b = hexval(s[i + 2]);
        if (a < 0 || b < 0) return std::nullopt;
        out += static_cast<char>(a * 16 + b);
        i += 2;
    }
    return out;
}

std::string_view ReusedHeaders::lowered(std::string_view name) {
    name_.assign(name);
    for (char& c : name_) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return name_;
}

void ReusedHeaders::put(std::size_t i, std::string_view value) {
    if (i == list_.size()) list_.emplace_back();
    list_[i].first.assign(name_);
    list_[i].second.assign(value);
}

void ReusedHeaders::release_if_large() {
    if (name_.capacity() > kKeepBytes) std::string().swap(name_);
    std::size_t bytes = 0;
    for (const auto& [n, v] : list_) bytes += n.capacity() + v.capacity();
    if (list_.size() > kKeepEntries || list_.capacity() > kKeepEntries || bytes > kKeepBytes) HeaderList().swap(list_);
}

std::optional<Target> normalise_target(std::string_view t) {
    if (t.empty()) return std::nullopt;
    std::string holder;
    if (t[0] != '/') {
        // absolute-form: scheme "://" authority path
        auto sep = t.find("://");
        if (sep == std::string_view::npos) return std::nullopt;
        std::string scheme = lower(t.substr(0, sep));
        if (scheme != "http" && scheme != "https") return std::nullopt;
        t.remove_prefix(sep + 3);
        auto slash = t.find_first_of("/?");
        if (slash == std::string_view::npos) {
            t = "/";
        } else if (t[slash] == '?') {
            holder = "/" + std::string(t.substr(slash));
            t = holder;
        } else {
            t.remove_prefix(slash);
        }
    }
    Target out;
    auto hash = t.find('#');
    if (hash != std::string_view::npos) t = t.substr(0, hash);
    auto q = t.find('?');
    if (q != std::string_view::npos) {
        out.query = std::string(t.substr(q + 1));
        t = t.substr(0, q);
    }
    // Segments with empty ones folded and dot segments resolved, so that
    // "/v1//models/" and "/v1/x/../models" reach the same route. Built in
    // place: ".." drops the last "/segment" written (no list of segments).
    out.path.reserve(t.size() + 1);
    size_t i = 0;
    while (i <= t.size()) {
        size_t j = t.find('/', i);
        if (j == std::string_view::npos) j = t.size();
        std::string_view seg = t.substr(i, j - i);
        if (seg == "..") {
            out.path.resize(out.path.empty() ? 0 : out.path.rfind('/'));
        } else if (!seg.empty() && seg != ".") {
            out.path += '/';
            out.path += seg;
        }
        i = j + 1;
    }
    if (out.path.empty()) out.path = "/";
    return out;
}

std::optional<Endpoint> match_route(const std::string& path, std::string* model_id) {
    static const std::pair<std::string_view, Endpoint> exact[] = {
        {"/v1/chat/completions", Endpoint::ChatCompletions},
        {"/v1/completions", Endpoint::Completions},
        {"/v1/embeddings", Endpoint::Embeddings},
        {"/v1/responses", Endpoint::Responses},
        {"/v1/messages", Endpoint::Messages},
        {"/v1/models", Endpoint::Models},
    };
    for (const auto& [p, e] : exact)
        if (path == p) return e;
    constexpr std::string_view prefix = "/v1/models/";
    if (path.size() > prefix.size() && path.compare(0, prefix.size(), prefix) == 0) {
        // Model ids may contain '/' (e.g. "meta/llama-3.1-8b-instruct").
        auto id = percent_decode(std::string_view(path).substr(prefix.size()));
        if (!id || id->empty()) return std::nullopt;
        if (model_id) *model_id = *id;
        return Endpoint::ModelById;
    }
    return std::nullopt;
}

ApiShape shape_for(const std::string& path, bool anthropic_client) {
    if (path == "/v1/messages" || path.rfind("/v1/messages/", 0) == 0) return ApiShape::Anthropic;
    return anthropic_client ? ApiShape::Anthropic : ApiShape::OpenAI;
}

std::string_view error_type_for_status(ApiShape shape, int status) {
    switch (status) {
        case 400: case 405: case 411: case 415: case 417: case 431: return "invalid_request_error";
        case 401: return "authentication_error";
        case 403: return "permission_error";
        case 404: return "not_found_error";
        case 413: return shape == ApiShape::Anthropic ? "request_too_large" : "invalid_request_error";
        case 429: return "rate_limit_error";
        case 503: return shape == ApiShape::Anthropic ? "overloaded_error" : "service_unavailable";
        case 504: return shape == ApiShape::Anthropic ? "timeout_error" : "timeout";
        default: return "api_error";
    }
}

std::string error_json(ApiShape shape, std::string_view type, std::string_view message) {
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.StartObject();
    if (shape == ApiShape::Anthropic) {
        key(w, "type");
        put(w, "error");
        key(w, "error");
        w.StartObject();
        key(w, "type");
        put(w, type);
        key(w, "message");
        put(w, message);
        w.EndObject();
    } else {
        key(w, "error");
        w.StartObject();
        key(w, "message");
        put(w, message);
        key(w, "type");
        put(w, type);
        key(w, "param");
        w.Null();
        key(w, "code");
        w.Null();
        w.EndObject();
    }
    w.EndObject();
    return std::string(sb.GetString(), sb.GetSize());
}

RewriteResult rewrite_model(std::string_view body, std::string_view model, std::size_t log_max, bool force_usage,
                            FetchScanner* scan) {
    RewriteResult r;
    std::string_view t = body;
    while (!t.empty() && std::isspace(static_cast<unsigned char>(t.front()))) t.remove_prefix(1);
    if (t.empty()) {
        r.error = "request body is empty: expected a JSON object";
        return r;
    }
    // The body only shrinks (whitespace dropped, escapes decoded) but for what
    // the rewrite adds: a missing "model" member, and with force_usage
    // stream_options.include_usage (at most ,"stream_options":{"include_usage":true}).
    // Reserved at once, a streamed request's body is not grown and copied.
    constexpr std::size_t kModelMember = sizeof(R"(,"model":"")") - 1;
    constexpr std::size_t kStreamOptions = sizeof(R"(,"stream_options":{"include_usage":true})") - 1;
    r.body.reserve(body.size() + model.size() + kModelMember + (force_usage ? kStreamOptions : 0));
    StringOut out{r.body};
    alignas(16) char writer_room[1024];
    Pool writer_pool(writer_room, sizeof(writer_room));
    BodyWriter w(out, &writer_pool);
    alignas(16) char keys_room[1024];
    std::pmr::monotonic_buffer_resource keys_arena(keys_room, sizeof(keys_room));
    ModelRewriter h(w, r.body, scan, model, log_max, force_usage, &keys_arena);
    // The parser's pool holds the copy parsed in situ and its state stack:
    // past the buffer, one chunk the body's size holds both for most bodies.
    alignas(16) char reader_room[8192];
    Pool reader_pool(reader_room, sizeof(reader_room), std::max<std::size_t>(64 << 10, body.size() + 4096));
    BodyReader reader(&reader_pool);
    // In situ: strings are decoded where they lie (not copied into the
    // parser's stack). Offsets in errors are the body's, as before; an
    // embedded NUL ends the input as it did for the MemoryStream.
    char* text = static_cast<char*>(reader_pool.Malloc(body.size() + 1));
    std::memcpy(text, body.data(), body.size());
    text[body.size()] = '\0';
    rapidjson::InsituStringStream ms(text);
    h.text = text;
    h.raw = body;
    // Strings must be valid UTF-8. A body that is valid UTF-8 throughout is
    // parsed without the per-character check (same result, it cannot fail
    // it); any other is parsed with it, so its 400 says what and where as before.
    constexpr unsigned flags =
        rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag | rapidjson::kParseInsituFlag;
    rapidjson::ParseResult pr = valid_utf8(body) ? reader.Parse<flags>(ms, h)
                                                 : reader.Parse<flags | rapidjson::kParseValidateEncodingFlag>(ms, h);
    r.truncated = h.truncated;
    if (!pr) {
        if (!h.error.empty())
            r.error = h.error;
        else
            r.error = std::string("request body is not valid JSON: ") + rapidjson::GetParseError_En(pr.Code()) +
                      " at offset " + std::to_string(pr.Offset());
        r.body = std::string();  // give the memory back now, not when the 400 is sent
        return r;
    }
    r.ok = true;
    // A huge client model was dropped: do not hold its room for the whole call.
    if (r.body.capacity() > 2 * r.body.size() + 4096) r.body.shrink_to_fit();
    r.model_requested = std::move(h.model_requested);
    r.stream = h.stream;
    return r;
}

HeaderLint lint_header(std::string_view d, std::size_t& header_end) {
    const std::size_t n = d.size();
    for (std::size_t i = 0; i < n; ++i) {
        if (d[i] != '\n') continue;
        if (i == 0 || d[i - 1] != '\r') return HeaderLint::BareLf;
        if (i >= 3 && d[i - 2] == '\n' && d[i - 3] == '\r') {
            header_end = i + 1;
            return HeaderLint::Complete;
        }
        if (i + 1 < n && (d[i + 1] == ' ' || d[i + 1] == '\t')) return HeaderLint::ObsFold;
    }
    return HeaderLint::Incomplete;
}

namespace {
constexpr std::string_view kServed =
    "POST /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses, /v1/messages; GET /v1/models, "
    "/v1/models/{id}";
}  // namespace

RouteDecision decide_route(const RequestHead& h, std::size_t log_max) {
    RouteDecision d;
    auto target = normalise_target(h.target);
    if (target) {
        d.path = std::move(target->path);
        d.query = std::move(target->query);
    } else {
        d.path = std::string(h.target);
    }
    d.shape = shape_for(d.path, h.anthropic_client);

    // Framing the parser tolerates but a proxy must not (request smuggling).
    if (h.transfer_encoding_count > 1 ||
        (h.transfer_encoding_count == 1 && !iequals(trim(h.transfer_encoding), "chunked"))) {
        d.framing_status = 400;
        d.message = "Transfer-Encoding must be exactly \"chunked\" (sent once)";
        return d;
    }
    if (h.version == 11 && h.host_count != 1) {
        d.framing_status = 400;
        d.message = "an HTTP/1.1 request needs exactly one Host header";
        return d;
    }
    if (h.has_expect) {
        if (!iequals(trim(h.expect), "100-continue")) {
            d.framing_status = 417;
            d.message = "only \"Expect: 100-continue\" is supported";
            return d;
        }
        d.expect_continue = true;
    }

    if (!target) {
        d.route_status = 400;
        d.message = "request target must be a path such as /v1/chat/completions";
    } else if (!(d.endpoint = match_route(d.path, &d.model_id))) {
        d.route_status = 404;
        d.message = "no such endpoint: " + clip(h.method, 32) + " " + clip(d.path, log_max) +
                    "; inference.local serves " + std::string(kServed);
    } else {
        const bool is_get = *d.endpoint == Endpoint::Models || *d.endpoint == Endpoint::ModelById;
        if (h.method != (is_get ? "GET" : "POST")) {
            d.route_status = 405;
            d.message = clip(d.path, log_max) + " accepts " + (is_get ? "GET" : "POST") + " only";
            d.headers.emplace_back("allow", is_get ? "GET" : "POST");
        }
    }
    return d;
}

ServiceDecision decide_service(const RouteDecision& route, const Snapshot& snap, std::size_t log_max) {
    ServiceDecision d;
    if (route.route_status) {
        d.status = route.route_status;
        d.message = route.message;
        return d;
    }
    if (!snap.inference || !snap.provider) {
        d.status = 503;
        d.message = snap.route == kDefaultRoute
                        ? "no inference provider is configured on this node: an operator must run `redirctl "
                          "inference set --provider NAME --model MODEL`"
                        : "inference route " + clip(snap.route, log_max) +
                              " (named by this sandbox's policy) is not configured on this node: an operator must run "
                              "`redirctl inference set --route " + clip(snap.route, log_max) +
                              " --provider NAME --model MODEL`";
        return d;
    }
    const auto& p = *snap.provider;
    d.profile = find_profile(p.type);
    if (!d.profile) {
        d.status = 503;
        d.message = "provider " + p.name + " has an unknown type " + p.type;
        return d;
    }
    const Endpoint ep = *route.endpoint;
    if (!d.profile->serves(ep)) {
        d.status = 400;
        d.message = "provider " + p.name + " (type " + p.type + ") does not speak " +
                    std::string(endpoint_description(ep)) + " (" + std::string(endpoint_path(ep)) +
                    "); call an endpoint it serves or configure another provider with `redirctl inference set`";
    } else if (ep == Endpoint::ModelById && route.model_id != snap.inference->model) {
        d.status = 404;
        d.truncated = clipped(route.model_id, log_max);
        d.message = "model " + clip(route.model_id, log_max) + " is not served here; inference.local serves " +
                    snap.inference->model + " (requests for any model are answered by it)";
    }
    if (d.status) d.profile = nullptr;
    return d;
}

std::string body_budget_message(bool this_sandbox, std::uint64_t cap) {
    return std::string(this_sandbox ? "this sandbox's" : "all sandboxes'") + " request bodies in flight would pass " +
           std::to_string(cap) + " bytes: retry when earlier requests have finished";
}

ResponsePlan plan_response(int status, std::string_view ct, std::string_view ce,
                           std::optional<std::uint64_t> content_length, bool upstream_chunked) {
    ResponsePlan p;
    p.sse = ct.size() >= 17 && iequals(ct.substr(0, 17), "text/event-stream");
    ce = trim(ce);
    p.encoded = !ce.empty() && !iequals(ce, "identity");
    p.json_body = !p.sse && !p.encoded && ct.find("json") != std::string_view::npos;
    p.no_body = status / 100 == 1 || status == 204 || status == 304;
    if (p.no_body) return p;
    if (content_length && !upstream_chunked)
        p.content_length = content_length;
    else
        p.chunked = true;
    return p;
}

std::string credential_rejected_message(const Provider& provider) {
    return "provider " + provider.name +
           " rejected the credential configured for it: an operator must update it with `redirctl provider update " +
           provider.name + " --credential KEY=VALUE`";
}

std::string stream_error_event(ApiShape shape, std::string_view why) {
    return "event: error\ndata: " + error_json(shape, "api_error", why) + "\n\n";
}

namespace {
// The provider's credential entry the profile sends, or none.
const std::pair<const std::string, std::string>* credential_entry(const Profile& profile, const Provider& provider) {
    if (profile.auth == AuthStyle::None) return nullptr;
    for (auto k : profile.credential_keys) {
        auto it = provider.credentials.find(std::string(k));
        if (it != provider.credentials.end()) return &*it;
    }
    if (provider.credentials.size() == 1) return &*provider.credentials.begin();
    return nullptr;
}
}  // namespace

std::optional<std::string> pick_credential(const Profile& profile, const Provider& provider) {
    if (auto* e = credential_entry(profile, provider)) return e->second;
    return std::nullopt;
}

CredentialUse credential_use(const Profile& profile, const Provider& provider) {
    auto* e = credential_entry(profile, provider);
    if (!e) return {};
    return {profile.auth == AuthStyle::Bearer ? std::string("authorization") : std::string(profile.auth_header),
            e->first};
}

TokenSet connection_tokens(const HeaderList& headers) {
    TokenSet out;
    for (const auto& [n, v] : headers) {
        if (n != "connection") continue;
        std::string_view s = v;
        while (!s.empty()) {
            auto c = s.find(',');
            auto tok = trim(s.substr(0, c));
            if (!tok.empty()) out.insert(lower(tok));
            if (c == std::string_view::npos) break;
            s.remove_prefix(c + 1);
        }
    }
    return out;
}

bool client_header_matters(std::string_view n, const Profile& profile) {
    const auto& common = common_allowed_headers();
    return n == "connection" || n == "anthropic-beta" || std::find(common.begin(), common.end(), n) != common.end() ||
           std::find(profile.extra_headers.begin(), profile.extra_headers.end(), n) != profile.extra_headers.end();
}

HeaderList provider_headers(const Profile& profile, const Provider& provider) {
    HeaderList out;
    if (auto* e = credential_entry(profile, provider)) {
        if (profile.auth == AuthStyle::Bearer)
            out.emplace_back("authorization", "Bearer " + e->second);
        else
            out.emplace_back(std::string(profile.auth_header), e->second);
    }
    add_account_headers(out, provider);
    return out;
}

void each_upstream_header(const HeaderList& client, const Profile& profile, const HeaderList& fixed, HeaderSink emit,
                          void* ctx) {
    auto conn = connection_tokens(client);
    const auto& common = common_allowed_headers();
    auto passes = [&](std::string_view n) {
        // The billed organisation/project is the provider's choice, not the sandbox's.
        if (is_hop_by_hop(n) || conn.count(n) || is_credential_header(n) || is_account_header(n)) return false;
        return std::find(common.begin(), common.end(), n) != common.end() ||
               std::find(profile.extra_headers.begin(), profile.extra_headers.end(), n) != profile.extra_headers.end();
    };
    for (const auto& [n, v] : client)
        if (passes(n)) emit(ctx, n, v);
    for (const auto& [n, v] : fixed) emit(ctx, n, v);
    // A default goes out only when no header of its name did before it.
    std::uint64_t defaults_sent = 0;  // bit i: default_headers[i] went out
    auto sent = [&](std::string_view n) {
        for (const auto& [cn, cv] : client)
            if (cn == n && passes(cn)) return true;
        for (const auto& [fn, fv] : fixed)
            if (fn == n) return true;
        for (std::size_t i = 0; i < profile.default_headers.size() && i < 64; ++i)
            if ((defaults_sent >> i & 1) && profile.default_headers[i].first == n) return true;
        return false;
    };
    for (std::size_t i = 0; i < profile.default_headers.size() && i < 64; ++i) {
        const auto& [n, v] = profile.default_headers[i];
        if (sent(n)) continue;
        emit(ctx, n, v);
        defaults_sent |= std::uint64_t{1} << i;
    }
    // The body is always the re-serialised JSON.
    if (!sent("content-type")) emit(ctx, "content-type", "application/json");
    // An answer is charged from the usage it carries: a compressed one could
    // not be read, so a sandbox asking for gzip would go uncounted.
    emit(ctx, "accept-encoding", "identity");
}

HeaderList upstream_headers(const HeaderList& client, const Profile& profile, const Provider& provider) {
    HeaderList out;
    each_upstream_header(client, profile, provider_headers(profile, provider),
                         [&](std::string_view n, std::string_view v) { out.emplace_back(n, v); });
    return out;
}

bool relay_response_header(std::string_view n, const TokenSet& conn) {
    if (is_hop_by_hop(n) || conn.count(n)) return false;
    // The provider's cookies and its protocol advertisements describe the
    // provider's origin, not inference.local.
    static constexpr std::string_view dropped[] = {"set-cookie", "alt-svc", "proxy-authenticate",
                                                   "content-length", "strict-transport-security"};
    return std::find(std::begin(dropped), std::end(dropped), n) == std::end(dropped);
}

std::string upstream_target(const BaseUrl& base, const Profile& profile, const std::string& path,
                            const std::string& query) {
    std::pmr::string out;
    upstream_target(out, base, profile, path, query);
    return std::string(out);
}

void upstream_target(std::pmr::string& out, const BaseUrl& base, const Profile& profile, const std::string& path,
                     const std::string& query) {
    std::string_view p = path;
    if (profile.base_includes_version && p.rfind("/v1/", 0) == 0) p.remove_prefix(3);
    out.clear();
    out.reserve(base.path.size() + p.size() + (query.empty() ? 0 : query.size() + 1));
    out += base.path;
    out += p;
    // Only the profile's query parameters pass, in the client's order.
    bool first = true;
    std::string_view s = query;
    while (!s.empty()) {
        auto amp = s.find('&');
        auto part = s.substr(0, amp);
        auto eq = part.find('=');
        auto name = percent_decode(part.substr(0, eq));
        if (name && std::find(profile.query_params.begin(), profile.query_params.end(), *name) !=
                        profile.query_params.end()) {
            out += first ? '?' : '&';
            out += part;
            first = false;
        }
        if (amp == std::string_view::npos) break;
        s.remove_prefix(amp + 1);
    }
}

namespace {
void write_model(Writer& w, ApiShape shape, const InferenceConfig& cfg) {
    w.StartObject();
    if (shape == ApiShape::Anthropic) {
        key(w, "type");
        put(w, "model");
        key(w, "id");
        put(w, cfg.model);
        key(w, "display_name");
        put(w, cfg.model);
        key(w, "created_at");
        put(w, "1970-01-01T00:00:00Z");
    } else {
        key(w, "id");
        put(w, cfg.model);
        key(w, "object");
        put(w, "model");
        key(w, "created");
        w.Int(0);
        key(w, "owned_by");
        put(w, cfg.provider);
    }
    w.EndObject();
}
}  // namespace

std::string models_list_json(ApiShape shape, const InferenceConfig& cfg) {
    rapidjson::StringBuffer sb;
    Writer w(sb);
    w.StartObject();
    if (shape == ApiShape::OpenAI) {
        key(w, "object");
        put(w, "list");
    }
    key(w, "data");
    w.StartArray();
    write_model(w, shape, cfg);
    w.EndArray();
    if (shape == ApiShape::Anthropic) {
        key(w, "has_more");
        w.Bool(false);
        key(w, "first_id");
        put(w, cfg.model);
        key(w, "last_id");
        put(w, cfg.model);
    }
    w.EndObject();
    return std::string(sb.GetString(), sb.GetSize());
}

std::string model_json(ApiShape shape, const InferenceConfig& cfg) {
    rapidjson::StringBuffer sb;
    Writer w(sb);
    write_model(w, shape, cfg);
    return std::string(sb.GetString(), sb.GetSize());
}

namespace {

// The access-log line's own writer: the field names are fixed, so they go out
// as literals (no per-key work), and values are escaped a run at a time. The
// bytes are those rapidjson::Writer wrote for the same record (same escapes,
// same number formatting: rapidjson's own itoa/dtoa), which the tests check.
struct LineOut {
    std::string& s;

    void raw(std::string_view v) { s.append(v); }
    void str(std::string_view v) { append_json_string(s, v); }
    void u64(std::uint64_t v) {
        char b[20];
        s.append(b, static_cast<std::size_t>(rapidjson::internal::u64toa(v, b) - b));
    }
    void u32(unsigned v) {
        char b[10];
        s.append(b, static_cast<std::size_t>(rapidjson::internal::u32toa(v, b) - b));
    }
    void i32(int v) {
        char b[11];
        s.append(b, static_cast<std::size_t>(rapidjson::internal::i32toa(v, b) - b));
    }
    void dbl(double d) {
        if (rapidjson::internal::Double(d).IsNanOrInf()) return;  // rapidjson::Writer writes nothing either
        char b[25];
        s.append(b, static_cast<std::size_t>(rapidjson::internal::dtoa(d, b, 324) - b));
    }
    void boolean(bool b) { raw(b ? "true" : "false"); }
    // ,"KEY":"V" — optional fields are left out rather than written empty.
    void str_unless_empty(std::string_view key_with_quotes, std::string_view v) {
        if (v.empty()) return;
        raw(key_with_quotes);
        str(v);
    }
};

}  // namespace

void request_log_json(const RequestLog& r, std::string& out) {
    out.clear();
    LineOut w{out};
    w.raw(R"({"event":"inference","cgroup_id":)");
    w.u64(r.conn.cgroup_id);
    w.raw(R"(,"pid":)");
    w.u32(r.conn.pid);
    w.str_unless_empty(R"(,"client":)", r.conn.client);
    w.raw(R"(,"method":)");
    w.str(r.method);
    w.raw(R"(,"path":)");
    w.str(r.path);
    w.str_unless_empty(R"(,"route":)", r.route);
    w.raw(R"(,"provider":)");
    w.str(r.provider);
    w.str_unless_empty(R"(,"provider_type":)", r.provider_type);
    w.raw(R"(,"model_requested":)");
    w.str(r.model_requested);
    w.raw(R"(,"model_used":)");
    w.str(r.model_used);
    w.raw(R"(,"config_version":)");
    w.u64(r.config_version);
    w.raw(R"(,"status":)");
    w.i32(r.status);
    w.raw(R"(,"stream":)");
    w.boolean(r.stream);
    w.raw(R"(,"bytes_in":)");
    w.u64(r.bytes_in);
    w.raw(R"(,"bytes_out":)");
    w.u64(r.bytes_out);
    w.raw(R"(,"duration_ms":)");
    w.dbl(static_cast<double>(static_cast<int64_t>(r.duration_ms * 1000)) / 1000.0);
    if (r.usage.known()) {
        // Only what the provider reported: a side it left out is omitted, not 0.
        w.raw(R"(,"usage":{)");
        if (r.usage.input_tokens) {
            w.raw(R"("input_tokens":)");
            w.u64(*r.usage.input_tokens);
        }
        if (r.usage.output_tokens) {
            w.raw(r.usage.input_tokens ? R"(,"output_tokens":)" : R"("output_tokens":)");
            w.u64(*r.usage.output_tokens);
        }
        w.raw("}");
    }
    if (r.credential) {
        // Whether the sandbox's request left with the provider's credential,
        // named by header and key: the value never enters a record.
        w.raw(R"(,"credential":)");
        w.str(r.credential->header.empty() ? "none" : "injected");
        w.str_unless_empty(R"(,"credential_header":)", r.credential->header);
        w.str_unless_empty(R"(,"credential_key":)", r.credential->key);
    }
    w.str_unless_empty(R"(,"error":)", r.error);
    w.raw("}");
}

std::string request_log_json(const RequestLog& r) {
    std::string out;
    out.reserve(512);
    request_log_json(r, out);
    return out;
}

std::string_view request_log_line(const RequestLog& r) {
    thread_local std::string line = [] {
        std::string s;
        s.reserve(1024);
        return s;
    }();
    request_log_json(r, line);
    return line;
}

}  // namespace redir::terminator
