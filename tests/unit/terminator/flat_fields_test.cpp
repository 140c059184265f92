// RequestParser / ResponseParser (flat_fields.hpp): the gateway's parsers.
// Fields in wire order with duplicates kept, lookups case-insensitive, the
// limits, the request body into a string and the answer's body piece by
// piece; and, for a corpus of ordinary and hostile messages, the same
// outcome as Beast's http::parser with basic_fields that they replace: every
// put() consuming as much with the same error, the same fields per name, the
// same body, the same keep-alive and routing facts.
#include <gtest/gtest.h>

#include <boost/asio/buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http.hpp>
#include <boost/optional/optional_io.hpp>
#include <cctype>
#include <map>
#include <memory_resource>
#include <string>
#include <tuple>
#include <vector>

#include "terminator/flat_fields.hpp"
#include "terminator/head.hpp"

namespace redir::terminator {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using beast::error_code;

std::string lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// Each put() of a parse: bytes consumed, error, body bytes it delivered.
struct Step {
    std::size_t consumed;
    error_code ec;
    std::string got;
    bool operator==(const Step&) const = default;
};
std::ostream& operator<<(std::ostream& os, const Step& s) {
    return os << "{" << s.consumed << ", " << s.ec.message() << ", " << s.got.size() << " bytes}";
}

// Feeds WIRE to P as the gateway does: reads of READ bytes into a buffer,
// put() from it, the end of input as put_eof. PIECE: the room given to a
// buffer_body-like body before each put (0: a string body, nothing to give).
// SET_PIECE(p, data, size) and LEFT(p) reach the parser's piece.
template <class Parser, class SetPiece, class Left>
std::vector<Step> feed(Parser& p, std::string_view wire, std::size_t read, std::size_t piece_size,
                       SetPiece set_piece, Left left) {
    std::vector<Step> steps;
    std::string buf;
    std::size_t off = 0;
    std::vector<char> piece(piece_size ? piece_size : 1);
    auto more = [&] {
        const auto n = std::min(read, wire.size() - off);
        buf.append(wire.substr(off, n));
        off += n;
    };
    more();
    for (int guard = 0; guard < 100'000 && !p.is_done(); ++guard) {
        if (piece_size) set_piece(p, piece.data(), piece_size);
        error_code ec;
        std::size_t n = 0;
        if (buf.empty() && off == wire.size()) {
            p.put_eof(ec);
        } else {
            n = p.put(boost::asio::buffer(buf), ec);
            buf.erase(0, n);
        }
        const std::size_t got = piece_size ? piece_size - left(p) : 0;
        steps.push_back({n, ec, std::string(piece.data(), got)});
        if (ec == http::error::need_more) {
            if (off == wire.size() && buf.empty()) continue;  // put_eof next
            if (off == wire.size()) {
                // Bytes left that never make a message: the end of input.
                p.put_eof(ec);
                steps.push_back({0, ec, ""});
                break;
            }
            more();
            continue;
        }
        if (ec && ec != http::error::need_buffer) break;
        if (buf.empty() && off < wire.size()) more();
    }
    return steps;
}

// Name (lower case) → the (name as sent, value) of each field of that name, in order.
using ByName = std::map<std::string, std::vector<std::pair<std::string, std::string>>>;
template <class Range>
ByName by_name(const Range& fields) {
    ByName out;
    for (const auto& f : fields)
        out[lower(f.name_string())].emplace_back(std::string(f.name_string()), std::string(f.value()));
    return out;
}

// What head_of() computed from Beast's request header before the flat parser.
template <class Fields>
RequestHead beast_head(const http::request_header<Fields>& req) {
    RequestHead h;
    h.method = req.method_string();
    h.target = req.target();
    h.version = req.version();
    h.transfer_encoding_count = req.count(http::field::transfer_encoding);
    if (h.transfer_encoding_count) h.transfer_encoding = req[http::field::transfer_encoding];
    h.host_count = req.count(http::field::host);
    if (auto e = req.find(http::field::expect); e != req.end()) {
        h.has_expect = true;
        h.expect = e->value();
    }
    h.anthropic_client = req.count("anthropic-version") > 0;
    return h;
}

void expect_same_head(const RequestHead& a, const RequestHead& b, const std::string& what) {
    EXPECT_EQ(a.method, b.method) << what;
    EXPECT_EQ(a.target, b.target) << what;
    EXPECT_EQ(a.version, b.version) << what;
    EXPECT_EQ(a.transfer_encoding_count, b.transfer_encoding_count) << what;
    EXPECT_EQ(a.transfer_encoding, b.transfer_encoding) << what;
    EXPECT_EQ(a.host_count, b.host_count) << what;
    EXPECT_EQ(a.has_expect, b.has_expect) << what;
    EXPECT_EQ(a.expect, b.expect) << what;
    EXPECT_EQ(a.anthropic_client, b.anthropic_client) << what;
}

const std::string kPost = "POST /v1/chat/completions HTTP/1.1\r\n";

// Requests: ordinary ones, and the framing tricks the gateway refuses
// (GatewayTest.SmugglingVariantsAreRefused's and more).
const std::vector<std::pair<std::string, std::string>> kRequests = {
    {"plain", kPost + "Host: i\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"},
    {"no body", "GET /v1/models HTTP/1.1\r\nHost: i\r\nAnthropic-Version: 2023-06-01\r\n\r\n"},
    {"HTTP/1.0 keep-alive", "POST /v1/x HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 3\r\n\r\nabc"},
    {"HTTP/1.0", "POST /v1/x HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc"},
    {"close", kPost + "Host: i\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"},
    {"two Connections", kPost + "Host: i\r\nConnection: keep-alive\r\nX: 1\r\nConnection: close\r\n"
                                "Content-Length: 2\r\n\r\n{}"},
    {"Connection list", kPost + "Host: i\r\nConnection: te, close\r\nContent-Length: 2\r\n\r\n{}"},
    {"Proxy-Connection", kPost + "Host: i\r\nProxy-Connection: close\r\nContent-Length: 2\r\n\r\n{}"},
    {"chunked", kPost + "Host: i\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n3;ext=1\r\nabc\r\n0\r\nT: 1\r\n\r\n"},
    {"CL and TE", kPost + "Host: i\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
    {"TE and CL", kPost + "Host: i\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n"},
    {"two CLs", kPost + "Host: i\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x"},
    {"two equal CLs", kPost + "Host: i\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}"},
    {"CL list", kPost + "Host: i\r\nContent-Length: 2, 3\r\n\r\n{}x"},
    {"TE gzip", kPost + "Host: i\r\nTransfer-Encoding: gzip\r\n\r\n{}"},
    {"TE gzip, chunked", kPost + "Host: i\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"},
    {"TE twice", kPost + "Host: i\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "2\r\n{}\r\n0\r\n\r\n"},
    {"TE split", kPost + "Host: i\r\nTransfer-Encoding: identity\r\nX: y\r\nTransfer-Encoding: chunked\r\n\r\n"
                         "2\r\n{}\r\n0\r\n\r\n"},
    {"TE xchunked", kPost + "Host: i\r\nTransfer-Encoding: xchunked\r\n\r\n{}"},
    {"TE padded", kPost + "Host: i\r\nTransfer-Encoding:  \t chunked \t \r\n\r\n0\r\n\r\n"},
    {"obs-fold", kPost + "Host: i\r\nContent-Length: 2\r\nX-A: a\r\n b\r\n\r\n{}"},
    {"obs-fold TE", kPost + "Host: i\r\nTransfer-Encoding:\r\n chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"},
    {"bare LF", "POST /v1/chat/completions HTTP/1.1\nHost: i\nContent-Length: 2\n\n{}"},
    {"bare CR", kPost + "Host: i\rContent-Length: 2\r\n\r\n{}"},
    {"space before colon", kPost + "Host: i\r\nContent-Length : 2\r\n\r\n{}"},
    {"negative CL", kPost + "Host: i\r\nContent-Length: -2\r\n\r\n{}"},
    {"bad chunk size", kPost + "Host: i\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"},
    {"cut chunked", kPost + "Host: i\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"},
    {"cut body", kPost + "Host: i\r\nContent-Length: 10\r\n\r\nabc"},
    {"two Hosts", kPost + "Host: a\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}"},
    {"Expect", kPost + "Host: i\r\nExpect: 100-continue\r\nExpect: other\r\nContent-Length: 2\r\n\r\n{}"},
    {"empty value", kPost + "Host: i\r\nX-Empty:\r\nX-Spaces:   \r\nContent-Length: 0\r\n\r\n"},
    {"unknown method", "BREW /pot HTTP/1.1\r\nHost: i\r\n\r\n"},
    {"absolute form", "POST https://inference.local/v1/chat/completions?a=b HTTP/1.1\r\nHost: i\r\n"
                      "Content-Length: 0\r\n\r\n"},
    {"bad name", kPost + "Host: i\r\nX(y): 1\r\n\r\n"},
    {"HTTP/2.0", "POST / HTTP/2.0\r\nHost: i\r\n\r\n"},
};

struct RequestOutcome {
    std::vector<Step> steps;
    bool header_done = false;
    ByName fields;
    std::size_t field_count = 0;
    std::string body;
    bool keep_alive = false;
    bool parser_keep_alive = false;
    bool chunked = false;
    boost::optional<std::uint64_t> content_length;
    RequestHead head;
};

template <class Parser, class Fields, class Head, class Body, class KeepAlive>
RequestOutcome run_request(Parser& p, std::string_view wire, std::size_t read, std::size_t header_limit,
                           std::uint64_t body_limit, Fields fields, Head head, Body body, KeepAlive keep_alive) {
    p.header_limit(static_cast<std::uint32_t>(header_limit));
    p.body_limit(body_limit);
    p.eager(true);
    RequestOutcome o;
    o.steps = feed(p, wire, read, 0, [](auto&, char*, std::size_t) {}, [](auto&) { return std::size_t{0}; });
    o.header_done = p.is_header_done();
    if (o.header_done) {
        o.fields = by_name(fields(p));
        for ([[maybe_unused]] const auto& f : fields(p)) ++o.field_count;
        o.keep_alive = keep_alive(p);
        o.parser_keep_alive = p.keep_alive();
        o.chunked = p.chunked();
        o.content_length = p.content_length();
        o.head = head(p);
    }
    o.body = body(p);
    return o;
}

// The flat parser and Beast's decide the same for every request of the
// corpus, whatever the reads: routing facts, keep-alive, errors, body.
// Beast 1.81 asserts (basic_parser.ipp, parse_chunk_header: `n >= 5`)
// when a chunked body whose first chunk is the last one ("0\r\n") is fed
// up to 4 bytes past it: valid input, and the code under the assertion
// reads nothing it should not (release builds compile the assertion out),
// but an assertion-enabled build (the sanitized soak run) aborts in
// Beast's own parser as in ours. Feeding chunked messages a few bytes at a
// time is left to release builds there.
bool beast_asserts_on(const std::string& wire, std::size_t read) {
#ifdef NDEBUG
    (void)wire;
    (void)read;
    return false;
#else
    return read < 16 && wire.find("hunked") != std::string::npos;
#endif
}

TEST(FlatParser, RequestsParseAsBeastsParserParsesThem) {
    for (const auto& [name, wire] : kRequests) {
        for (std::size_t read : {std::size_t{1}, std::size_t{7}, std::size_t{64 * 1024}}) {
            if (beast_asserts_on(wire, read)) continue;
            for (std::size_t header_limit : {std::size_t{16 * 1024}, std::size_t{60}}) {
                const std::string what = name + " read " + std::to_string(read) + " limit " +
                                         std::to_string(header_limit);
                std::pmr::monotonic_buffer_resource arena;
                RequestParser flat(&arena);
                auto a = run_request(
                    flat, wire, read, header_limit, 1024, [](auto& p) -> const auto& { return p.fields(); },
                    [](auto& p) { return head_of(p); }, [](auto& p) { return p.body(); },
                    [](auto& p) { return p.header_keep_alive(); });
                http::request_parser<http::string_body> ref;
                auto b = run_request(
                    ref, wire, read, header_limit, 1024, [](auto& p) -> const auto& { return p.get().base(); },
                    [](auto& p) { return beast_head(p.get()); }, [](auto& p) { return p.get().body(); },
                    [](auto& p) { return p.get().keep_alive(); });
                EXPECT_EQ(a.steps, b.steps) << what;
                ASSERT_EQ(a.header_done, b.header_done) << what;
                EXPECT_EQ(a.body, b.body) << what;
                if (!a.header_done) continue;
                EXPECT_EQ(a.fields, b.fields) << what;
                EXPECT_EQ(a.field_count, b.field_count) << what;
                EXPECT_EQ(a.keep_alive, b.keep_alive) << what;
                EXPECT_EQ(a.parser_keep_alive, b.parser_keep_alive) << what;
                EXPECT_EQ(a.chunked, b.chunked) << what;
                EXPECT_EQ(a.content_length, b.content_length) << what;
                expect_same_head(a.head, b.head, what);
            }
        }
    }
}

TEST(FlatParser, RequestFieldsComeInWireOrderWithDuplicatesKept) {
    const std::string wire = kPost +
                             "Host: i\r\nX-B: 1\r\nAccept: */*\r\nx-b: 2\r\nX-Unknown-Thing:  spaced value \t\r\n"
                             "X-B: 3\r\nContent-Length: 2\r\n\r\n{}";
    std::pmr::monotonic_buffer_resource arena;
    RequestParser p(&arena);
    error_code ec;
    EXPECT_EQ(p.put(boost::asio::buffer(wire), ec), wire.size() - 2);  // the header, not eager
    ASSERT_FALSE(ec);
    std::vector<std::pair<std::string, std::string>> got;
    for (const auto& f : p.fields()) got.emplace_back(f.name_string(), f.value());
    const std::vector<std::pair<std::string, std::string>> want = {
        {"Host", "i"},          {"X-B", "1"}, {"Accept", "*/*"},          {"x-b", "2"},
        {"X-Unknown-Thing", "spaced value"}, {"X-B", "3"}, {"Content-Length", "2"}};
    EXPECT_EQ(got, want);
    EXPECT_EQ(p.fields().size(), want.size());
    EXPECT_EQ(p.method(), http::verb::post);
    EXPECT_EQ(p.method_string(), "POST");
    EXPECT_EQ(p.target(), "/v1/chat/completions");
    EXPECT_EQ(p.version(), 11u);
    EXPECT_EQ(p.fields().begin()->name(), http::field::host);
}

TEST(FlatParser, LookupsAreCaseInsensitiveAndFindTheFirst) {
    const std::string wire = kPost +
                             "host: i\r\nCONTENT-type: application/json\r\nAnthropic-VERSION: 1\r\n"
                             "Connection: x-a\r\nX-A: 1\r\nconnection: keep-alive, x-b\r\nanthropic-version: 2\r\n"
                             "Content-Type: text/plain\r\n\r\n";
    std::pmr::monotonic_buffer_resource arena;
    RequestParser p(&arena);
    error_code ec;
    p.put(boost::asio::buffer(wire), ec);
    ASSERT_FALSE(ec);
    ASSERT_TRUE(p.is_done());
    const auto& f = p.fields();
    EXPECT_EQ(f[http::field::content_type], "application/json");
    EXPECT_EQ(f.count(http::field::content_type), 2u);
    EXPECT_EQ(f.count("content-type"), 2u);
    ASSERT_NE(f.find("Content-Type"), nullptr);
    EXPECT_EQ(f.find("Content-Type")->value(), "application/json");
    EXPECT_EQ(f.count("anthropic-version"), 2u);
    ASSERT_NE(f.find("ANTHROPIC-version"), nullptr);
    EXPECT_EQ(f.find("ANTHROPIC-version")->value(), "1");
    EXPECT_EQ(f.count("x-a"), 1u);
    EXPECT_EQ(f.find("x-missing"), nullptr);
    EXPECT_EQ(f.find(http::field::expect), nullptr);
    EXPECT_EQ(f[http::field::expect], "");
    std::vector<std::string> conn;
    for (const auto& c : f.equal_range(http::field::connection)) conn.emplace_back(c.value());
    EXPECT_EQ(conn, (std::vector<std::string>{"x-a", "keep-alive, x-b"}));
    EXPECT_TRUE(head_of(p).anthropic_client);
}

// Both limits are Beast's own, with its errors: the header's size, a
// Content-Length over the body limit, chunks adding up past it.
TEST(FlatParser, HeaderAndBodyLimitsAreBeasts) {
    std::pmr::monotonic_buffer_resource arena;
    {
        RequestParser p(&arena);
        p.header_limit(40);
        const std::string wire = kPost + "Host: i\r\nX-Long: " + std::string(100, 'v') + "\r\n\r\n";
        error_code ec;
        p.put(boost::asio::buffer(wire), ec);
        EXPECT_EQ(ec, http::error::header_limit);
    }
    {
        RequestParser p(&arena);
        p.body_limit(10);
        const std::string wire = kPost + "Host: i\r\nContent-Length: 11\r\n\r\n";
        error_code ec;
        p.put(boost::asio::buffer(wire), ec);
        EXPECT_EQ(ec, http::error::body_limit);
    }
    {
        RequestParser p(&arena);
        p.body_limit(10);
        p.eager(true);
        const std::string wire = kPost + "Host: i\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n";
        error_code ec;
        p.put(boost::asio::buffer(wire), ec);
        EXPECT_EQ(ec, http::error::body_limit);
    }
    {
        ResponseParser p(&arena);
        p.header_limit(30);
        const std::string wire = "HTTP/1.1 200 OK\r\nX-Long: " + std::string(100, 'v') + "\r\n\r\n";
        error_code ec;
        p.put(boost::asio::buffer(wire), ec);
        EXPECT_EQ(ec, http::error::header_limit);
    }
}

// The request body lands in the string the caller lent (its buffer kept),
// Content-Length reserved up front.
TEST(FlatParser, RequestBodyGoesIntoTheLentString) {
    std::pmr::monotonic_buffer_resource arena;
    RequestParser p(&arena);
    std::string lent;
    lent.reserve(4096);
    const char* buffer = lent.data();
    p.body().swap(lent);
    const std::string wire = kPost + "Host: i\r\nContent-Length: 10\r\n\r\n0123456789";
    error_code ec;
    std::size_t used = p.put(boost::asio::buffer(wire.data(), wire.size() - 4), ec);
    ASSERT_FALSE(ec);
    p.eager(true);
    used += p.put(boost::asio::buffer(wire.data() + used, wire.size() - 4 - used), ec);
    EXPECT_TRUE(!ec || ec == http::error::need_more) << ec.message();
    EXPECT_FALSE(p.is_done());
    used += p.put(boost::asio::buffer(wire.data() + used, wire.size() - used), ec);
    EXPECT_FALSE(ec);
    EXPECT_TRUE(p.is_done());
    EXPECT_EQ(used, wire.size());
    EXPECT_EQ(p.body(), "0123456789");
    EXPECT_EQ(p.body().data(), buffer) << "no new buffer for a body that fits";
}

// Responses: the provider's usual answers, streamed ones, and broken framing.
const std::vector<std::pair<std::string, std::string>> kResponses = {
    {"json", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 27\r\nX-Request-Id: r1\r\n\r\n"
             "{\"id\":\"x\",\"usage\":{\"a\":1}}\n"},
    {"sse chunked", "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                    "Set-Cookie: a=1\r\nX-A: 1\r\nSet-Cookie: b=2\r\n\r\n"
                    "10\r\ndata: {\"a\":1}\n\n\r\n1a;x=y\r\ndata: {\"bbbbbbbbbbbb\":2}\n\n\r\n0\r\nTrailer: t\r\n\r\n"},
    {"until eof", "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nthe body runs to the end of the connection"},
    {"HTTP/1.0", "HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc"},
    {"no content", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"},
    {"not modified", "HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"},
    {"continue", "HTTP/1.1 100 Continue\r\n\r\n"},
    {"401", "HTTP/1.1 401 Unauthorized\r\nContent-Length: 14\r\nWWW-Authenticate: Bearer\r\n\r\n{\"key\":\"sk-x\"}"},
    {"empty reason", "HTTP/1.1 500 \r\nContent-Length: 0\r\n\r\n"},
    {"obs-fold", "HTTP/1.1 200 OK\r\nX-Folded: a\r\n  b\r\n\tc\r\nContent-Length: 1\r\n\r\nz"},
    {"connection close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nz"},
    {"two CLs", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nzz"},
    {"CL and TE", "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n"},
    {"bad chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n"},
    {"cut chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc"},
    {"cut body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"},
    {"bad status", "HTTP/1.1 2000 OK\r\n\r\n"},
    {"header cut", "HTTP/1.1 200 OK\r\nContent-Le"},
};

struct ResponseOutcome {
    std::vector<Step> steps;
    bool header_done = false;
    ByName fields;
    int status = 0;
    std::string reason;
    bool keep_alive = false;
    bool chunked = false;
    boost::optional<std::uint64_t> content_length;
};

template <class Parser, class SetPiece, class Left, class Fields, class Status>
ResponseOutcome run_response(Parser& p, std::string_view wire, std::size_t read, std::size_t piece,
                             SetPiece set_piece, Left left, Fields fields, Status status) {
    p.header_limit(64 * 1024);
    p.body_limit(boost::none);
    ResponseOutcome o;
    o.steps = feed(p, wire, read, piece, set_piece, left);
    o.header_done = p.is_header_done();
    if (o.header_done) {
        o.fields = by_name(fields(p));
        std::tie(o.status, o.reason) = status(p);
        o.keep_alive = p.is_done() && p.keep_alive();
        o.chunked = p.chunked();
        o.content_length = p.content_length();
    }
    return o;
}

// The answer's body piece by piece (pieces smaller than a chunk, than a
// read, larger than everything), each put() as http::response_parser with
// http::buffer_body runs it: the relay loop in proxy() sees no difference.
TEST(FlatParser, ResponsesParseAsBeastsBufferBodyParserParsesThem) {
    for (const auto& [name, wire] : kResponses) {
        for (std::size_t read : {std::size_t{1}, std::size_t{9}, std::size_t{64 * 1024}}) {
            if (beast_asserts_on(wire, read)) continue;
            for (std::size_t piece : {std::size_t{1}, std::size_t{5}, std::size_t{16 * 1024}}) {
                const std::string what = name + " read " + std::to_string(read) + " piece " + std::to_string(piece);
                std::pmr::monotonic_buffer_resource arena;
                ResponseParser flat(&arena);
                auto a = run_response(
                    flat, wire, read, piece,
                    [](auto& p, char* d, std::size_t n) {
                        p.body().data = d;
                        p.body().size = n;
                    },
                    [](auto& p) { return p.body().size; }, [](auto& p) -> const auto& { return p.fields(); },
                    [](auto& p) { return std::pair<int, std::string>(p.result_int(), p.reason()); });
                http::response_parser<http::buffer_body> ref;
                auto b = run_response(
                    ref, wire, read, piece,
                    [](auto& p, char* d, std::size_t n) {
                        p.get().body().data = d;
                        p.get().body().size = n;
                    },
                    [](auto& p) { return p.get().body().size; },
                    [](auto& p) -> const auto& { return p.get().base(); },
                    [](auto& p) { return std::pair<int, std::string>(p.get().result_int(), p.get().reason()); });
                EXPECT_EQ(a.steps, b.steps) << what;
                ASSERT_EQ(a.header_done, b.header_done) << what;
                if (!a.header_done) continue;
                EXPECT_EQ(a.fields, b.fields) << what;
                EXPECT_EQ(a.status, b.status) << what;
                EXPECT_EQ(a.reason, b.reason) << what;
                EXPECT_EQ(a.keep_alive, b.keep_alive) << what;
                EXPECT_EQ(a.chunked, b.chunked) << what;
                EXPECT_EQ(a.content_length, b.content_length) << what;
            }
        }
    }
}

// A chunked answer's body comes out decoded, in pieces no larger than the
// room given, need_buffer each time the piece is full; no room: nothing taken.
TEST(FlatParser, ChunkedResponseBodyComesInPieces) {
    const std::string wire =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        "7\r\ndata: 1\r\n9\r\n\n\ndata: 2\r\n0\r\n\r\n";
    std::pmr::monotonic_buffer_resource arena;
    ResponseParser p(&arena);
    error_code ec;
    std::size_t used = p.put(boost::asio::buffer(wire), ec);
    ASSERT_FALSE(ec);
    ASSERT_TRUE(p.is_header_done());
    EXPECT_TRUE(p.chunked());
    EXPECT_EQ(p.fields()[http::field::content_type], "text/event-stream");
    // No piece: the first chunk's header is taken, then need_buffer, no body byte consumed.
    for (int i = 0; i < 10; ++i) {
        const std::size_t n = p.put(boost::asio::buffer(wire.data() + used, wire.size() - used), ec);
        used += n;
        if (ec) break;
        ASSERT_NE(n, 0u);
    }
    EXPECT_EQ(ec, http::error::need_buffer);
    EXPECT_EQ(wire.substr(used, 7), "data: 1");
    std::string body;
    char piece[4];
    for (int i = 0; i < 100 && !p.is_done(); ++i) {
        p.body().data = piece;
        p.body().size = sizeof piece;
        used += p.put(boost::asio::buffer(wire.data() + used, wire.size() - used), ec);
        ASSERT_TRUE(!ec || ec == http::error::need_buffer) << ec.message();
        const std::size_t got = sizeof piece - p.body().size;
        EXPECT_LE(got, sizeof piece);
        if (ec == http::error::need_buffer) {
            EXPECT_EQ(got, sizeof piece) << "need_buffer only when full";
        }
        body.append(piece, got);
    }
    EXPECT_TRUE(p.is_done());
    EXPECT_EQ(used, wire.size());
    EXPECT_EQ(body, "data: 1\n\ndata: 2");
    EXPECT_TRUE(p.keep_alive());
}

// The fields live in the arena and nowhere else: a header of many tiny
// fields costs the arena a bounded number of bytes per header byte (the
// gateway's arena cap is sized from it).
TEST(FlatParser, FieldsTakeABoundedShareOfTheArena) {
    struct Counting : std::pmr::memory_resource {
        std::size_t bytes = 0;
        void* do_allocate(std::size_t n, std::size_t a) override {
            bytes += n;
            return std::pmr::new_delete_resource()->allocate(n, a);
        }
        void do_deallocate(void* p, std::size_t n, std::size_t a) override {
            std::pmr::new_delete_resource()->deallocate(p, n, a);
        }
        bool do_is_equal(const memory_resource& o) const noexcept override { return this == &o; }
    } upstream;
    std::string wire = "HTTP/1.1 200 OK\r\n";
    const std::size_t start = wire.size();
    for (int i = 0; i < 4000; ++i) wire += "a:\r\n";
    wire += "Content-Length: 0\r\n\r\n";
    const std::size_t header_bytes = wire.size() - start;
    std::pmr::monotonic_buffer_resource arena(&upstream);
    ResponseParser p(&arena);
    p.header_limit(64 * 1024);
    error_code ec;
    p.put(boost::asio::buffer(wire), ec);
    ASSERT_FALSE(ec);
    EXPECT_EQ(p.fields().size(), 4001u);
    EXPECT_EQ(p.fields().count("a"), 4000u);
    EXPECT_LE(upstream.bytes, 16 * header_bytes) << "8 a header byte, and the arena's growth";
}

}  // namespace
}  // namespace redir::terminator
