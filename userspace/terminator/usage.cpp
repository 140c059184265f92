// Usage extraction: a push JSON scanner that keeps only the provider's usage
// objects, and the SSE line machine that feeds it one event at a time.
#include "terminator/usage.hpp"

#include <algorithm>
#include <bit>
#include <cstring>

#include "terminator/mock.hpp"
#include "terminator/request.hpp"

namespace redir::terminator {

namespace {

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

std::uint64_t saturating_add(std::uint64_t a, std::uint64_t b) { return a > UINT64_MAX - b ? UINT64_MAX : a + b; }

void take(std::optional<std::uint64_t>& into, const std::optional<std::uint64_t>& later) {
    if (later) into = later;
}

}  // namespace

std::uint64_t Usage::total() const { return saturating_add(input_tokens.value_or(0), output_tokens.value_or(0)); }

void UsageFields::merge(const UsageFields& later) {
    take(prompt_tokens, later.prompt_tokens);
    take(completion_tokens, later.completion_tokens);
    take(input_tokens, later.input_tokens);
    take(output_tokens, later.output_tokens);
    take(cache_creation_input_tokens, later.cache_creation_input_tokens);
    take(cache_read_input_tokens, later.cache_read_input_tokens);
}

Usage UsageFields::usage() const {
    Usage u;
    if (prompt_tokens) {
        u.input_tokens = prompt_tokens;
    } else if (input_tokens || cache_creation_input_tokens || cache_read_input_tokens) {
        u.input_tokens = saturating_add(
            input_tokens.value_or(0),
            saturating_add(cache_creation_input_tokens.value_or(0), cache_read_input_tokens.value_or(0)));
    }
    u.output_tokens = completion_tokens ? completion_tokens : output_tokens;
    return u;
}

// ---- JSON ----

// The per-state runs below are called once per token from feed()'s loop:
// inlined there, a token costs no calls (they are used nowhere else).
#define ALWAYS_INLINE [[gnu::always_inline]] inline

namespace {

// Eight bytes at a time (SWAR): each helper sets the high bit of every byte of
// a word that is a mark; the lowest set bit is exact (a borrow only spoils
// bits above a true mark), which is all find_first reads.
constexpr std::uint64_t kOnes = 0x0101010101010101ull;
constexpr std::uint64_t kHighs = 0x8080808080808080ull;
constexpr std::uint64_t zero_bytes(std::uint64_t x) { return (x - kOnes) & ~x & kHighs; }
constexpr std::uint64_t bytes_equal(std::uint64_t w, char c) {
    return zero_bytes(w ^ (kOnes * static_cast<unsigned char>(c)));
}

// Where a string's text ends: its closing quote or an escape.
std::uint64_t string_marks(std::uint64_t w) { return bytes_equal(w, '"') | bytes_equal(w, '\\'); }
bool is_string_mark(char c) { return c == '"' || c == '\\'; }

// What a skipped container is followed by: a string's quote and the brackets
// ('[' and ']' differ from '{' and '}' only in bit 0x20, and no other byte
// folds onto '{' or '}').
std::uint64_t skip_marks(std::uint64_t w) {
    const std::uint64_t folded = w | (kOnes * 0x20);
    return bytes_equal(w, '"') | bytes_equal(folded, '{') | bytes_equal(folded, '}');
}
bool is_skip_mark(char c) { return c == '"' || c == '{' || c == '}' || c == '[' || c == ']'; }

// The first byte at or after P that is a mark (E when none): text, keys and
// skipped subtrees are most of an answer, and run eight bytes a step.
template <class WordMarks, class IsMark>
const char* find_first(const char* p, const char* e, WordMarks word_marks, IsMark is_mark) {
    if constexpr (std::endian::native == std::endian::little) {
        for (; e - p >= 8; p += 8) {
            std::uint64_t w;
            std::memcpy(&w, p, 8);
            if (const std::uint64_t m = word_marks(w)) return p + (std::countr_zero(m) >> 3);
        }
    }
    while (p < e && !is_mark(*p)) ++p;
    return p;
}

// Where an SSE line ends: LF or CR.
std::uint64_t line_marks(std::uint64_t w) { return bytes_equal(w, '\n') | bytes_equal(w, '\r'); }
bool is_line_mark(char c) { return c == '\n' || c == '\r'; }

const char* skip_ws(const char* p, const char* e) {
    while (p < e && is_ws(*p)) ++p;
    return p;
}

}  // namespace

void JsonUsageScanner::restart() {
    st_ = St::Value;
    depth_ = 0;
    wrapper_depth_ = 0;
    usage_depth_ = 0;
    key_len_ = 0;
    key_long_ = false;
    pending_ = {};
}

bool JsonUsageScanner::key_is(std::string_view k) const {
    return !key_long_ && std::string_view(key_, key_len_) == k;
}

// Followed objects are only the top level, a "message"/"response" wrapper
// and a usage object: at most three deep.
void JsonUsageScanner::open() {
    ++depth_;
    st_ = St::KeyOrEnd;
}

void JsonUsageScanner::close() {
    if (depth_ == 0) {
        st_ = St::Broken;
        return;
    }
    if (usage_depth_ == depth_) {
        // The whole usage object arrived: only now do its members count.
        taken_.merge(pending_);
        pending_ = {};
        usage_depth_ = 0;
    }
    if (wrapper_depth_ == depth_) wrapper_depth_ = 0;
    --depth_;
    st_ = depth_ == 0 ? St::Done : St::AfterValue;
}

bool JsonUsageScanner::could_hold_usage() const {
    if (usage_depth_ != 0) return false;
    if (depth_ == 1) return key_is("usage") || key_is("message") || key_is("response");
    return depth_ == 2 && wrapper_depth_ == 2 && key_is("usage");
}

void JsonUsageScanner::begin_value(char c) {
    if (depth_ == 0) {
        // The provider's framing is always an object.
        if (c == '{') open();
        else st_ = St::Broken;
        return;
    }
    if (c == '{' && could_hold_usage()) {
        const bool usage = key_is("usage");
        open();
        if (usage) {
            usage_depth_ = depth_;
            pending_ = {};
        } else {
            wrapper_depth_ = depth_;
        }
        return;
    }
    if (c == '{' || c == '[') {
        // Choices, content, tool calls, usage details: nothing of them is read.
        ++depth_;
        skip_base_ = depth_;
        skip_str_ = skip_esc_ = false;
        st_ = St::Skip;
        return;
    }
    if (c == '"') {
        st_ = St::Str;
        str_is_key_ = false;
        return;
    }
    if (c == '-' || is_digit(c)) {
        st_ = St::Number;
        num_ = is_digit(c) ? static_cast<std::uint64_t>(c - '0') : 0;
        num_bad_ = c == '-';
        num_field_ = nullptr;
        if (usage_depth_ != 0 && depth_ == usage_depth_ && !key_long_) {
            const std::string_view k(key_, key_len_);
            if (k == "prompt_tokens") num_field_ = &pending_.prompt_tokens;
            else if (k == "completion_tokens") num_field_ = &pending_.completion_tokens;
            else if (k == "input_tokens") num_field_ = &pending_.input_tokens;
            else if (k == "output_tokens") num_field_ = &pending_.output_tokens;
            else if (k == "cache_creation_input_tokens") num_field_ = &pending_.cache_creation_input_tokens;
            else if (k == "cache_read_input_tokens") num_field_ = &pending_.cache_read_input_tokens;
        }
        return;
    }
    if (is_alpha(c)) {
        st_ = St::Literal;
        return;
    }
    st_ = St::Broken;
}

ALWAYS_INLINE void JsonUsageScanner::begin_key() {
    st_ = St::Str;
    str_is_key_ = true;
    key_len_ = 0;
    key_long_ = false;
}

// After a value: a ',' and the next key's quote when they are in this piece.
ALWAYS_INLINE const char* JsonUsageScanner::after_value(const char* p, const char* e) {
    st_ = St::AfterValue;
    p = skip_ws(p, e);
    if (p == e || *p != ',') return p;
    st_ = St::Key;
    p = skip_ws(p + 1, e);
    if (p == e || *p != '"') return p;
    begin_key();
    return p + 1;
}

// One structural byte (whitespace already passed) in the states between tokens.
ALWAYS_INLINE void JsonUsageScanner::token(char c) {
    switch (st_) {
        case St::Value:
            begin_value(c);
            return;
        case St::KeyOrEnd:
        case St::Key:
            if (c == '"') {
                begin_key();
            } else if (c == '}' && st_ == St::KeyOrEnd) {
                close();
            } else {
                st_ = St::Broken;
            }
            return;
        case St::Colon:
            st_ = c == ':' ? St::Value : St::Broken;
            return;
        case St::AfterValue:
            if (c == ',') st_ = St::Key;
            else if (c == '}') close();
            else st_ = St::Broken;
            return;
        default:
            return;
    }
}

// A key's or a value's text up to its quote or escape; a key keeps its first
// kKeyMax bytes. Whatever usually follows within the piece is taken here too,
// in the order the states would take it (a key's ':' and its value's first
// byte; a value's ',' and the next key), so a member costs no state dispatch.
ALWAYS_INLINE const char* JsonUsageScanner::string_text(const char* p, const char* e) {
    while (true) {
        const char* q = find_first(p, e, string_marks, is_string_mark);
        if (str_is_key_) {
            const std::size_t room = kKeyMax - key_len_, len = static_cast<std::size_t>(q - p);
            if (key_len_ == 0 && e - p >= static_cast<std::ptrdiff_t>(kKeyMax)) {
                std::memcpy(key_, p, kKeyMax);  // a whole key in this piece: a fixed-size copy, no call
            } else {
                std::memcpy(key_ + key_len_, p, std::min(room, len));
            }
            key_len_ += std::min(room, len);
            key_long_ = key_long_ || len > room;
        }
        if (q == e) return e;
        if (*q == '\\') {
            if (e - q < 2) {
                st_ = St::Esc;
                return e;
            }
            // An escaped key never names a usage field: providers write them plainly.
            if (str_is_key_) key_long_ = true;
            p = q + 2;
            continue;
        }
        p = q + 1;
        if (str_is_key_) {
            st_ = St::Colon;
            p = skip_ws(p, e);
            if (p == e || *p != ':') return p;
            st_ = St::Value;
            p = skip_ws(p + 1, e);
            if (p == e) return p;
            begin_value(*p++);
        } else {
            p = after_value(p, e);
        }
        if (st_ != St::Str) return p;
    }
}

// The rest of a container no usage can be in: only strings and brackets are
// followed, until the depth falls below skip_base_.
ALWAYS_INLINE const char* JsonUsageScanner::skip(const char* p, const char* e) {
    while (p < e) {
        if (skip_str_) {
            if (skip_esc_) {
                skip_esc_ = false;
                ++p;
                continue;
            }
            p = find_first(p, e, string_marks, is_string_mark);
            if (p == e) break;
            if (*p == '\\') skip_esc_ = true;
            else skip_str_ = false;
            ++p;
            continue;
        }
        p = find_first(p, e, skip_marks, is_skip_mark);
        if (p == e) break;
        const char c = *p++;
        if (c == '"') {
            skip_str_ = true;
        } else if (c == '{' || c == '[') {
            ++depth_;
        } else if (--depth_ < skip_base_) {
            st_ = St::AfterValue;  // skip_base_ > 1: the container was a member of a followed object
            break;
        }
    }
    return p;
}

// Digits of a number; the byte that ends it is left for the next state.
ALWAYS_INLINE const char* JsonUsageScanner::number(const char* p, const char* e) {
    for (; p < e; ++p) {
        const char c = *p;
        if (is_digit(c)) {
            if (!num_bad_) {
                num_ = num_ * 10 + static_cast<std::uint64_t>(c - '0');
                if (num_ > kMaxTokenCount) num_bad_ = true;
            }
        } else if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
            num_bad_ = true;  // sign, fraction, exponent: not a token count
        } else {
            if (num_field_ && !num_bad_) *num_field_ = num_;
            num_field_ = nullptr;
            return after_value(p, e);
        }
    }
    return p;
}

// true/false/null (any letters: they are never read); the byte after is left
// for the next state.
ALWAYS_INLINE const char* JsonUsageScanner::literal(const char* p, const char* e) {
    while (p < e && is_alpha(*p)) ++p;
    return p < e ? after_value(p, e) : p;
}

void JsonUsageScanner::feed(std::string_view bytes) {
    const char* p = bytes.data();
    const char* const e = p + bytes.size();
    while (p < e) {
        switch (st_) {
            case St::Done:
            case St::Broken:
                return;
            case St::Skip:
                p = skip(p, e);
                break;
            case St::Str:
                p = string_text(p, e);
                break;
            case St::Esc:
                // An escaped key never names a usage field: providers write them plainly.
                if (str_is_key_) key_long_ = true;
                st_ = St::Str;
                ++p;
                break;
            case St::Number:
                p = number(p, e);
                break;
            case St::Literal:
                p = literal(p, e);
                break;
            case St::Value:
            case St::KeyOrEnd:
            case St::Key:
            case St::Colon:
            case St::AfterValue:
                p = skip_ws(p, e);
                if (p < e) token(*p++);
                break;
        }
    }
}

#undef ALWAYS_INLINE

// ---- SSE ----

void SseUsageScanner::begin_data() {
    // Data lines of one event are joined with a newline (JSON whitespace).
    if (data_in_event_) json_.feed("\n");
    data_in_event_ = true;
}

void SseUsageScanner::end_line() {
    switch (line_) {
        case Line::Start:
            // A blank line dispatches the event; the next one is a new document.
            json_.restart();
            data_in_event_ = false;
            break;
        case Line::Field:
            if (std::string_view(field_, field_len_) == "data") begin_data();  // "data" alone: empty value
            break;
        case Line::ValueStart:
        case Line::Data:
        case Line::Skip:
            break;
    }
    line_ = Line::Start;
}

void SseUsageScanner::feed(std::string_view b) {
    std::size_t i = 0;
    const std::size_t n = b.size();
    auto eol = [&](std::size_t from) {
        return static_cast<std::size_t>(find_first(b.data() + from, b.data() + n, line_marks, is_line_mark) - b.data());
    };
    while (i < n) {
        const char c = b[i];
        if (after_cr_) {
            after_cr_ = false;
            if (c == '\n') {  // the LF of a CRLF
                ++i;
                continue;
            }
        }
        if (c == '\n' || c == '\r') {
            end_line();
            after_cr_ = c == '\r';
            ++i;
            continue;
        }
        switch (line_) {
            case Line::Start:
                field_len_ = 0;
                line_ = c == ':' ? Line::Skip : Line::Field;  // ':' starts a comment
                if (c != ':') field_[field_len_++] = c;
                ++i;
                break;
            case Line::Field:
                if (c == ':') {
                    if (std::string_view(field_, field_len_) == "data") {
                        begin_data();
                        line_ = Line::ValueStart;
                    } else {
                        line_ = Line::Skip;
                    }
                } else if (field_len_ < sizeof(field_)) {
                    field_[field_len_++] = c;
                } else {
                    line_ = Line::Skip;  // longer than any field we read
                }
                ++i;
                break;
            case Line::ValueStart:
                line_ = Line::Data;
                if (c == ' ') ++i;  // one space after the colon is not part of the value
                break;
            case Line::Data: {
                const std::size_t j = eol(i);
                json_.feed(b.substr(i, j - i));
                i = j;
                break;
            }
            case Line::Skip:
                i = eol(i);
                break;
        }
    }
}

// ---- The gateway's tap ----

UsageTap::UsageTap(const ResponsePlan& plan)
    : kind_(plan.sse && !plan.encoded ? Kind::Sse : plan.json_body ? Kind::Json : Kind::None) {}

UsageTap::UsageTap(bool answer_is_sse) : kind_(answer_is_sse ? Kind::Sse : Kind::Json) {}

void UsageTap::feed(std::string_view data) {
    if (kind_ == Kind::Sse) sse_.feed(data);
    else if (kind_ == Kind::Json) json_.feed(data);
}

void UsageTap::finish(Usage& out) const {
    if (kind_ == Kind::Sse) out = sse_.usage();
    else if (kind_ == Kind::Json) out = json_.fields().usage();
    else out = {};
}

bool asks_stream_usage(Endpoint ep) { return ep == Endpoint::ChatCompletions || ep == Endpoint::Completions; }

Usage usage_of(const MockReply& reply) {
    UsageTap tap(reply.stream);
    for (const auto& p : reply.pieces) tap.feed(p);
    Usage u;
    tap.finish(u);
    return u;
}

}  // namespace redir::terminator
