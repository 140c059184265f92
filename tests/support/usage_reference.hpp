#pragma once
// The response usage scanners as they were before session 7 made them
// cheaper (byte-at-a-time state steps), kept as the reference the new ones
// must agree with on every body and every split: the differential unit test
// compares against it, and bench_terminator_json times it as the "old" side
// of its same-run ratios. Only the scanner classes; UsageFields and the
// limits are the library's.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

#include "terminator/usage.hpp"

namespace redir::terminator::reference {

namespace detail {
inline bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
inline bool is_digit(char c) { return c >= '0' && c <= '9'; }
inline bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
}  // namespace detail
using namespace detail;

class JsonUsageScanner {
public:
    void feed(std::string_view bytes);
    // Forgets the current document (the next byte starts a new one); what was
    // already taken stays.
    void restart();
    const UsageFields& fields() const { return taken_; }

private:
    enum class St : std::uint8_t {
        Value, KeyOrEnd, Key, Colon, AfterValue, Str, Esc, Number, Literal, Skip, Done, Broken
    };
    static constexpr std::size_t kKeyMax = 32;
    bool step(char c);  // false: C was not consumed (re-run it in the new state)
    // Skips the rest of a container no usage can be in; returns bytes used.
    std::size_t skip(std::string_view b);
    void open();
    void close();
    void begin_value(char c);
    void end_number();
    bool key_is(std::string_view k) const;
    bool could_hold_usage() const;  // the value about to open may be (or hold) a usage object

    St st_ = St::Value;
    std::int64_t depth_ = 0;  // a skipped subtree may nest as deep as its bytes go
    bool str_is_key_ = false;
    char key_[kKeyMax] = {};
    std::size_t key_len_ = 0;
    bool key_long_ = false;
    std::int64_t wrapper_depth_ = 0;  // depth of an open "message"/"response" object, 0: none
    std::int64_t usage_depth_ = 0;    // depth of the open usage object, 0: none
    // St::Skip: only brackets and strings are followed until the depth falls
    // below skip_base_ (no nesting limit needed: only a counter grows).
    std::int64_t skip_base_ = 0;
    bool skip_str_ = false, skip_esc_ = false;
    std::uint64_t num_ = 0;
    bool num_bad_ = false;     // sign, fraction, exponent, overflow, over kMaxTokenCount
    std::optional<std::uint64_t>* num_field_ = nullptr;
    UsageFields pending_;  // members of the usage object being read
    UsageFields taken_;
};

class SseUsageScanner {
public:
    void feed(std::string_view bytes);
    Usage usage() const { return json_.fields().usage(); }
    const UsageFields& fields() const { return json_.fields(); }

private:
    enum class Line : std::uint8_t { Start, Field, Skip, ValueStart, Data };
    void begin_data();
    void end_line();
    Line line_ = Line::Start;
    bool after_cr_ = false;
    char field_[5] = {};
    std::size_t field_len_ = 0;
    bool data_in_event_ = false;  // a data line was seen in this event
    JsonUsageScanner json_;
};

// ---- JSON ----

inline void JsonUsageScanner::restart() {
    st_ = St::Value;
    depth_ = 0;
    wrapper_depth_ = 0;
    usage_depth_ = 0;
    key_len_ = 0;
    key_long_ = false;
    pending_ = {};
}

inline bool JsonUsageScanner::key_is(std::string_view k) const {
    return !key_long_ && std::string_view(key_, key_len_) == k;
}

// Followed objects are only the top level, a "message"/"response" wrapper
// and a usage object: at most three deep.
inline void JsonUsageScanner::open() {
    ++depth_;
    st_ = St::KeyOrEnd;
}

inline void JsonUsageScanner::close() {
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

inline bool JsonUsageScanner::could_hold_usage() const {
    if (usage_depth_ != 0) return false;
    if (depth_ == 1) return key_is("usage") || key_is("message") || key_is("response");
    return depth_ == 2 && wrapper_depth_ == 2 && key_is("usage");
}

inline void JsonUsageScanner::begin_value(char c) {
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

inline std::size_t JsonUsageScanner::skip(std::string_view b) {
    std::size_t i = 0;
    const std::size_t n = b.size();
    while (i < n) {
        if (skip_str_) {
            if (skip_esc_) {
                skip_esc_ = false;
                ++i;
                continue;
            }
            while (i < n && b[i] != '"' && b[i] != '\\') ++i;
            if (i == n) break;
            if (b[i] == '\\') skip_esc_ = true;
            else skip_str_ = false;
            ++i;
            continue;
        }
        const char c = b[i++];
        if (c == '"') {
            skip_str_ = true;
        } else if (c == '{' || c == '[') {
            ++depth_;
        } else if ((c == '}' || c == ']') && --depth_ < skip_base_) {
            st_ = St::AfterValue;  // skip_base_ > 1: the container was a member of a followed object
            break;
        }
    }
    return i;
}

inline void JsonUsageScanner::end_number() {
    if (num_field_ && !num_bad_) *num_field_ = num_;
    num_field_ = nullptr;
    st_ = St::AfterValue;
}

inline bool JsonUsageScanner::step(char c) {
    switch (st_) {
        case St::Value:
            if (!is_ws(c)) begin_value(c);
            return true;
        case St::KeyOrEnd:
        case St::Key:
            if (is_ws(c)) return true;
            if (c == '"') {
                st_ = St::Str;
                str_is_key_ = true;
                key_len_ = 0;
                key_long_ = false;
            } else if (c == '}' && st_ == St::KeyOrEnd) {
                close();
            } else {
                st_ = St::Broken;
            }
            return true;
        case St::Colon:
            if (c == ':') st_ = St::Value;
            else if (!is_ws(c)) st_ = St::Broken;
            return true;
        case St::AfterValue:
            if (is_ws(c)) return true;
            if (c == ',') st_ = St::Key;
            else if (c == '}') close();
            else st_ = St::Broken;
            return true;
        case St::Str:
            if (c == '\\') {
                st_ = St::Esc;
            } else if (c == '"') {
                st_ = str_is_key_ ? St::Colon : St::AfterValue;
            } else if (str_is_key_) {
                if (key_len_ < kKeyMax) key_[key_len_++] = c;
                else key_long_ = true;
            }
            return true;
        case St::Esc:
            // An escaped key never names a usage field: providers write them plainly.
            if (str_is_key_) key_long_ = true;
            st_ = St::Str;
            return true;
        case St::Number:
            if (is_digit(c)) {
                if (!num_bad_) {
                    num_ = num_ * 10 + static_cast<std::uint64_t>(c - '0');
                    if (num_ > kMaxTokenCount) num_bad_ = true;
                }
                return true;
            }
            if (c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-') {
                num_bad_ = true;
                return true;
            }
            end_number();
            return false;
        case St::Literal:
            if (is_alpha(c)) return true;
            st_ = St::AfterValue;
            return false;
        case St::Skip:
        case St::Done:
        case St::Broken:
            return true;
    }
    return true;
}

inline void JsonUsageScanner::feed(std::string_view b) {
    std::size_t i = 0;
    const std::size_t n = b.size();
    while (i < n) {
        if (st_ == St::Done || st_ == St::Broken) return;
        if (st_ == St::Skip) {
            i += skip(b.substr(i));
            continue;
        }
        if (st_ == St::Str) {
            // Most of an answer is text and keys: run to the quote or escape
            // without a state step per byte; a key keeps its first kKeyMax bytes.
            std::size_t j = i;
            while (j < n && b[j] != '"' && b[j] != '\\') ++j;
            if (str_is_key_) {
                const std::size_t room = kKeyMax - key_len_, len = j - i;
                std::memcpy(key_ + key_len_, b.data() + i, std::min(room, len));
                key_len_ += std::min(room, len);
                key_long_ = key_long_ || len > room;
            }
            i = j;
            if (i == n) return;
        }
        if (step(b[i])) ++i;
    }
}

// ---- SSE ----

inline void SseUsageScanner::begin_data() {
    // Data lines of one event are joined with a newline (JSON whitespace).
    if (data_in_event_) json_.feed("\n");
    data_in_event_ = true;
}

inline void SseUsageScanner::end_line() {
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

inline void SseUsageScanner::feed(std::string_view b) {
    std::size_t i = 0;
    const std::size_t n = b.size();
    auto eol = [&](std::size_t from) {
        while (from < n && b[from] != '\n' && b[from] != '\r') ++from;
        return from;
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

}  // namespace redir::terminator::reference
