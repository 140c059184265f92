// The bytes the terminator writes on every proxied request (wire.hpp): the
// provider request's head, the sandbox's response head and the relayed body's
// framing, golden; and what a hostile name, value, reason or target can get
// onto the wire (nothing).
#include <gtest/gtest.h>

#include <cctype>
#include <string>
#include <string_view>

#include "terminator/wire.hpp"

namespace redir::terminator::wire {
namespace {

std::string all(const BodyFramer::Parts& p) {
    return std::string(p.before) + std::string(p.data) + std::string(p.after);
}

TEST(Wire, RequestHeadIsWhatBeastWrote) {
    Buffer out = "left over from the last request";
    HeadWriter w(out);
    ASSERT_TRUE(w.request_line("POST", "/v1/chat/completions?api-version=1"));
    EXPECT_TRUE(w.field("Host", "api.example:8443"));
    EXPECT_TRUE(w.field("authorization", "Bearer sk-1"));
    EXPECT_TRUE(w.field("content-type", "application/json"));
    EXPECT_TRUE(w.field("accept-encoding", "identity"));
    w.end({.content_length = 27});
    EXPECT_EQ(out,
              "POST /v1/chat/completions?api-version=1 HTTP/1.1\r\n"
              "Host: api.example:8443\r\n"
              "authorization: Bearer sk-1\r\n"
              "content-type: application/json\r\n"
              "accept-encoding: identity\r\n"
              "Content-Length: 27\r\n"
              "\r\n");
}

TEST(Wire, ResponseHeadWithContentLength) {
    Buffer out;
    HeadWriter w(out);
    w.status_line(200, "OK", "OK");
    EXPECT_TRUE(w.field("content-type", "application/json"));
    EXPECT_TRUE(w.field("x-request-id", "req_1"));
    w.end({.content_length = 0});
    EXPECT_EQ(out, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: req_1\r\n"
                   "Content-Length: 0\r\n\r\n");

    HeadWriter again(out);  // cleared: the buffer is reused per request
    again.status_line(429, "", "Too Many Requests");
    again.end({.content_length = 18446744073709551615u, .close = true});
    EXPECT_EQ(out, "HTTP/1.1 429 Too Many Requests\r\nContent-Length: 18446744073709551615\r\n"
                   "Connection: close\r\n\r\n");
}

TEST(Wire, ResponseHeadChunkedOrUnframed) {
    Buffer out;
    HeadWriter(out).status_line(200, "OK", "OK");
    HeadWriter w(out);
    w.status_line(200, "Fine", "OK");
    w.end({.chunked = true});
    EXPECT_EQ(out, "HTTP/1.1 200 Fine\r\nTransfer-Encoding: chunked\r\n\r\n");
    HeadWriter none(out);
    none.status_line(204, "No Content", "No Content");
    none.end({});
    EXPECT_EQ(out, "HTTP/1.1 204 No Content\r\n\r\n");
}

// Values keep their inner spaces and lose the optional whitespace around them.
TEST(Wire, ValuesAreTrimmedAsBeastStoredThem) {
    Buffer out;
    HeadWriter w(out);
    w.status_line(200, "OK", "OK");
    EXPECT_TRUE(w.field("x-a", " \t a  b\t "));
    EXPECT_TRUE(w.field("x-empty", "  "));
    w.end({});
    EXPECT_EQ(out, "HTTP/1.1 200 OK\r\nx-a: a  b\r\nx-empty: \r\n\r\n");
}

TEST(Wire, ChunkSizesAreLowerCaseHex) {
    Buffer out;
    append_chunk_size(out, 1);
    append_chunk_size(out, 26);
    append_chunk_size(out, 16384);
    EXPECT_EQ(out, "1\r\n1a\r\n4000\r\n");
}

// A JSON answer already read: head and the whole body in one write, then
// nothing more (a Content-Length body has no end marker).
TEST(Wire, ContentLengthBodyGoesWithTheHead) {
    Buffer head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
    BodyFramer f(head, false);
    auto p = f.next("{}", true);
    EXPECT_EQ(p.before, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    EXPECT_EQ(p.data, "{}");
    EXPECT_EQ(p.after, "");
    EXPECT_TRUE(f.ended());
    EXPECT_EQ(all(f.next("", false)), "") << "nothing after the end";
}

TEST(Wire, ContentLengthBodyInPieces) {
    Buffer head = "H\r\n\r\n";
    BodyFramer f(head, false);
    EXPECT_EQ(all(f.next("", false)), "H\r\n\r\n") << "the head alone";
    EXPECT_EQ(all(f.next("", false)), "") << "written once";
    EXPECT_EQ(all(f.next("abc", false)), "abc");
    EXPECT_FALSE(f.ended());
    EXPECT_EQ(all(f.next("de", true)), "de");
    EXPECT_TRUE(f.ended());
}

TEST(Wire, ChunkedPiecesAndTheEndInTheLastWrite) {
    Buffer head = "H\r\n\r\n";
    BodyFramer f(head, true);
    EXPECT_EQ(all(f.next(std::string(26, 'x'), false)), "H\r\n\r\n1a\r\n" + std::string(26, 'x') + "\r\n");
    auto p = f.next("hello", true);
    EXPECT_EQ(p.before, "5\r\n");
    EXPECT_EQ(p.data, "hello");
    EXPECT_EQ(p.after, "\r\n0\r\n\r\n") << "the last chunk rides with the last piece";
    EXPECT_TRUE(f.ended());
}

// The provider's last chunk came without data: the end alone (the empty last
// chunk), with the head when nothing was written yet (an empty body).
TEST(Wire, EmptyLastChunk) {
    Buffer head = "H\r\n\r\n";
    BodyFramer f(head, true);
    EXPECT_EQ(all(f.next("ab", false)), "H\r\n\r\n2\r\nab\r\n");
    EXPECT_EQ(all(f.next("", true)), "0\r\n\r\n");

    Buffer head2 = "H\r\n\r\n";
    BodyFramer empty(head2, true);
    EXPECT_EQ(all(empty.next("", true)), "H\r\n\r\n0\r\n\r\n");
}

// An SSE stream: the head as soon as the provider's is read, each event as
// its own chunk, and the end (here after a broken-off stream's error event).
TEST(Wire, SsePieceSequence) {
    Buffer head;
    HeadWriter w(head);
    w.status_line(200, "OK", "OK");
    EXPECT_TRUE(w.field("content-type", "text/event-stream"));
    w.end({.chunked = true});
    BodyFramer f(head, true);
    std::string wire;
    for (auto [data, last] : {std::pair<std::string_view, bool>{"", false},
                              {"data: {\"a\":1}\n\n", false},
                              {"event: error\ndata: {}\n\n", false},
                              {"", true}})
        wire += all(f.next(data, last));
    EXPECT_EQ(wire,
              "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
              "f\r\ndata: {\"a\":1}\n\n\r\n"
              "17\r\nevent: error\ndata: {}\n\n\r\n"
              "0\r\n\r\n");
}

// Hostile bytes never reach the wire. A field is DROPPED (the message still
// goes, without it): a name that is no token, a value with CR, LF or NUL, or
// one of the framing fields the writer owns. A reason phrase is REPLACED by
// the standard one. A request target is REFUSED (request_line is false and
// writes nothing; the gateway does not send the request).
TEST(Wire, CrLfAndNulNeverReachTheWire) {
    const std::string bad_values[] = {"a\r\nx-injected: 1", "a\nx-injected: 1", "a\rb", std::string("a\0b", 3),
                                      "\r\n\r\nHTTP/1.1 200 OK"};
    for (const auto& v : bad_values) {
        Buffer out;
        HeadWriter w(out);
        w.status_line(200, v, "OK");
        EXPECT_FALSE(w.field("x-provider", v));
        EXPECT_FALSE(w.field(v, "1"));
        EXPECT_TRUE(w.field("x-ok", "1"));
        w.end({.content_length = 1});
        EXPECT_EQ(out, "HTTP/1.1 200 OK\r\nx-ok: 1\r\nContent-Length: 1\r\n\r\n");

        HeadWriter r(out);
        EXPECT_FALSE(r.request_line("POST", "/v1/x" + v));
        EXPECT_FALSE(r.request_line("PO\r\nST", "/v1/x"));
        EXPECT_EQ(out, "");
    }
    Buffer out;
    HeadWriter w(out);
    EXPECT_FALSE(w.request_line("POST", "/v1/a b"));
    EXPECT_FALSE(w.request_line("POST", ""));
    EXPECT_FALSE(w.request_line("POST", "/v1/\x7f"));
    for (std::string_view name : {"", "x y", "x:y", "x\ty", "Content-Length", "content-length",
                                  "TRANSFER-ENCODING", "Connection", "x\x80"})
        EXPECT_FALSE(w.field(name, "1")) << name;
    EXPECT_EQ(out, "");
}

// Every byte: the only ones a value may not carry are CR, LF and NUL; a
// name takes tchar only.
TEST(Wire, ByteClasses) {
    const std::string_view tchar_extra = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; ++c) {
        const char ch = static_cast<char>(c);
        const std::string s(1, ch);
        EXPECT_EQ(is_safe_value("a" + s + "b"), !(c == '\r' || c == '\n' || c == 0)) << c;
        const bool tchar = std::isalnum(c) || tchar_extra.find(ch) != std::string_view::npos;
        EXPECT_EQ(is_token(s), c < 128 && tchar) << c;
        const char want = c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : ch;
        EXPECT_EQ(ascii_lower(ch), want) << c;
    }
}

}  // namespace
}  // namespace redir::terminator::wire
