// The usage scanners against their byte-at-a-time reference
// (tests/support/usage_reference.hpp): on provider answers, hostile bodies and
// random mutations of both, fed whole, split at every boundary, byte by byte
// and at random boundaries, the fields taken after every piece must be the
// reference's. A difference is a verdict changed by the faster scan.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "terminator/usage.hpp"
#include "usage_reference.hpp"

namespace redir::terminator {
namespace {

bool same(const UsageFields& a, const UsageFields& b) {
    return a.prompt_tokens == b.prompt_tokens && a.completion_tokens == b.completion_tokens &&
           a.input_tokens == b.input_tokens && a.output_tokens == b.output_tokens &&
           a.cache_creation_input_tokens == b.cache_creation_input_tokens &&
           a.cache_read_input_tokens == b.cache_read_input_tokens;
}

std::string show(const UsageFields& f) {
    auto o = [](const std::optional<std::uint64_t>& v) { return v ? std::to_string(*v) : std::string("-"); };
    return "prompt " + o(f.prompt_tokens) + " completion " + o(f.completion_tokens) + " input " + o(f.input_tokens) +
           " output " + o(f.output_tokens) + " cache_creation " + o(f.cache_creation_input_tokens) + " cache_read " +
           o(f.cache_read_input_tokens);
}

std::string printable(std::string_view s) {
    std::string o;
    for (char c : s.substr(0, 160)) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7F) o += c;
        else o += "\\x" + std::string(1, "0123456789abcdef"[u >> 4]) + "0123456789abcdef"[u & 15];
    }
    return s.size() > 160 ? o + "...(" + std::to_string(s.size()) + " bytes)" : o;
}

// Feeds BODY cut at CUTS (ascending offsets) to both scanners of one kind and
// compares what they took after every piece.
template <class New, class Ref>
::testing::AssertionResult agree(std::string_view body, const std::vector<std::size_t>& cuts, const char* kind) {
    New n;
    Ref r;
    std::size_t from = 0;
    for (std::size_t i = 0; i <= cuts.size(); ++i) {
        const std::size_t to = i < cuts.size() ? cuts[i] : body.size();
        n.feed(body.substr(from, to - from));
        r.feed(body.substr(from, to - from));
        if (!same(n.fields(), r.fields()))
            return ::testing::AssertionFailure()
                   << kind << " scanner differs after the piece ending at " << to << " of " << body.size()
                   << ": new {" << show(n.fields()) << "} reference {" << show(r.fields()) << "} body "
                   << printable(body);
        from = to;
    }
    return ::testing::AssertionSuccess();
}

// Both kinds of scanner (a JSON body read as SSE and an SSE stream read as
// JSON are hostile inputs too).
::testing::AssertionResult agree_both(std::string_view body, const std::vector<std::size_t>& cuts) {
    auto json = agree<JsonUsageScanner, reference::JsonUsageScanner>(body, cuts, "JSON");
    if (!json) return json;
    return agree<SseUsageScanner, reference::SseUsageScanner>(body, cuts, "SSE");
}

// Whole, at every single cut (past 8 KB: the first 2 KB and 300 random ones),
// byte by byte (up to 4 KB), and at random cuts.
void expect_agree_everywhere(const std::string& body, std::mt19937_64& rng) {
    ASSERT_TRUE(agree_both(body, {}));
    if (body.size() <= 8192) {
        for (std::size_t cut = 0; cut <= body.size(); ++cut) ASSERT_TRUE(agree_both(body, {cut}));
    } else {
        for (std::size_t cut = 0; cut <= 2048; ++cut) ASSERT_TRUE(agree_both(body, {cut}));
        for (int k = 0; k < 300; ++k) ASSERT_TRUE(agree_both(body, {rng() % (body.size() + 1)}));
    }
    if (body.size() <= 4096) {
        std::vector<std::size_t> every;
        for (std::size_t i = 1; i < body.size(); ++i) every.push_back(i);
        ASSERT_TRUE(agree_both(body, every));
    }
    for (int round = 0; round < 20; ++round) {
        std::vector<std::size_t> cuts;
        std::size_t at = 0;
        // Pieces of 1..24 bytes, or up to a few hundred: around both the 8-byte step and whole tokens.
        const std::size_t span = round % 2 ? 24 : 300;
        while (true) {
            at += 1 + rng() % span;
            if (at >= body.size()) break;
            cuts.push_back(at);
        }
        ASSERT_TRUE(agree_both(body, cuts));
    }
}

std::string sse(const std::vector<std::string>& events, std::string_view eol = "\n") {
    std::string o;
    for (const auto& e : events) {
        o += "data: ";
        o += e;
        o += eol;
        o += eol;
    }
    return o;
}

std::vector<std::string> corpus() {
    const std::string openai =
        R"({"id":"chatcmpl-8Zq3x","object":"chat.completion","created":1733260000,"model":"gpt-4o-mini",)"
        R"("choices":[{"index":0,"message":{"role":"assistant","content":"f(42) is \"85\"\n{\"usage\":{\"prompt_tokens\":9}}","refusal":null},)"
        R"("logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":1032,"completion_tokens":31,"total_tokens":1063,)"
        R"("prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_0b"})";
    const std::string anthropic =
        R"({"id":"msg_01","type":"message","role":"assistant","content":[{"type":"text","text":"usage: {\"input_tokens\": 5}"}],)"
        R"("model":"claude-3-5-sonnet","stop_reason":"end_turn","stop_sequence":null,)"
        R"("usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":7,"output_tokens":40}})";
    const std::string responses =
        R"({"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"hi"}]}],)"
        R"("usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"total_tokens":123}})";
    std::string embeddings = R"({"object":"list","data":[{"object":"embedding","index":0,"embedding":[)";
    for (int i = 0; i < 300; ++i) embeddings += (i ? "," : "") + std::string(i % 3 ? "-0.00" : "0.0") + std::to_string(1000 + i * 7);
    embeddings += R"(]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}})";

    std::vector<std::string> openai_chunks;
    for (int i = 0; i < 12; ++i)
        openai_chunks.push_back(R"({"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"tok)" +
                                std::to_string(i) + R"( \"q\" \\"},"finish_reason":null}],"usage":null})");
    openai_chunks.push_back(R"({"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":12,"total_tokens":32}})");
    openai_chunks.push_back("[DONE]");
    const std::vector<std::string> anthropic_events = {
        R"({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude","usage":{"input_tokens":25,"cache_read_input_tokens":3,"output_tokens":1}}})",
        R"({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}})",
        R"({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\"usage\":{\"output_tokens\":999}"}})",
        R"({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}})",
        R"({"type":"message_stop"})"};
    const std::vector<std::string> responses_events = {
        R"({"type":"response.created","response":{"id":"resp_1","status":"in_progress","usage":null}})",
        R"({"type":"response.output_text.delta","delta":"Hel"})",
        R"({"type":"response.completed","response":{"id":"resp_1","status":"completed","output":[],"usage":{"input_tokens":10,"output_tokens":4,"total_tokens":14}}})"};
    std::string anthropic_sse;
    for (const auto& e : anthropic_events) anthropic_sse += "event: x\r\ndata: " + e + "\r\n\r\n";
    // Data split over lines, a comment, a field without a colon, CR-only line ends.
    const std::string multiline_sse = ": keep-alive\rdata: {\"usage\":\rdata:{\"prompt_tokens\":4,\rdata: \"completion_tokens\":2}}\r\rdata\r\r";

    std::vector<std::string> c = {openai, anthropic, responses, embeddings, sse(openai_chunks), sse(openai_chunks, "\r\n"),
                                  anthropic_sse, sse(responses_events), multiline_sse};
    // Forgeries and hostile shapes.
    c.push_back(R"({"choices":[{"usage":{"prompt_tokens":1}}],"x":{"usage":{"prompt_tokens":2}},"usage":{"prompt_tokens":3}})");
    c.push_back(R"({"usage":{"prompt_tokens":1.5,"completion_tokens":-3,"input_tokens":2e3,"output_tokens":1000000000001,"cache_read_input_tokens":99999999999999999999999}})");
    c.push_back(R"({"us\u0061ge":{"prompt_tokens":1},"usage":{"pr\u006fmpt_tokens":2,"completion_tokens":3}})");
    c.push_back(R"({"usage":{"prompt_tokens":1,"completion_tokens":2})");           // never closes
    c.push_back(R"({"usage":{"prompt_tokens":1,"completion_tokens":2}}garbage{"usage":{"prompt_tokens":7}})");
    c.push_back(R"([{"usage":{"prompt_tokens":1}}])");
    c.push_back(" \t\r\n{ \"usage\" \n:\t{ \"prompt_tokens\" : 11 , \"completion_tokens\"\r:\n22 } , \"x\" : true }  ");
    c.push_back(R"({"a":true,"b":false,"c":null,"d":[true,[null,{"e":[]}]],"usage":{"input_tokens":5,"output_tokens":6}})");
    c.push_back(R"({"message":{"usage":{"input_tokens":1}},"response":{"usage":{"output_tokens":2}},"message":{"x":{"usage":{"input_tokens":9}}}})");
    c.push_back(R"({"usage":{"prompt_tokens":1,"usage":{"prompt_tokens":5}}})");
    c.push_back(R"({"a_key_much_longer_than_thirty_two_bytes_usage":{"prompt_tokens":1},"usage":{"prompt_tokens_and_then_some_more_bytes_x":3,"prompt_tokens":4}})");
    c.push_back(R"({"usage":{"prompt_tokens":1}, "usage":{"completion_tokens":2}})");
    c.push_back(R"({"x":"\\","usage":{"prompt_tokens":3},"y":"\\\"","z":["\\\\\"]\"{"]})");
    c.push_back(R"({"usage":{"prompt_tokens":}})");
    c.push_back(R"({"usage":{"prompt_tokens"1}})");
    c.push_back(R"({"usage":{"prompt_tokens":1 2}})");
    c.push_back(R"({"usage":{"prompt_tokens":12345678901234567890123}})");
    c.push_back(R"({"usage":{"prompt_tokens":0000012,"completion_tokens":-0}})");
    c.push_back(R"({"usage":{"prompt_tokens":1]}})");
    c.push_back(R"({"usage":[{"prompt_tokens":1}],"x":]})");
    c.push_back("{\"usage\":{\"prompt_tokens\":1\0,\"completion_tokens\":2}}" + std::string(1, '\0') + "x");
    c.push_back(std::string("{\"content\":\"\xff\xfe\x80\xc0\xaf\",\"usage\":{\"prompt_tokens\":\xe2\x82\xac}}"));
    c.push_back(std::string("{\"content\":\"\0\0\0\0\0\0\0\0\0\",\"usage\":{\"prompt_tokens\":3}}", 50));
    // Deep nesting: skipped (a counter), or unbalanced.
    c.push_back(R"({"choices":)" + std::string(20000, '[') + std::string(20000, ']') + R"(,"usage":{"prompt_tokens":8}})");
    c.push_back(R"({"choices":)" + std::string(5000, '{') + R"("usage":{"prompt_tokens":1}})");
    c.push_back(R"({"x":)" + std::string(3000, '[') + std::string(2999, '}') + R"(]],"usage":{"prompt_tokens":2}})");
    // Huge strings, with quotes and escapes near every 8-byte boundary.
    std::string huge(100000, 'a');
    for (std::size_t i = 13; i < huge.size(); i += 61) huge[i] = (i / 61) % 2 ? '\\' : 'q';
    for (std::size_t i = 0; i + 1 < huge.size(); ++i)
        if (huge[i] == '\\') huge[++i] = '"';
    c.push_back(R"({"content":")" + huge + R"(","usage":{"prompt_tokens":4},"tail":[")" + huge + R"("]})");
    std::string backslashes(4097, '\\');
    c.push_back(R"({"content":")" + backslashes + R"(","usage":{"prompt_tokens":5}})");  // odd: the quote is escaped
    c.push_back(R"({"content":")" + backslashes + R"(\","usage":{"prompt_tokens":6}})");
    // SSE hostility: long field names, data without space, events without blank lines, NUL in lines.
    c.push_back("dataaaaaaaaa: {\"usage\":{\"prompt_tokens\":1}}\n\ndata:{\"usage\":{\"prompt_tokens\":2}}\ndata: {\"usage\":{\"prompt_tokens\":3}}\n\n");
    c.push_back(std::string("data: {\"usage\":{\"prompt_tokens\":1}}\0\n\r\n\n\rdata: \0\n\n", 46));
    c.push_back("event: message_start\ndata: {\"message\":\ndata: {\"usage\":{\"input_tokens\":1}}}\n\n");
    return c;
}

// A random byte edit: flip, insert a structural byte, delete, or duplicate a span.
std::string mutate(const std::string& s, std::mt19937_64& rng) {
    static constexpr char kBytes[] = "{}[]\":,\\ \n\r0123456789-.eEtrufalsn\0\x80\xff";
    std::string o = s;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits && !o.empty(); ++k) {
        const std::size_t at = rng() % o.size();
        switch (rng() % 4) {
            case 0: o[at] = kBytes[rng() % (sizeof(kBytes) - 1)]; break;
            case 1: o.insert(o.begin() + static_cast<std::ptrdiff_t>(at), kBytes[rng() % (sizeof(kBytes) - 1)]); break;
            case 2: o.erase(at, 1 + rng() % 3); break;
            default: {
                const std::size_t len = std::min<std::size_t>(1 + rng() % 40, o.size() - at);
                o.insert(at, o.substr(at, len));
            }
        }
    }
    return o;
}

// Token soup: keys the scanner looks for, values of every kind, brackets
// and separators in random order, so states meet bytes they rarely see.
std::string soup(std::mt19937_64& rng) {
    static const char* kTokens[] = {"{", "}", "[", "]", ",", ":", " ", "\n", "\"usage\"", "\"message\"",
                                    "\"response\"", "\"prompt_tokens\"", "\"completion_tokens\"", "\"input_tokens\"",
                                    "\"output_tokens\"", "\"cache_read_input_tokens\"", "\"cache_creation_input_tokens\"",
                                    "12", "0", "-4", "1.5", "true", "null", "\"te\\\"xt\"", "\"\\\\\"", "\"a\"",
                                    "\"usage\":{", "{\"usage\":{\"prompt_tokens\":", "data: ", "\n\n", "\r\n", "\r"};
    std::string o = "{";
    const int n = 1 + static_cast<int>(rng() % 60);
    for (int i = 0; i < n; ++i) o += kTokens[rng() % std::size(kTokens)];
    return o;
}

TEST(UsageScannerDifferential, AgreesWithReferenceOnAnswersAndHostileBodies) {
    std::mt19937_64 rng(20261204);
    for (const auto& body : corpus()) {
        SCOPED_TRACE(printable(body));
        expect_agree_everywhere(body, rng);
    }
}

TEST(UsageScannerDifferential, AgreesWithReferenceOnMutatedBodies) {
    std::mt19937_64 rng(11);
    const auto c = corpus();
    for (int i = 0; i < 3000; ++i) {
        const auto& base = c[rng() % c.size()];
        if (base.size() > 4096) continue;  // the big ones are covered above
        const std::string body = mutate(base, rng);
        std::vector<std::size_t> cuts;
        for (std::size_t at = 1 + rng() % 16; at < body.size(); at += 1 + rng() % 16) cuts.push_back(at);
        ASSERT_TRUE(agree_both(body, {})) << "mutation " << i;
        ASSERT_TRUE(agree_both(body, cuts)) << "mutation " << i;
    }
}

TEST(UsageScannerDifferential, AgreesWithReferenceOnTokenSoup) {
    std::mt19937_64 rng(7);
    for (int i = 0; i < 5000; ++i) {
        const std::string body = soup(rng);
        std::vector<std::size_t> cuts;
        for (std::size_t at = 1 + rng() % 9; at < body.size(); at += 1 + rng() % 9) cuts.push_back(at);
        ASSERT_TRUE(agree_both(body, {})) << "soup " << i;
        ASSERT_TRUE(agree_both(body, cuts)) << "soup " << i;
    }
}

// restart() between documents, as SSE events do, with a document left open.
TEST(UsageScannerDifferential, AgreesAcrossRestarts) {
    std::mt19937_64 rng(3);
    const auto c = corpus();
    for (int i = 0; i < 500; ++i) {
        JsonUsageScanner n;
        reference::JsonUsageScanner r;
        for (int d = 0; d < 4; ++d) {
            const auto& body = c[rng() % c.size()];
            const std::size_t len = rng() % (body.size() + 1);  // often cut off mid-document
            n.feed(std::string_view(body).substr(0, len));
            r.feed(std::string_view(body).substr(0, len));
            ASSERT_TRUE(same(n.fields(), r.fields())) << show(n.fields()) << " vs " << show(r.fields());
            n.restart();
            r.restart();
        }
    }
}

}  // namespace
}  // namespace redir::terminator
