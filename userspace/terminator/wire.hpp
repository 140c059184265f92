#pragma once
// The two messages the terminator writes on every proxied request — the
// provider request and the sandbox's response — as bytes: an HTTP/1.1 head
// (request or status line, fields, framing) appended to one buffer, and the
// chunk framing of a relayed body. Beast's field containers and serializer
// cost ~6% of redird's CPU for what is a few appends; Beast still parses
// every message (nothing here reads HTTP). Socket-free, so the exact bytes
// are unit-tested.
#include <cstddef>
#include <cstdint>
#include <memory_resource>
#include <optional>
#include <string>
#include <string_view>

namespace redir::terminator::wire {

// Where a head is written: the gateway's lives in the request's arena (no
// heap allocation, given back with the request's header fields).
using Buffer = std::pmr::string;

// ASCII lower case without the C locale (std::tolower is a libc call per byte).
constexpr char ascii_lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c | 0x20) : c; }

// Whether NAME can be written as a field name: a non-empty token (RFC 9110
// tchar), so neither a line break nor a ':' can hide in it.
bool is_token(std::string_view name);
// Whether VALUE can be written as a field value or reason phrase: no CR, LF
// or NUL. A line break would end the field where the peer's parser reads it
// (a header injected into the provider request, a response split in the
// sandbox's), and parsers disagree about NUL.
bool is_safe_value(std::string_view value);
// Whether TARGET can be written as a request target: non-empty, with no
// byte that is a space or a control (either would end or split the line).
bool is_safe_target(std::string_view target);

// How a message's body is delimited, and whether the connection stays open.
struct Framing {
    std::optional<std::uint64_t> content_length;  // `Content-Length: N`
    bool chunked = false;                          // `Transfer-Encoding: chunked` (when no length)
    bool close = false;                            // `Connection: close`
};

// A message head appended field by field to OUT, which is cleared first (its
// capacity kept). Beast's serializer wrote the same bytes: its framing names
// are capitalised (`Content-Length`), the other names go as given, values
// without surrounding spaces or tabs.
class HeadWriter {
public:
    explicit HeadWriter(Buffer& out) : out_(out) { out_.clear(); }

    // `METHOD TARGET HTTP/1.1`. False, and nothing written: TARGET is not
    // safe (is_safe_target) — the caller refuses to send the request.
    bool request_line(std::string_view method, std::string_view target);
    // `HTTP/1.1 STATUS REASON`. A REASON that is empty or not safe
    // (is_safe_value) is replaced by STANDARD_REASON: the sandbox gets the
    // status, never a provider's line break.
    void status_line(unsigned status, std::string_view reason, std::string_view standard_reason);
    // `Name: value`. False, and the field dropped (the message still goes):
    // NAME is not a token, VALUE is not safe, or NAME is a framing field this
    // writer writes itself from end()'s Framing (Content-Length,
    // Transfer-Encoding, Connection) — a second one would make the peer's
    // framing ambiguous. Beast's parser refuses such bytes on input, so a
    // drop here means a bug upstream of the writer, not a hostile peer.
    bool field(std::string_view name, std::string_view value);
    // The framing fields, then the blank line that ends the head.
    void end(const Framing& framing);

private:
    Buffer& out_;
};

// A chunked body's framing (RFC 9112 7.1), as Beast writes it: the size in
// lower-case hex, no extensions, no trailers.
void append_chunk_size(Buffer& out, std::size_t n);  // `SIZE\r\n`
inline constexpr std::string_view kChunkEnd = "\r\n";              // after a chunk's data
inline constexpr std::string_view kLastChunk = "0\r\n\r\n";        // the end of the body
inline constexpr std::string_view kChunkEndLast = "\r\n0\r\n\r\n";  // a chunk's end and the body's

// A relayed body as pieces, each written as one write of up to three parts:
// BEFORE (the head while it is unwritten, the chunk size), DATA (the piece
// as received, never copied here), AFTER (the chunk's end, and the body's end
// with the last piece: no extra write, no extra TLS record for it).
class BodyFramer {
public:
    struct Parts {
        std::string_view before, data, after;
    };
    // HEAD holds the response head (HeadWriter); it is written with the first
    // piece, then reused for the chunk sizes. CHUNKED: the head said
    // `Transfer-Encoding: chunked`.
    BodyFramer(Buffer& head, bool chunked) : buf_(head), chunked_(chunked) {}

    // The next piece's parts; valid until the next call. DATA empty and LAST
    // false: the head alone (nothing once it is written). LAST: the body
    // ends with this piece (DATA may be empty).
    Parts next(std::string_view data, bool last);
    // The end of the body has been framed (the response is complete once
    // that write is done).
    bool ended() const { return ended_; }

private:
    Buffer& buf_;
    bool chunked_;
    bool head_pending_ = true;
    bool ended_ = false;
};

}  // namespace redir::terminator::wire
