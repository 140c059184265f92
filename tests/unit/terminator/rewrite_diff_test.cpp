// rewrite_model against the rapidjson Reader + Writer rewrite it replaced
// (tests/support/rewrite_reference.hpp), on generated request bodies, hostile
// ones, and every truncation and single-byte change of a few: the same
// verdict, the same 400 sentence word for word, the same clipped model and
// stream flag, the same provider-fetch finding from the one-pass scan, and a
// body that reads back (rapidjson Reader into Writer) to exactly the bytes
// the reference wrote. A body that is already as rapidjson writes it leaves
// byte for byte as the reference's.
#include <gtest/gtest.h>

#include <rapidjson/reader.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <random>
#include <string>
#include <vector>

#include "rewrite_reference.hpp"
#include "terminator/provider_fetch.hpp"
#include "terminator/request.hpp"

namespace redir::terminator {
namespace {

std::string printable(std::string_view s) {
    std::string o;
    for (char c : s.substr(0, 200)) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7F) o += c;
        else o += "\\x" + std::string(1, "0123456789abcdef"[u >> 4]) + "0123456789abcdef"[u & 15];
    }
    return s.size() > 200 ? o + "...(" + std::to_string(s.size()) + " bytes)" : o;
}

std::string show(const std::optional<FetchFinding>& f) { return f ? f->where + " / " + f->what : "none"; }

std::size_t g_accepted = 0, g_refused = 0, g_byte_identical = 0;

::testing::AssertionResult agree(const std::string& body, bool force_usage, std::size_t log_max,
                                 std::string_view model = "served-model") {
    FetchScanner ns(log_max), rs(log_max);
    const auto n = rewrite_model(body, model, log_max, force_usage, &ns);
    const auto r = reference::rewrite_model(body, model, log_max, force_usage, &rs);
    auto fail = [&](const std::string& what) {
        return ::testing::AssertionFailure() << what << " (force_usage " << force_usage << ", log_max " << log_max
                                             << ") body " << printable(body);
    };
    if (n.ok != r.ok)
        return fail(std::string("verdict: new ") + (n.ok ? "ok" : n.error) + ", reference " + (r.ok ? "ok" : r.error));
    if (n.truncated != r.truncated) return fail("truncated differs");
    if (!n.ok) {
        ++g_refused;
        if (n.error != r.error) return fail("400 sentence: new \"" + n.error + "\" reference \"" + r.error + "\"");
        if (!n.body.empty() || n.body.capacity() > 15) return fail("a refused body is still held");
        return ::testing::AssertionSuccess();
    }
    ++g_accepted;
    if (n.model_requested != r.model_requested)
        return fail("model_requested: new " + printable(n.model_requested) + " reference " + printable(r.model_requested));
    if (n.stream != r.stream) return fail("stream differs");
    if (!n.error.empty()) return fail("accepted with an error");
    const std::string back = reference::read_back(n.body);
    if (back != r.body) return fail("body reads back as " + printable(back) + "\n  reference wrote " + printable(r.body) +
                                    "\n  new body " + printable(n.body));
    if (reference::read_back(body) == body) {
        // Already as rapidjson writes it: nothing but the edits may differ, and those are written alike.
        if (n.body != r.body) return fail("a canonical body does not leave byte for byte: " + printable(n.body));
        ++g_byte_identical;
    }
    if (show(ns.finding()) != show(rs.finding()))
        return fail("one-pass finding: new " + show(ns.finding()) + " reference " + show(rs.finding()));
    // The scan judged what leaves: a second parse of the body that left finds the same.
    const auto second = find_provider_fetch(n.body, {}, log_max);
    if (show(second) != show(ns.finding()))
        return fail("second parse of the body that left finds " + show(second) + ", the one-pass scan " +
                    show(ns.finding()));
    // The scanner changes nothing of the rewrite.
    const auto plain = rewrite_model(body, model, log_max, force_usage);
    if (plain.body != n.body || plain.model_requested != n.model_requested || plain.stream != n.stream)
        return fail("the rewrite differs with and without a scanner");
    return ::testing::AssertionSuccess();
}

void expect_agree(const std::string& body) {
    for (bool force : {false, true})
        for (std::size_t log_max : {std::size_t{6}, kLogStringMax}) ASSERT_TRUE(agree(body, force, log_max));
}

// ---- Generated request bodies

class Gen {
public:
    explicit Gen(std::uint64_t seed) : rng_(seed) {}

    std::string body() {
        std::string o = "{";
        ws(o);
        const int n = static_cast<int>(pick(8));
        std::vector<std::string> used;
        for (int i = 0; i < n; ++i) {
            if (i) o += ',', ws(o);
            std::string k = top_key();
            if (pick(40) == 0 && !used.empty()) k = used[pick(used.size())];  // a repeated key now and then
            used.push_back(k);
            o += k;
            ws(o);
            o += ':';
            ws(o);
            top_value(o, k);
            ws(o);
        }
        o += '}';
        return o;
    }

    std::uint64_t pick(std::uint64_t n) { return n ? rng_() % n : 0; }

private:
    void ws(std::string& o) {
        static const char* const spaces[] = {"", "", "", "", " ", "\n  ", "\t", "\r\n", "  "};
        o += spaces[pick(std::size(spaces))];
    }

    std::string top_key() {
        static const char* const keys[] = {
            R"("model")",         R"("stream")",       R"("stream_options")", R"("messages")",
            R"("tools")",         R"("temperature")",  R"("max_tokens")",     R"("mod\u0065l")",
            R"("str\u0065am")",   R"("stream\u005foptions")", R"("mcp_servers")", R"("x")",
            R"("model ")",        R"("Model")",        R"("\u006d\u006f\u0064\u0065\u006c")", R"("")",
        };
        if (pick(6) == 0) return string_text();
        return keys[pick(std::size(keys))];
    }

    void top_value(std::string& o, const std::string& k) {
        if (k.find("stream_options") != std::string::npos || k.find("stream\\u005f") != std::string::npos) {
            switch (pick(5)) {
                case 0: o += "null"; return;
                case 1: o += R"([1,{"include_usage":false}])"; return;
                default: stream_options(o); return;
            }
        }
        if (k.find("stream") != std::string::npos || k.find("str\\u0065am") != std::string::npos) {
            static const char* const v[] = {"true", "false", "null", "\"true\"", "1", "[true]"};
            o += v[pick(std::size(v))];
            return;
        }
        value(o, 0);
    }

    void stream_options(std::string& o) {
        o += '{';
        ws(o);
        const int n = static_cast<int>(pick(4));
        for (int i = 0; i < n; ++i) {
            if (i) o += ',', ws(o);
            static const char* const keys[] = {R"("include_usage")", R"("include_\u0075sage")", R"("x")",
                                               R"("type")", R"("o")"};
            o += keys[pick(std::size(keys))];
            ws(o);
            o += ':';
            ws(o);
            value(o, 2);
            ws(o);
        }
        o += '}';
    }

    void value(std::string& o, int depth) {
        const std::uint64_t kind = depth > 5 ? 2 + pick(4) : pick(8);
        switch (kind) {
            case 0: case 1: {  // object
                o += '{';
                ws(o);
                const int n = static_cast<int>(pick(5));
                for (int i = 0; i < n; ++i) {
                    if (i) o += ',', ws(o);
                    static const char* const keys[] = {R"("type")", R"("url")", R"("image_url")", R"("role")",
                                                       R"("content")", R"("model")", R"("typ\u0065")",
                                                       R"("include_usage")", R"("server_url")", R"("text")"};
                    o += pick(3) ? std::string(keys[pick(std::size(keys))]) : string_text();
                    ws(o);
                    o += ':';
                    ws(o);
                    value(o, depth + 1);
                    ws(o);
                }
                o += '}';
                return;
            }
            case 2: {  // array
                o += '[';
                ws(o);
                const int n = static_cast<int>(pick(4));
                for (int i = 0; i < n; ++i) {
                    if (i) o += ',', ws(o);
                    value(o, depth + 1);
                    ws(o);
                }
                o += ']';
                return;
            }
            case 3: case 4: o += string_text(); return;
            case 5: o += number(); return;
            default: {
                static const char* const lit[] = {"true", "false", "null"};
                o += lit[pick(3)];
                return;
            }
        }
    }

    std::string number() {
        static const char* const nums[] = {
            "0", "-0", "1", "-1", "42", "0.5", "-0.0", "3.14159", "1e5", "1E5", "1e+5", "1e-5", "2.5E-3",
            "12345678901234567890", "18446744073709551615", "18446744073709551616", "-9223372036854775808",
            "-9223372036854775809", "123456789012345678901234567890", "1e308", "1e309", "1.5e308", "0e999",
            "0e-999", "1E+400", "1e-400", "0.1e309", "0.12e310", "123.456e305", "1.00000000000000000000001e300",
            "9007199254740993.5e292", "100000000000000000000.5e288", "-1e400", "1e0308", "0.0000000000000000001e327",
        };
        if (pick(10) == 0) {
            // A long integer (about where rapidjson's double overflows) or a long fraction.
            std::string s = pick(2) ? "-" : "";
            s += std::to_string(1 + pick(9));
            const std::size_t digits = 290 + pick(40);
            for (std::size_t i = 0; i < digits; ++i) s += static_cast<char>('0' + pick(10));
            if (pick(2)) s += ".5e" + std::to_string(pick(30));
            return s;
        }
        return nums[pick(std::size(nums))];
    }

    std::string string_text() {
        std::string s = "\"";
        const int pieces = static_cast<int>(pick(6));
        for (int i = 0; i < pieces; ++i) {
            switch (pick(14)) {
                case 0: s += R"(\")"; break;
                case 1: s += R"(\\)"; break;
                case 2: s += R"(\/)"; break;
                case 3: s += R"(\b\f\n\r\t)"; break;
                case 4: {
                    static const char* const u[] = {R"(\u0000)", R"(\u0041)", R"(\u00e9)", R"(\u2028)",
                                                    R"(\ud83d\ude00)", R"(\udc00)", R"(\uDBFF\uDFFF)", R"(\uFFFF)",
                                                    R"(\u001f)", R"(\u007F)", R"(\u0022)", R"(\u005c)"};
                    s += u[pick(std::size(u))];
                    break;
                }
                case 5: s += "caf\xc3\xa9"; break;
                case 6: s += "\xe2\x82\xac\xf0\x9f\x98\x80"; break;
                case 7: s += std::string(1 + pick(20), static_cast<char>('a' + pick(26))); break;
                case 8: s += std::string(pick(3) ? 7 + pick(10) : 3000 + pick(9000), 'x'); break;
                case 9: s += "mcp"; break;
                case 10: s += "https://203.0.113.9/x"; break;
                case 11: s += "data:image/png;base64,AAAA"; break;
                case 12: s += "web_search"; break;
                default: s += " "; break;
            }
        }
        return s + "\"";
    }

    std::mt19937_64 rng_;
};

// A byte change of BODY: a cut, a byte put in, dropped, or replaced.
std::string mutate(const std::string& body, Gen& g) {
    static const char bytes[] = {'\0', '"', '\\', '{', '}', '[', ']', ',', ':', ' ', 'e', '-', '0', '.', 'u',
                                 'x',  '\n', '\x01', '\x7f', '\x80', '\xc3', '\xed', '\xf4', '\xff', '/', 't'};
    std::string m = body;
    const std::size_t at = g.pick(body.size() + 1);
    const char b = bytes[g.pick(sizeof(bytes))];
    switch (g.pick(4)) {
        case 0: m.resize(at); break;
        case 1: m.insert(m.begin() + static_cast<std::ptrdiff_t>(at), b); break;
        case 2: if (at < m.size()) m.erase(at, 1); break;
        default: if (at < m.size()) m[at] = b; break;
    }
    return m;
}

TEST(RewriteDiff, GeneratedBodiesAndTheirMutations) {
    Gen g(20261204);
    for (int i = 0; i < 2500; ++i) {
        const std::string body = g.body();
        ASSERT_NO_FATAL_FAILURE(expect_agree(body));
        for (int k = 0; k < 6; ++k) ASSERT_NO_FATAL_FAILURE(expect_agree(mutate(body, g)));
    }
    // Both sides of every question were asked.
    EXPECT_GT(g_accepted, 10000u);
    EXPECT_GT(g_refused, 10000u);
    EXPECT_GT(g_byte_identical, 1000u);
}

// Every cut, and every byte of a set put in at every position, of bodies
// that hold each thing the rewrite edits or checks.
TEST(RewriteDiff, EveryCutAndInsertedByteOfEditedBodies) {
    const std::vector<std::string> bodies = {
        R"({"model":"gpt-4o","messages":[{"role":"user","content":"hi \"there\"\n"}],"max_tokens":16})",
        R"({ "stream" : true , "stream_options" : { "include_usage" : false , "x" : [1, 2.5e3] } , "n":-0.5 })",
        R"({"messages":[{"content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}],"mod\u0065l":{"a":[]}})",
        "{\"k\\u00e9\":\"\xc3\xa9\\ud83d\\ude00\\/\",\"stream\":false,\"stream_options\":null,\"t\":[true,false,null]}",
        R"({"a":{"b":{"c":[[],{},[{}]]}},"model":"x","tools":[{"type":"web_search"}]})",
    };
    static const char bytes[] = {'\0', '"', '\\', '{', '}', '[', ']', ',', ':', ' ', '1', 'e', '\x80', '\xff', 'u'};
    for (const auto& body : bodies) {
        ASSERT_NO_FATAL_FAILURE(expect_agree(body));
        for (std::size_t cut = 0; cut <= body.size(); ++cut) {
            ASSERT_NO_FATAL_FAILURE(expect_agree(body.substr(0, cut)));
            ASSERT_NO_FATAL_FAILURE(expect_agree(body.substr(0, cut) + std::string(1, '\0') + body.substr(cut)));
        }
        for (std::size_t at = 0; at <= body.size(); ++at)
            for (char b : bytes) {
                std::string m = body;
                m.insert(m.begin() + static_cast<std::ptrdiff_t>(at), b);
                ASSERT_NO_FATAL_FAILURE(expect_agree(m));
                if (at < body.size()) {
                    m = body;
                    m[at] = b;
                    ASSERT_NO_FATAL_FAILURE(expect_agree(m));
                }
            }
    }
}

TEST(RewriteDiff, HostileBodies) {
    std::vector<std::string> bodies = {
        "", " ", "\v{}", "\f", " \t\r\n{} ", "\0", std::string("\0{}", 3), std::string("{}\0garbage", 10),
        std::string("{} \0 x", 6), "{}x", "{} {}", "[]", "[1]", "1", "\"x\"", "null", "true", "{", "}",
        R"({"a"})", R"({"a":})", R"({"a":1,})", "{,}", R"({"a":[1,]})", R"({"a":[,1]})", R"({"a" 1})",
        R"({"a":01})", R"({"a":-})", R"({"a":-a})", R"({"a":1.})", R"({"a":.5})", R"({"a":1e})", R"({"a":1e+})",
        R"({"a":+1})", R"({"a":1E400})", R"({"a":1e308})", R"({"a":0.1e309})", R"({"a":0.1e310})", R"({"a":tru})",
        R"({"a":nul})", R"({"a":True})", R"({"a":NaN})", R"({"a":Infinity})", R"({"a":-Infinity})",
        R"({"a":'x'})", R"({a:1})", "{\"a\":\"\\x\"}", "{\"a\":\"\\u12\"}", "{\"a\":\"\\u12g4\"}",
        "{\"a\":\"\\ud800\"}", "{\"a\":\"\\ud800x\"}", "{\"a\":\"\\ud800\\u0041\"}", "{\"a\":\"\\ud800\\udbff\"}",
        "{\"a\":\"\\udc00\"}", "{\"a\":\"\\udfff\\ud800\\udc00\"}", "{\"a\":\"\x01\"}", "{\"a\":\"\t\"}",
        "{\"a\":\"\x7f\"}", "{\"a\":\"\xc0\xaf\"}", "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xf4\x90\x80\x80\"}",
        "{\"a\":\"\xe2\x82\"}", "{\"a\":\"\xe2\x82", "{\"a\":\"x\xf0\x9f\x98\"}", "\xef\xbb\xbf{}",
        "{\"a\":1}\xff", "{\"a\":1}\0\xff", R"({"model":"a","model":"b"})", R"({"model":"a","mod\u0065l":"b"})",
        R"({"model":1,"x":2,"x":3})", R"({"x":{"model":1,"model":2}})", R"({"model":null})", R"({"model":[1,{"a":2}]})",
        R"({"model":"\u0000\ud83d\ude00\n"})", R"({"\u0000":1,"\u0000":2})", R"({"":1,"":2})",
        R"({"stream":true,"stream_options":{}})", R"({"stream":true,"stream_options":{ }})",
        R"({"stream":true,"stream_options":{"include_usage":true}})",
        R"({"stream":true,"stream_options":{"include_usage":{"a":[1,{"b":2}]},"k":1,"include_usage":[]}})",
        R"({"stream_options":{"x":1},"stream":true})", R"({"stream_options":{"x":1},"stream":false})",
        R"({"stream":true,"stream_options":"x","model":"m"})", R"({"stream":true,"stream_options":[[[]]]})",
        R"({ "stream" : true })", "{\n  \"model\": \"x\",\n  \"stream\": true\n}\n",
        R"({"tools":[{"type":"mcp"}],"x":})", R"({"model":{"type":"mcp","server_url":"https://x"}})",
        R"({"stream":true,"stream_options":{"include_usage":{"type":"mcp"}}})",
        R"({"stream":true,"stream_options":{"type":"mcp"}})", R"({"tools":[{"typ\u0065":"\u006dcp"}]})",
        R"({"image_url":"https://x","model":"m"})", R"({"image_url":{"url":"data:x"}})",
        R"({"messages":[{"content":"a\nb\nc","type":"text"}],"t":{"type":"web\u005fsearch"}})",
    };
    // Deep nesting, closed and not, objects and arrays.
    for (std::size_t d : {511u, 512u, 513u, 1025u, 100000u}) {
        bodies.push_back("{\"a\":" + std::string(d, '[') + std::string(d, ']') + "}");
        bodies.push_back("{\"a\":" + std::string(d, '[') + std::string(d - 1, ']') + "}");
        std::string o = "{\"model\":";
        for (std::size_t i = 0; i < d; ++i) o += "{\"m\":";
        o += "1";
        bodies.push_back(o + std::string(d, '}') + "}");
        bodies.push_back(o + std::string(d, '}'));
    }
    // Huge strings: a model, a prompt with an escape at its end, a key.
    for (std::size_t n : {255u, 256u, 257u, 8191u, 70000u, 300000u}) {
        const std::string x(n, 'q');
        bodies.push_back(R"({"model":")" + x + R"(","messages":[]})");
        bodies.push_back(R"({"model":")" + x + R"(\u00e9"})");
        bodies.push_back(R"({"content":")" + x + R"(\n"})");
        bodies.push_back(R"({")" + x + R"(":1,")" + x + R"(":2})");
        bodies.push_back(R"({"a":")" + x);
    }
    // Many top-level keys, one repeated far apart.
    std::string many = "{";
    for (int i = 0; i < 2000; ++i) many += "\"k" + std::to_string(i) + "\":" + std::to_string(i) + ",";
    bodies.push_back(many + "\"model\":\"m\"}");
    bodies.push_back(many + "\"k1999\":1}");
    bodies.push_back(many + "\"k\\u0031\":1}");
    for (const auto& b : bodies) ASSERT_NO_FATAL_FAILURE(expect_agree(b)) << printable(b);
}

// A body of every number shape near where rapidjson refuses one by value.
TEST(RewriteDiff, NumbersRapidjsonRefusesByValue) {
    std::vector<std::string> nums;
    for (const char* mant : {"1", "9", "0", "1.5", "0.001", "123.456", "1.00000000000000000000", "99999999999999999999.9"})
        for (const char* sign : {"", "+", "-"})
            for (int exp : {0, 1, 290, 305, 306, 307, 308, 309, 310, 311, 312, 320, 328, 329, 400, 99999})
                nums.push_back(std::string(mant) + "e" + sign + std::to_string(exp));
    for (std::size_t digits : {19u, 20u, 21u, 300u, 306u, 307u, 308u, 309u, 310u, 400u}) {
        nums.push_back(std::string(1, '1') + std::string(digits - 1, '0'));
        nums.push_back(std::string(digits, '9'));
        nums.push_back("-" + std::string(digits, '9') + ".25");
        nums.push_back(std::string(1, '1') + std::string(digits - 1, '7') + "e1");
    }
    for (const auto& n : nums) ASSERT_NO_FATAL_FAILURE(expect_agree(R"({"n":)" + n + "}")) << n;
}

}  // namespace
}  // namespace redir::terminator
