#pragma once
// rewrite_model as it was before session 8 replaced it with a scanner that
// copies the client's bytes and splices only what changes: a rapidjson
// Reader (iterative, in situ, numbers as text) driving a Writer, every token
// re-serialised. Kept as the reference the new rewrite is compared with
// (tests/unit/terminator/rewrite_diff_test.cpp, the model_rewrite fuzzer,
// bench_terminator_json's "old" side): the same verdicts and error
// sentences, the same FetchScanner findings, and a body that reads back to
// the same JSON (this one's bytes are that JSON written compactly).
#include <rapidjson/error/en.h>
#include <rapidjson/memorystream.h>
#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <memory_resource>
#include <set>
#include <string>
#include <string_view>

#include "terminator/limits.hpp"
#include "terminator/provider_fetch.hpp"
#include "terminator/request.hpp"

namespace redir::terminator::reference {

namespace rewrite_detail {

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
inline bool word_needs_escape(std::uint64_t w) {
    constexpr std::uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    auto has_zero = [&](std::uint64_t x) { return ((x - ones) & ~x & highs) != 0; };
    const bool below_space = ((w - ones * 0x20) & ~w & highs) != 0;  // some byte < 0x20
    return below_space || has_zero(w ^ (ones * '"')) || has_zero(w ^ (ones * '\\'));
}

inline void append_json_string(std::string& s, std::string_view v) {
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
inline bool valid_utf8(std::string_view s) {
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


}  // namespace rewrite_detail

inline RewriteResult rewrite_model(std::string_view body, std::string_view model, std::size_t log_max = kLogStringMax,
                                   bool force_usage = false, FetchScanner* scan = nullptr) {
    using namespace rewrite_detail;
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

// BODY read by rapidjson and written again compactly (numbers as their text),
// or "<not JSON>": what the rewrite's output must read back to (the
// reference's bytes are exactly this for the same JSON).
inline std::string read_back(std::string_view body) {
    struct Raw : rapidjson::Writer<rapidjson::StringBuffer> {
        using Writer::Writer;
        bool RawNumber(const char* s, rapidjson::SizeType n, bool) { return RawValue(s, n, rapidjson::kNumberType); }
    };
    rapidjson::StringBuffer sb;
    Raw w(sb);
    rapidjson::MemoryStream ms(body.data(), body.size());
    rapidjson::Reader reader;
    if (reader.Parse<rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag>(ms, w).IsError())
        return "<not JSON>";
    return std::string(sb.GetString(), sb.GetSize());
}

}  // namespace redir::terminator::reference
