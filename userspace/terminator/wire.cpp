// HTTP/1.1 heads and chunk framing as bytes (see wire.hpp).
#include "terminator/wire.hpp"

#include <array>
#include <charconv>

namespace redir::terminator::wire {

namespace {

// RFC 9110 tchar: ALPHA, DIGIT and "!#$%&'*+-.^_`|~".
constexpr std::array<bool, 256> kTchar = [] {
    std::array<bool, 256> t{};
    for (int c = '0'; c <= '9'; ++c) t[c] = true;
    for (int c = 'a'; c <= 'z'; ++c) t[c] = t[c - 'a' + 'A'] = true;
    for (char c : std::string_view("!#$%&'*+-.^_`|~")) t[static_cast<unsigned char>(c)] = true;
    return t;
}();

bool iequals_lower(std::string_view s, std::string_view lower) {
    if (s.size() != lower.size()) return false;
    for (std::size_t i = 0; i < s.size(); ++i)
        if (ascii_lower(s[i]) != lower[i]) return false;
    return true;
}

// The fields end() writes from the Framing: never taken from a caller.
bool is_framing_field(std::string_view name) {
    return iequals_lower(name, "content-length") || iequals_lower(name, "transfer-encoding") ||
           iequals_lower(name, "connection");
}

// Without optional whitespace at either end, as Beast stored field values.
std::string_view trim_ows(std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    return v;
}

void append_number(Buffer& out, std::uint64_t n, int base = 10) {
    char digits[24];
    auto [end, ec] = std::to_chars(digits, digits + sizeof digits, n, base);
    out.append(digits, static_cast<std::size_t>(end - digits));
}

}  // namespace

bool is_token(std::string_view name) {
    if (name.empty()) return false;
    for (char c : name)
        if (!kTchar[static_cast<unsigned char>(c)]) return false;
    return true;
}

bool is_safe_value(std::string_view value) {
    for (char ch : value) {
        const auto c = static_cast<unsigned char>(ch);
        // One comparison per byte in the common case.
        if (c <= '\r' && (c == '\r' || c == '\n' || c == '\0')) return false;
    }
    return true;
}

bool is_safe_target(std::string_view target) {
    if (target.empty()) return false;
    for (char ch : target) {
        const auto c = static_cast<unsigned char>(ch);
        if (c <= ' ' || c == 0x7f) return false;
    }
    return true;
}

bool HeadWriter::request_line(std::string_view method, std::string_view target) {
    if (!is_token(method) || !is_safe_target(target)) return false;
    out_.append(method);
    out_ += ' ';
    out_.append(target);
    out_.append(" HTTP/1.1\r\n");
    return true;
}

void HeadWriter::status_line(unsigned status, std::string_view reason, std::string_view standard_reason) {
    if (reason.empty() || !is_safe_value(reason)) reason = standard_reason;
    out_.append("HTTP/1.1 ");
    append_number(out_, status);
    out_ += ' ';
    out_.append(reason);
    out_.append("\r\n");
}

bool HeadWriter::field(std::string_view name, std::string_view value) {
    value = trim_ows(value);
    if (!is_token(name) || !is_safe_value(value) || is_framing_field(name)) return false;
    out_.append(name);
    out_.append(": ");
    out_.append(value);
    out_.append("\r\n");
    return true;
}

void HeadWriter::end(const Framing& f) {
    if (f.content_length) {
        out_.append("Content-Length: ");
        append_number(out_, *f.content_length);
        out_.append("\r\n");
    } else if (f.chunked) {
        out_.append("Transfer-Encoding: chunked\r\n");
    }
    if (f.close) out_.append("Connection: close\r\n");
    out_.append("\r\n");
}

void append_chunk_size(Buffer& out, std::size_t n) {
    append_number(out, n, 16);
    out.append("\r\n");
}

BodyFramer::Parts BodyFramer::next(std::string_view data, bool last) {
    Parts p;
    if (ended_) return p;
    // The head goes with this piece, or the buffer is free for its framing.
    if (!head_pending_) buf_.clear();
    head_pending_ = false;
    if (chunked_ && !data.empty()) append_chunk_size(buf_, data.size());
    p.before = buf_;
    p.data = data;
    if (chunked_) p.after = data.empty() ? (last ? kLastChunk : "") : (last ? kChunkEndLast : kChunkEnd);
    ended_ = last;
    return p;
}

}  // namespace redir::terminator::wire
