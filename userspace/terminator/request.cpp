#include "terminator/request.hpp"

#include "terminator/provider_fetch.hpp"
#include "terminator/wire.hpp"

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
#include <bit>
#include <cctype>
#include <cstring>
#include <ctime>
#include <memory>
#include <memory_resource>
#include <set>
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

// The length of the UTF-8 sequence at P (its first byte >= 0x80), 0 when it
// is not strict UTF-8 (RFC 3629: no overlongs, surrogates or code points past
// U+10FFFF): the same DFA rapidjson's kParseValidateEncodingFlag applies.
std::size_t utf8_sequence(const unsigned char* p, const unsigned char* e) {
    auto cont = [](unsigned char c, unsigned char lo = 0x80, unsigned char hi = 0xBF) { return c >= lo && c <= hi; };
    const unsigned char c = *p;
    if (c >= 0xC2 && c <= 0xDF) return e - p >= 2 && cont(p[1]) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF)
        return e - p >= 3 && cont(p[1], c == 0xE0 ? 0xA0 : 0x80, c == 0xED ? 0x9F : 0xBF) && cont(p[2]) ? 3 : 0;
    if (c >= 0xF0 && c <= 0xF4)
        return e - p >= 4 && cont(p[1], c == 0xF0 ? 0x90 : 0x80, c == 0xF4 ? 0x8F : 0xBF) && cont(p[2]) &&
                       cont(p[3])
                   ? 4
                   : 0;
    return 0;
}

// Strict UTF-8 over a whole body, with an ASCII fast path.
bool valid_utf8(std::string_view s) {
    const auto* p = reinterpret_cast<const unsigned char*>(s.data());
    const auto* e = p + s.size();
    while (p < e) {
        if (e - p >= 8) {
            std::uint64_t w;
            std::memcpy(&w, p, 8);
            if (!(w & 0x8080808080808080ull)) {
                p += 8;
                continue;
            }
        }
        if (*p < 0x80) {
            ++p;
            continue;
        }
        const std::size_t n = utf8_sequence(p, e);
        if (!n) return false;
        p += n;
    }
    return true;
}

template <class W>
void put(W& w, std::string_view s) { w.String(s.data(), static_cast<rapidjson::SizeType>(s.size())); }
template <class W>
void key(W& w, std::string_view s) { w.Key(s.data(), static_cast<rapidjson::SizeType>(s.size())); }

// ---- The request body rewrite
//
// The client's body is checked as JSON exactly as rapidjson's Reader checks
// it (the parser this rewrite replaced: iterative, numbers as text, strings
// UTF-8) and copied as it came, a run of bytes at a time: only the top-level
// "model" value, a missing "model" member and, with force_usage,
// stream_options are written by the rewrite. A refused body is parsed once
// more by rapidjson, for the sentence its 400 has always given (refusal_reason).

constexpr std::uint64_t kOnes = 0x0101010101010101ull;
constexpr std::uint64_t kHighs = 0x8080808080808080ull;
// SWAR marks: the high bit of each byte of W that is a mark. The lowest one
// is exact (a borrow only spoils bits above a true mark), which is all that
// is read.
constexpr std::uint64_t zero_bytes(std::uint64_t x) { return (x - kOnes) & ~x & kHighs; }
constexpr std::uint64_t bytes_equal(std::uint64_t w, unsigned char c) { return zero_bytes(w ^ (kOnes * c)); }
// Where a string's plain text stops: its closing quote, an escape, a control
// byte (refused) or a non-ASCII byte (checked as UTF-8).
constexpr std::uint64_t string_marks(std::uint64_t w) {
    return bytes_equal(w, '"') | bytes_equal(w, '\\') | ((w - kOnes * 0x20) & ~w & kHighs) | (w & kHighs);
}
constexpr bool is_string_mark(unsigned char c) { return c == '"' || c == '\\' || c < 0x20 || c >= 0x80; }

bool is_json_ws(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

const char* skip_json_ws(const char* p, const char* e) {
    while (p < e && is_json_ws(*p)) ++p;
    return p;
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}
// The four hex digits at P (E - P >= 4 checked by the caller), -1 when not hex.
int hex4(const char* p) {
    int v = 0;
    for (int i = 0; i < 4; ++i) {
        const int d = hex_digit(p[i]);
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

// The escape at P ('\\'): where it ends, or null when rapidjson refuses it
// (an unknown escape, a bad \u, a high surrogate without its low half; a
// lone low surrogate passes, as it does there).
const char* escape_end(const char* p, const char* e) {
    if (e - p < 2) return nullptr;
    switch (p[1]) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            return p + 2;
        case 'u': break;
        default: return nullptr;
    }
    if (e - p < 6) return nullptr;
    const int cp = hex4(p + 2);
    if (cp < 0) return nullptr;
    p += 6;
    if (cp < 0xD800 || cp > 0xDBFF) return p;
    if (e - p < 6 || p[0] != '\\' || p[1] != 'u') return nullptr;
    const int lo = hex4(p + 2);
    if (lo < 0xDC00 || lo > 0xDFFF) return nullptr;
    return p + 6;
}

// The first byte in [P, E) a string scan stops at, or E.
const char* find_string_mark(const char* p, const char* e) {
    if constexpr (std::endian::native == std::endian::little) {
        for (; e - p >= 8; p += 8) {
            std::uint64_t w;
            std::memcpy(&w, p, 8);
            if (const std::uint64_t m = string_marks(w)) return p + (std::countr_zero(m) >> 3);
        }
    }
    while (p < e && !is_string_mark(static_cast<unsigned char>(*p))) ++p;
    return p;
}

// A string's text from P (after its opening quote): its closing quote, or
// null when it is not a JSON string rapidjson takes. ESCAPED is set when the
// text holds an escape (its bytes are then not its value).
const char* string_end(const char* p, const char* e, bool& escaped) {
    for (;;) {
        p = find_string_mark(p, e);
        if (p == e) return nullptr;
        const auto c = static_cast<unsigned char>(*p);
        if (c == '"') return p;
        if (c == '\\') {
            escaped = true;
            if (!(p = escape_end(p, e))) return nullptr;
        } else if (c < 0x20) {
            return nullptr;  // a raw control byte (NUL included: the input ends there)
        } else {
            const std::size_t n = utf8_sequence(reinterpret_cast<const unsigned char*>(p),
                                                reinterpret_cast<const unsigned char*>(e));
            if (!n) return nullptr;
            p += n;
        }
    }
}

// Appends the value of a checked string's text RAW to OUT: escapes decoded
// as rapidjson decodes them (UTF-8; a lone low surrogate as its three bytes).
template <class S>
void append_decoded(S& out, std::string_view raw) {
    const char* p = raw.data();
    const char* const e = p + raw.size();
    while (p < e) {
        const char* bs = static_cast<const char*>(std::memchr(p, '\\', static_cast<std::size_t>(e - p)));
        if (!bs) bs = e;
        out.append(p, static_cast<std::size_t>(bs - p));
        if (bs == e) break;
        p = bs + 2;
        switch (bs[1]) {
            case 'b': out.push_back('\b'); continue;
            case 'f': out.push_back('\f'); continue;
            case 'n': out.push_back('\n'); continue;
            case 'r': out.push_back('\r'); continue;
            case 't': out.push_back('\t'); continue;
            case 'u': break;
            default: out.push_back(bs[1]); continue;  // '"', '\\', '/'
        }
        unsigned cp = static_cast<unsigned>(hex4(p));
        p += 4;
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            cp = (((cp - 0xD800) << 10) | (static_cast<unsigned>(hex4(p + 2)) - 0xDC00)) + 0x10000;
            p += 6;
        }
        char u[4];
        std::size_t n;
        if (cp <= 0x7F) {
            u[0] = static_cast<char>(cp);
            n = 1;
        } else if (cp <= 0x7FF) {
            u[0] = static_cast<char>(0xC0 | (cp >> 6));
            u[1] = static_cast<char>(0x80 | (cp & 0x3F));
            n = 2;
        } else if (cp <= 0xFFFF) {
            u[0] = static_cast<char>(0xE0 | (cp >> 12));
            u[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            u[2] = static_cast<char>(0x80 | (cp & 0x3F));
            n = 3;
        } else {
            u[0] = static_cast<char>(0xF0 | (cp >> 18));
            u[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            u[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            u[3] = static_cast<char>(0x80 | (cp & 0x3F));
            n = 4;
        }
        out.append(u, n);
    }
}

using Pool = rapidjson::MemoryPoolAllocator<>;
using PoolReader = rapidjson::GenericReader<rapidjson::UTF8<>, rapidjson::UTF8<>, Pool>;

// Whether rapidjson takes the number [S, E) (already of JSON's grammar). It
// refuses some by value: a positive exponent past 308 plus the fraction
// digits it counted, an integer part past about 1e308. Only numbers that can
// be such are asked (rare in a request): the answer is rapidjson's own.
bool rapidjson_takes_number(const char* s, const char* e) {
    alignas(16) char room[1024];
    Pool pool(room, sizeof(room));
    PoolReader reader(&pool);
    rapidjson::BaseReaderHandler<> h;
    rapidjson::MemoryStream ms(s, static_cast<std::size_t>(e - s));
    return !reader.Parse<rapidjson::kParseNumbersAsStringsFlag>(ms, h).IsError();
}

// A number from P ('-' or a digit): where it ends, or null.
const char* number_end(const char* p, const char* e) {
    const char* const s = p;
    if (*p == '-') ++p;
    if (p == e || !is_digit(*p)) return nullptr;
    const char* const digits = p;
    if (*p == '0')
        ++p;
    else
        while (p < e && is_digit(*p)) ++p;
    const bool long_integer = p - digits >= 20;  // past 2^64: rapidjson goes on in a double
    if (p < e && *p == '.') {
        ++p;
        if (p == e || !is_digit(*p)) return nullptr;
        while (p < e && is_digit(*p)) ++p;
    }
    bool positive_exponent = false;
    if (p < e && (*p == 'e' || *p == 'E')) {
        ++p;
        positive_exponent = true;
        if (p < e && (*p == '+' || *p == '-')) positive_exponent = *p++ == '+';
        if (p == e || !is_digit(*p)) return nullptr;
        while (p < e && is_digit(*p)) ++p;
    }
    if ((long_integer || positive_exponent) && !rapidjson_takes_number(s, p)) return nullptr;
    return p;
}

const char* literal_end(const char* p, const char* e, std::string_view lit) {
    if (static_cast<std::size_t>(e - p) < lit.size() || std::memcmp(p, lit.data(), lit.size()) != 0) return nullptr;
    return p + lit.size();
}

// Which containers are open (a bit each: array or object), at any depth:
// 512 levels in place, deeper ones on the heap.
class Nesting {
public:
    std::size_t depth() const { return depth_; }
    bool top_is_array() const { return bits_[(depth_ - 1) >> 6] >> ((depth_ - 1) & 63) & 1; }
    void push(bool array) {
        if (depth_ == cap_) grow();
        const std::uint64_t bit = std::uint64_t{1} << (depth_ & 63);
        auto& word = bits_[depth_ >> 6];
        word = array ? word | bit : word & ~bit;
        ++depth_;
    }
    void pop() { --depth_; }

private:
    void grow() {
        heap_.resize(std::max<std::size_t>(2 * (cap_ >> 6), 16));
        if (bits_ == room_) std::memcpy(heap_.data(), room_, sizeof(room_));
        bits_ = heap_.data();
        cap_ = heap_.size() * 64;
    }
    std::uint64_t room_[8];  // each bit is written when its level opens
    std::vector<std::uint64_t> heap_;
    std::uint64_t* bits_ = room_;
    std::size_t cap_ = sizeof(room_) * 8;
    std::size_t depth_ = 0;
};

// The top-level keys seen so far: a usual request's few compared in place,
// a long list in a tree (no hash a client could aim collisions at).
class KeySet {
public:
    bool insert(std::string_view k) {
        if (tree_.empty()) {
            for (std::size_t i = 0; i < n_; ++i)
                if (few_[i].size == k.size() && std::memcmp(few_[i].data, k.data(), k.size()) == 0) return false;
            if (n_ < kFew) {
                few_[n_++] = {k.data(), k.size()};
                return true;
            }
            for (std::size_t i = 0; i < n_; ++i) tree_.emplace(few_[i].data, few_[i].size);
        }
        return tree_.insert(k).second;
    }

private:
    static constexpr std::size_t kFew = 16;
    struct Few {  // not a string_view: left unwritten until used
        const char* data;
        std::size_t size;
    };
    std::size_t n_ = 0;
    Few few_[kFew];
    std::set<std::string_view> tree_;
};

// Bytes of S as append_json_string writes it (quotes included).
std::size_t json_string_size(std::string_view s) {
    std::size_t n = 2 + s.size();
    for (const char ch : s) {
        const char e = kJsonEscape[static_cast<unsigned char>(ch)];
        n += e == 'u' ? 5 : e ? 1 : 0;
    }
    return n;
}

constexpr std::string_view kIncludeUsageTrue = R"("include_usage":true)";

// One pass over the body: checked token by token, copied a run at a time
// into OUT (from COPIED up to where an edit is), the FetchScanner fed the
// events of what leaves. False: the body is not one rapidjson takes, or it
// repeats a top-level key (refusal_reason says which and where).
class BodySplice {
public:
    BodySplice(std::string_view body, std::string& out, std::string_view model, std::size_t log_max,
               bool force_usage, FetchScanner* scan)
        : e_(body.data() + body.size()), out_(out), model_(model), log_max_(log_max), force_usage_(force_usage),
          scan_(scan), p_(body.data()) {}

    bool run();

    std::string model_requested;
    bool stream = false;
    bool truncated = false;

private:
    // What the value after a key of interest is (at the top level, and in
    // the client's stream_options object when the rewrite sets include_usage).
    enum class Next : std::uint8_t { Plain, Model, Stream, StreamOptions, DropIncludeUsage };

    void flush_to(const char* p) {
        out_.append(copied_, static_cast<std::size_t>(p - copied_));
        copied_ = p;
    }
    void skip_to(const char* p) { copied_ = p; }
    void put_model() { append_json_string(out_, model_); }

    bool muted() const { return mute_ != 0; }
    // The scanner's events, until it has its finding (every handler then says false).
    bool scanning() const { return scan_ && !muted(); }
    void scanned(bool more) {
        if (!more) scan_ = nullptr;
    }
    void scan_key(std::string_view k) { scanned(scan_->Key(k.data(), static_cast<unsigned>(k.size()))); }
    void scan_include_usage() {
        scan_key("include_usage");
        scanned(scan_->Bool(true));
    }
    void scan_stream_options_object() {
        scanned(scan_->StartObject());
        if (scan_) scan_include_usage();
        if (scan_) scanned(scan_->EndObject());
    }
    // The text of a string whose raw text is RAW: RAW itself, or decoded
    // into SCRATCH (into the key arena when KEEP: the key set holds it).
    std::string_view text(std::string_view raw, bool escaped, bool keep) {
        if (!escaped) return raw;
        scratch_.clear();
        append_decoded(scratch_, raw);
        if (!keep) return scratch_;
        auto* copy = static_cast<char*>(arena_.allocate(scratch_.size() + 1, 1));
        std::memcpy(copy, scratch_.data(), scratch_.size());
        return {copy, scratch_.size()};
    }

    bool key(const char* quote);
    bool value(bool& more);
    void value_end(const char* end, bool dropped);
    void close(const char* bracket);

    const char* const e_;
    std::string& out_;
    const std::string_view model_;
    const std::size_t log_max_;
    const bool force_usage_;
    FetchScanner* scan_;
    const char* p_;        // the next byte to read
    const char* copied_;   // the body up to here is in out_ (or was dropped)
    Nesting nest_;
    std::size_t mute_ = 0;  // inside a dropped value that opened at this depth; 0: none
    Next next_ = Next::Plain;
    bool saw_model_ = false;
    bool saw_stream_options_ = false;
    bool in_stream_options_ = false;     // inside the client's stream_options object (depth 2)
    std::size_t stream_options_members_ = 0;  // of it, kept
    std::size_t top_members_ = 0;
    const char* top_end_ = nullptr;  // the end of the last top-level member (after '{' before the first)
    KeySet keys_;
    alignas(16) std::byte arena_room_[1024];
    std::pmr::monotonic_buffer_resource arena_{arena_room_, sizeof(arena_room_)};
    std::pmr::string scratch_{&arena_};
};

// A key from its opening quote, with its ':' and the whitespace up to the value.
bool BodySplice::key(const char* quote) {
    if (quote == e_ || *quote != '"') return false;
    bool escaped = false;
    const char* const close = string_end(quote + 1, e_, escaped);
    if (!close) return false;
    const std::string_view raw(quote + 1, static_cast<std::size_t>(close - quote - 1));
    p_ = skip_json_ws(close + 1, e_);
    if (p_ == e_ || *p_ != ':') return false;
    p_ = skip_json_ws(p_ + 1, e_);
    if (muted()) return true;
    const std::size_t depth = nest_.depth();
    if (depth == 1) {
        const std::string_view k = text(raw, escaped, true);
        if (!keys_.insert(k)) return false;  // a repeated top-level key
        ++top_members_;
        if (k == "model") {
            // The configured model, where the client's stood.
            saw_model_ = true;
            next_ = Next::Model;
            if (scan_) {
                scan_key("model");
                if (scan_) scanned(scan_->String(model_.data(), static_cast<unsigned>(model_.size())));
            }
            return true;
        }
        if (k == "stream") {
            next_ = Next::Stream;
        } else if (force_usage_ && k == "stream_options") {
            saw_stream_options_ = true;
            next_ = Next::StreamOptions;
        }
        if (scan_) scan_key(k);
        return true;
    }
    if (depth == 2 && in_stream_options_) {
        // The client's object is written again member by member: its
        // include_usage members are left out, one true one ends it.
        const std::string_view k = text(raw, escaped, false);
        skip_to(quote);
        if (k == "include_usage") {
            next_ = Next::DropIncludeUsage;
            return true;
        }
        if (stream_options_members_++) out_.push_back(',');
        if (scan_) scan_key(k);
        return true;
    }
    if (scan_) scan_key(text(raw, escaped, false));
    return true;
}

// The end of a value (scalar or container) at the current depth.
void BodySplice::value_end(const char* end, bool dropped) {
    if (dropped) {
        skip_to(end);
    } else if (muted()) {
        return;
    } else if (nest_.depth() == 2 && in_stream_options_) {
        flush_to(end);  // a kept member of the client's stream_options
    }
    if (nest_.depth() == 1) top_end_ = end;
}

// The value at p_. MORE: it opened a container that holds something (an
// object's first key read): its first value comes next.
bool BodySplice::value(bool& more) {
    more = false;
    if (p_ == e_) return false;
    const char c = *p_;
    Next next = muted() ? Next::Plain : next_;
    next_ = Next::Plain;
    bool drop = false;
    switch (next) {
        case Next::Model:
            flush_to(p_);
            put_model();
            drop = true;
            break;
        case Next::StreamOptions:
            if (c == '{') break;
            // Anything but an object is replaced by {"include_usage":true}.
            flush_to(p_);
            out_ += '{';
            out_ += kIncludeUsageTrue;
            out_ += '}';
            if (scan_) scan_stream_options_object();
            drop = true;
            break;
        case Next::DropIncludeUsage:
            drop = true;
            break;
        default:
            break;
    }
    if (c == '{' || c == '[') {
        nest_.push(c == '[');
        if (drop) {
            if (!muted()) mute_ = nest_.depth();
        } else if (scanning()) {
            scanned(c == '[' ? scan_->StartArray() : scan_->StartObject());
        }
        if (next == Next::StreamOptions && !drop) {
            in_stream_options_ = true;
            stream_options_members_ = 0;
            flush_to(p_ + 1);
        }
        p_ = skip_json_ws(p_ + 1, e_);
        if (p_ < e_ && *p_ == (c == '[' ? ']' : '}')) {
            close(p_);
            return true;
        }
        more = true;
        return c == '[' || key(p_);
    }
    const char* const start = p_;
    const char* end;
    if (c == '"') {
        bool escaped = false;
        const char* const close = string_end(p_ + 1, e_, escaped);
        if (!close) return false;
        end = close + 1;
        const std::string_view raw(start + 1, static_cast<std::size_t>(close - start - 1));
        if (next == Next::Model) {
            // Only a clipped copy: the client's model string is for the log.
            const std::string_view m = text(raw, escaped, false);
            model_requested = clip(m, log_max_);
            truncated |= m.size() > log_max_;
        } else if (!drop && scanning()) {
            // Most strings are text the scanner does not read: not decoded for it.
            if (!escaped) {
                scanned(scan_->String(raw.data(), static_cast<unsigned>(raw.size())));
            } else if (scan_->reads_string()) {
                const std::string_view v = text(raw, true, false);
                scanned(scan_->String(v.data(), static_cast<unsigned>(v.size())));
            } else {
                scanned(scan_->Null());  // counted as a value, as String would
            }
        }
    } else if (c == '-' || is_digit(c)) {
        if (!(end = number_end(p_, e_))) return false;
        if (!drop && scanning()) scanned(scan_->RawNumber(start, static_cast<unsigned>(end - start), true));
    } else if (c == 't' || c == 'f') {
        if (!(end = literal_end(p_, e_, c == 't' ? "true" : "false"))) return false;
        if (next == Next::Stream) stream = c == 't';
        if (!drop && scanning()) scanned(scan_->Bool(c == 't'));
    } else if (c == 'n') {
        if (!(end = literal_end(p_, e_, "null"))) return false;
        if (!drop && scanning()) scanned(scan_->Null());
    } else {
        return false;
    }
    p_ = end;
    value_end(end, drop);
    return true;
}

// The container closing at BRACKET (checked to match).
void BodySplice::close(const char* bracket) {
    const bool array = nest_.top_is_array();
    const std::size_t depth = nest_.depth();
    p_ = bracket + 1;
    if (muted()) {
        nest_.pop();
        if (depth == mute_) {
            mute_ = 0;
            value_end(p_, true);
        }
        return;
    }
    if (depth == 2 && in_stream_options_) {
        skip_to(bracket);
        if (stream_options_members_) out_.push_back(',');
        out_ += kIncludeUsageTrue;
        in_stream_options_ = false;
        if (scan_) scan_include_usage();
    } else if (depth == 1) {
        // What the client left out goes after its last member.
        flush_to(top_end_);
        if (!saw_model_) {
            if (top_members_) out_.push_back(',');
            out_ += R"("model":)";
            put_model();
            ++top_members_;
            if (scan_) {
                scan_key("model");
                if (scan_) scanned(scan_->String(model_.data(), static_cast<unsigned>(model_.size())));
            }
        }
        if (force_usage_ && stream && !saw_stream_options_) {
            out_ += R"(,"stream_options":{)";
            out_ += kIncludeUsageTrue;
            out_ += '}';
            if (scan_) {
                scan_key("stream_options");
                if (scan_) scan_stream_options_object();
            }
        }
    }
    if (scan_) scanned(array ? scan_->EndArray() : scan_->EndObject());
    nest_.pop();
    value_end(p_, false);
}

bool BodySplice::run() {
    p_ = skip_json_ws(p_, e_);
    if (p_ == e_ || *p_ != '{') return false;  // not an object (or not JSON)
    copied_ = p_;
    top_end_ = p_ + 1;
    bool more = true;  // a value is next
    while (more || nest_.depth() != 0) {
        if (more) {
            if (!value(more)) return false;
            continue;
        }
        // After a value: a separator and the next member, or the container's end.
        p_ = skip_json_ws(p_, e_);
        if (p_ == e_) return false;
        const bool array = nest_.top_is_array();
        if (*p_ == (array ? ']' : '}')) {
            close(p_);
            continue;
        }
        if (*p_ != ',') return false;
        p_ = skip_json_ws(p_ + 1, e_);
        if (!array && !key(p_)) return false;
        more = true;
    }
    // One document: only whitespace after it (a NUL ends the input, as it did for rapidjson).
    const char* const end = p_;
    p_ = skip_json_ws(p_, e_);
    if (p_ != e_ && *p_ != '\0') return false;
    flush_to(end);
    return true;
}

// Why rapidjson refuses BODY, in the words the 400 has always used: the
// parse the rewrite made before (in situ, strings checked as UTF-8 when the
// body is not), with the two refusals its handler added — a first value that
// is not an object, a repeated top-level key — where that parse met them.
// TRUNCATED: client text was clipped (that key, or a long model string met
// before the refusal, as that handler counted it).
struct RefusalReason : rapidjson::BaseReaderHandler<rapidjson::UTF8<>, RefusalReason> {
    explicit RefusalReason(std::size_t lm) : log_max(lm) {}
    std::size_t log_max;
    int depth = 0;
    bool started = false;
    bool next_is_model = false;
    std::set<std::string, std::less<>> keys;
    std::string error;
    bool truncated = false;

    bool value(bool container) {
        next_is_model = false;
        if (started) return true;
        started = true;
        if (!container) error = "request body must be a JSON object";
        return container;
    }
    bool Default() { return value(false); }
    bool RawNumber(const char*, rapidjson::SizeType, bool) { return value(false); }
    bool String(const char*, rapidjson::SizeType n, bool) {
        if (depth == 1 && next_is_model) truncated |= n > log_max;
        return value(false);
    }
    bool StartObject() {
        if (!value(true)) return false;
        ++depth;
        return true;
    }
    bool Key(const char* s, rapidjson::SizeType n, bool) {
        if (depth != 1) return true;
        const std::string_view k(s, n);
        if (!keys.emplace(k).second) {
            truncated |= k.size() > log_max;
            error = "request body repeats the top-level key \"" + clip(k, log_max) + "\"";
            return false;
        }
        next_is_model = k == "model";
        return true;
    }
    bool EndObject(rapidjson::SizeType) {
        --depth;
        return true;
    }
    bool StartArray() {
        if (!value(true)) return false;
        if (depth == 0) {
            error = "request body must be a JSON object";
            return false;
        }
        ++depth;
        return true;
    }
    bool EndArray(rapidjson::SizeType) {
        --depth;
        return true;
    }
};

[[gnu::noinline, gnu::cold]] std::string refusal_reason(std::string_view body, std::size_t log_max, bool& truncated) {
    RefusalReason h(log_max);
    // The parser's pool holds the copy parsed in situ and its state stack.
    alignas(16) char reader_room[8192];
    Pool pool(reader_room, sizeof(reader_room), std::max<std::size_t>(64 << 10, body.size() + 4096));
    PoolReader reader(&pool);
    char* text = static_cast<char*>(pool.Malloc(body.size() + 1));
    std::memcpy(text, body.data(), body.size());
    text[body.size()] = '\0';
    rapidjson::InsituStringStream ms(text);
    constexpr unsigned flags =
        rapidjson::kParseIterativeFlag | rapidjson::kParseNumbersAsStringsFlag | rapidjson::kParseInsituFlag;
    const rapidjson::ParseResult pr = valid_utf8(body)
                                          ? reader.Parse<flags>(ms, h)
                                          : reader.Parse<flags | rapidjson::kParseValidateEncodingFlag>(ms, h);
    truncated = h.truncated;
    if (!h.error.empty()) return h.error;
    if (pr.IsError())
        return std::string("request body is not valid JSON: ") + rapidjson::GetParseError_En(pr.Code()) +
               " at offset " + std::to_string(pr.Offset());
    // Not reached: the splice refuses only what rapidjson refuses (the
    // differential tests hold it to that). Refused all the same.
    return "request body is not valid JSON";
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
        int a = hex_digit(s[i + 1]), b = hex_digit(s[i + 2]);
        if (a < 0 || b < 0) return std::nullopt;
        out += static_cast<char>(a * 16 + b);
        i += 2;
    }
    return out;
}

std::string_view ReusedHeaders::lowered(std::string_view name) {
    name_.assign(name);
    for (char& c : name_) c = wire::ascii_lower(c);  // bytes >= 0x80 unchanged, as tolower's C locale
    return name_;
}

std::size_t ReusedHeaders::put(std::size_t i, std::string_view value) {
    if (i == list_.size()) list_.emplace_back();
    auto& [n, v] = list_[i];
    n.assign(name_);
    v.assign(value);
    return n.capacity() + v.capacity();
}

void ReusedHeaders::release_if_large() {
    if (name_.capacity() > kKeepBytes) std::string().swap(name_);
    // bytes_ was summed by fill: no walk over the list here.
    if (list_.capacity() > kKeepEntries || bytes_ > kKeepBytes) {
        HeaderList().swap(list_);
        bytes_ = 0;
    }
}

namespace {
// Whether origin-form T is already what normalise_target makes of it (a
// usual request's target): "/" then segments, none empty, "." or "..", no
// query, no fragment. One pass, no segment list.
bool already_normal(std::string_view t) {
    if (t.size() < 2 || t[0] != '/') return false;
    std::size_t seg = 1;  // where the current segment starts
    for (std::size_t i = 1; i <= t.size(); ++i) {
        const char c = i < t.size() ? t[i] : '/';
        if (c == '?' || c == '#') return false;
        if (c != '/') continue;
        const std::size_t len = i - seg;
        if (len == 0 || (t[seg] == '.' && (len == 1 || (len == 2 && t[seg + 1] == '.')))) return false;
        seg = i + 1;
    }
    return true;
}
}  // namespace

std::optional<Target> normalise_target(std::string_view t) {
    if (t.empty()) return std::nullopt;
    if (already_normal(t)) return Target{std::string(t), {}};
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
    // The body grows only by what the rewrite writes: the configured model
    // (in the client's stead, or as a member of its own) and, with
    // force_usage, stream_options (at most ,"stream_options":{"include_usage":true}).
    // Reserved at once, the body is never grown and copied.
    constexpr std::size_t kModelMember = sizeof(R"(,"model":)") - 1;
    constexpr std::size_t kStreamOptions = sizeof(R"(,"stream_options":{"include_usage":true})") - 1;
    r.body.reserve(body.size() + kModelMember + json_string_size(model) + (force_usage ? kStreamOptions : 0));
    BodySplice splice(body, r.body, model, log_max, force_usage, scan);
    if (!splice.run()) {
        r.error = refusal_reason(body, log_max, r.truncated);
        // The memory back now, not when the 400 is sent (assigning an empty
        // string would keep the room: libstdc++ copies a short string in).
        std::string().swap(r.body);
        return r;
    }
    r.ok = true;
    r.truncated = splice.truncated;
    // A huge client model was dropped: do not hold its room for the whole call.
    if (r.body.capacity() > 2 * r.body.size() + 4096) r.body.shrink_to_fit();
    r.model_requested = std::move(splice.model_requested);
    r.stream = splice.stream;
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
// as literals (no per-key work), and values are escaped a word at a time. The
// bytes are those rapidjson::Writer wrote for the same record (same escapes,
// same number formatting: rapidjson's own itoa, and its dtoa where the
// duration's fixed format would not be its output), which the tests check.
// The line is written into a buffer sized for it at once (log_line_bound):
// no growth check per piece.

// Bytes of the line for R at most: the names, each string escaped at worst
// (six bytes a byte, and its quotes), each number at its longest.
std::size_t log_line_bound(const RequestLog& r) {
    const std::size_t strings = r.conn.client.size() + r.method.size() + r.path.size() + r.route.size() +
                                r.provider.size() + r.provider_type.size() + r.model_requested.size() +
                                r.model_used.size() + r.error.size() +
                                (r.credential ? r.credential->header.size() + r.credential->key.size() + 8 : 0);
    constexpr std::size_t kNames = 512;  // every name, separator and brace, with room to spare
    constexpr std::size_t kStrings = 14;  // quotes of every string field
    constexpr std::size_t kNumbers = 8 * 20 + 32;
    return kNames + 2 * kStrings + 6 * strings + kNumbers;
}

class LineOut {
public:
    explicit LineOut(char* o) : o_(o) {}
    char* end() const { return o_; }

    template <std::size_t N>
    void raw(const char (&lit)[N]) {
        std::memcpy(o_, lit, N - 1);
        o_ += N - 1;
    }
    void raw(std::string_view v) {
        std::memcpy(o_, v.data(), v.size());
        o_ += v.size();
    }
    // V as a JSON string, escaped as rapidjson::Writer escapes (UTF-8 in and
    // out, not validated): clean words are copied eight bytes at a time.
    void str(std::string_view v) {
        static constexpr char hex[] = "0123456789ABCDEF";
        *o_++ = '"';
        const char* p = v.data();
        const char* const e = p + v.size();
        while (p < e) {
            if constexpr (std::endian::native == std::endian::little) {
                while (e - p >= 8) {
                    std::uint64_t w;
                    std::memcpy(&w, p, 8);
                    // Eight bytes go out either way (the bound has room): only
                    // those before a byte to escape count.
                    std::memcpy(o_, p, 8);
                    const std::uint64_t m = escape_marks(w);
                    const std::size_t k = m ? static_cast<std::size_t>(std::countr_zero(m) >> 3) : 8;
                    o_ += k;
                    p += k;
                    if (m) break;
                }
                if (p == e) break;
            }
            const auto c = static_cast<unsigned char>(*p++);
            const char esc = kJsonEscape[c];
            if (!esc) {
                *o_++ = static_cast<char>(c);
                continue;
            }
            o_[0] = '\\';
            o_[1] = esc;
            if (esc != 'u') {
                o_ += 2;
                continue;
            }
            o_[2] = '0';
            o_[3] = '0';
            o_[4] = hex[c >> 4];
            o_[5] = hex[c & 0xF];
            o_ += 6;
        }
        *o_++ = '"';
    }
    void u64(std::uint64_t v) { o_ = rapidjson::internal::u64toa(v, o_); }
    void u32(unsigned v) { o_ = rapidjson::internal::u32toa(v, o_); }
    void i32(int v) { o_ = rapidjson::internal::i32toa(v, o_); }
    // The duration, whole microseconds M as milliseconds. For 0 <= M < 1e8
    // (27 hours) rapidjson's dtoa of M / 1000.0 is its decimal with the
    // fraction's trailing zeros dropped (at least one digit kept: "2.0"),
    // checked for every such M; any other goes through dtoa.
    void millis(std::int64_t m) {
        if (m >= 0 && m < 100'000'000) {
            u32(static_cast<unsigned>(m / 1000));
            const auto f = static_cast<unsigned>(m % 1000);
            o_[0] = '.';
            o_[1] = static_cast<char>('0' + f / 100);
            o_[2] = static_cast<char>('0' + f / 10 % 10);
            o_[3] = static_cast<char>('0' + f % 10);
            o_ += f % 100 == 0 ? 2 : f % 10 == 0 ? 3 : 4;
            return;
        }
        const double d = static_cast<double>(m) / 1000.0;
        if (rapidjson::internal::Double(d).IsNanOrInf()) return;  // rapidjson::Writer writes nothing either
        o_ = rapidjson::internal::dtoa(d, o_, 324);
    }
    void boolean(bool b) {
        if (b)
            raw("true");
        else
            raw("false");
    }
    // ,"KEY":"V" — optional fields are left out rather than written empty.
    template <std::size_t N>
    void str_unless_empty(const char (&key_with_quotes)[N], std::string_view v) {
        if (v.empty()) return;
        raw(key_with_quotes);
        str(v);
    }

private:
    // The bytes of W a JSON string escapes (control bytes, '"', '\\'); the
    // lowest mark is exact.
    static std::uint64_t escape_marks(std::uint64_t w) {
        return ((w - kOnes * 0x20) & ~w & kHighs) | bytes_equal(w, '"') | bytes_equal(w, '\\');
    }
    char* o_;
};

// The line for R into O (room for log_line_bound(R) bytes); returns its end.
char* write_log_line(const RequestLog& r, char* o) {
    LineOut w(o);
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
    w.millis(static_cast<int64_t>(r.duration_ms * 1000));
    if (r.usage.known()) {
        // Only what the provider reported: a side it left out is omitted, not 0.
        w.raw(R"(,"usage":{)");
        if (r.usage.input_tokens) {
            w.raw(R"("input_tokens":)");
            w.u64(*r.usage.input_tokens);
        }
        if (r.usage.output_tokens) {
            if (r.usage.input_tokens)
                w.raw(R"(,"output_tokens":)");
            else
                w.raw(R"("output_tokens":)");
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
    return w.end();
}

}  // namespace

void request_log_json(const RequestLog& r, std::string& out) {
    out.resize(log_line_bound(r));
    out.resize(static_cast<std::size_t>(write_log_line(r, out.data()) - out.data()));
}

std::string request_log_json(const RequestLog& r) {
    std::string out;
    request_log_json(r, out);
    return out;
}

std::string_view request_log_line(const RequestLog& r) {
    // This thread's buffer: grown to the longest line's bound, never shrunk.
    struct Buffer {
        std::unique_ptr<char[]> bytes;
        std::size_t size = 0;
    };
    thread_local Buffer line;
    const std::size_t bound = log_line_bound(r);
    if (bound > line.size) {
        line.size = std::max<std::size_t>(bound, 2048);
        line.bytes = std::make_unique_for_overwrite<char[]>(line.size);
    }
    return {line.bytes.get(), static_cast<std::size_t>(write_log_line(r, line.bytes.get()) - line.bytes.get())};
}

}  // namespace redir::terminator
