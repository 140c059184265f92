// What a hostile or broken client can put on one line: huge, deeply nested,
// NUL bytes, junk. Each gets a typed error, quickly, without recursion.
#include <gtest/gtest.h>

#include <chrono>

#include "control/dispatcher.hpp"

namespace redir::control {
namespace {

ProtocolError refusal_of(std::string_view line) {
    try {
        decode_request(line);
    } catch (const ProtocolError& e) {
        return e;
    }
    ADD_FAILURE() << "accepted a line of " << line.size() << " bytes";
    return ProtocolError(ErrorCode::invalid_value, "", "accepted");
}

TEST(ControlHostile, TenMegabytesOfJunkIsMalformed) {
    std::string line(10 << 20, 'x');
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(refusal_of(line).code, ErrorCode::malformed_json);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
}

TEST(ControlHostile, TenMegabytePolicyIsStillARequest) {
    // A big policy file is legitimate: size alone (below the bound) is not refused.
    std::string text(10 << 20, ' ');
    auto r = decode_request(encode_request(PolicyLoadRequest{text, "big.json", ""}));
    EXPECT_EQ(std::get<PolicyLoadRequest>(r).policy_text.size(), text.size());
}

TEST(ControlHostile, TenMegabyteCommandNameIsNotEchoed) {
    std::string line = "{\"cmd\":\"" + std::string(10 << 20, 'a') + "\"}";
    auto e = refusal_of(line);
    EXPECT_EQ(e.code, ErrorCode::unknown_command);
    EXPECT_LT(std::string(e.what()).size(), 200u);
}

TEST(ControlHostile, OverTheLineBoundIsTooLarge) {
    std::string line = "{\"cmd\":\"status\",\"pad\":\"" + std::string(kMaxLine, 'a') + "\"}";
    auto e = refusal_of(line);
    EXPECT_EQ(e.code, ErrorCode::too_large);
}

TEST(ControlHostile, DeepNestingIsRefusedWithoutRecursion) {
    // A million levels would overflow a recursive parser's stack.
    for (std::string open : {"[", "{\"a\":"}) {
        std::string line = "{\"cmd\":\"status\",\"x\":";
        for (int i = 0; i < 1000000; i++) line += open;
        auto e = refusal_of(line);
        EXPECT_EQ(e.code, ErrorCode::too_deep);
    }
    std::string ok = "{\"cmd\":\"status\",\"x\":" + std::string(kMaxDepth - 1, '[') + std::string(kMaxDepth - 1, ']') + "}";
    EXPECT_NO_THROW(decode_request(ok));
    std::string deep = "{\"cmd\":\"status\",\"x\":" + std::string(kMaxDepth, '[') + std::string(kMaxDepth, ']') + "}";
    EXPECT_EQ(refusal_of(deep).code, ErrorCode::too_deep);
    // Brackets inside strings are text, not nesting.
    std::string quoted = "{\"cmd\":\"detach\",\"cgroup\":\"" + std::string(100000, '[') + "\\\"" + "\"}";
    EXPECT_EQ(std::get<DetachRequest>(decode_request(quoted)).cgroup.size(), 100001u);
}

TEST(ControlHostile, NulBytesAreRefused) {
    using namespace std::string_literals;
    for (std::string line : {"\0"s, "{\"cmd\":\"status\"}\0"s, "{\"cmd\":\"sta\0tus\"}"s, "\0{\"cmd\":\"status\"}"s,
                             "{\"cmd\":\"detach\",\"cgroup\":\"/a\0b\"}"s}) {
        auto e = refusal_of(line);
        EXPECT_EQ(e.code, ErrorCode::malformed_json) << line.size();
    }
    EXPECT_EQ(refusal_of(R"({"cmd":"status\u0000"})").code, ErrorCode::unknown_command);
    EXPECT_EQ(refusal_of(R"({"cmd":"policy.show","name":"a\u0000b"})").code, ErrorCode::invalid_value);
}

TEST(ControlHostile, RandomBytesNeverEscapeAsAnythingButProtocolError) {
    uint32_t seed = 12345;
    auto next = [&] { return seed = seed * 1103515245u + 12345u; };
    const std::string pieces[] = {"{", "}", "[", "]", "\"", ":", ",", "\\", "cmd", "status", "attach", "cgroup",
                                  "1", "-", "e9", "null", "true", "\\u0000", "\xff", "\x01", " ", "\n"};
    for (int i = 0; i < 20000; i++) {
        std::string line = i % 2 ? "{\"cmd\":\"attach\"," : "";
        int n = next() % 40;
        for (int k = 0; k < n; k++) line += pieces[(next() >> 8) % std::size(pieces)];
        try {
            decode_request(line);
        } catch (const ProtocolError&) {
        }
    }
}

}  // namespace
}  // namespace redir::control
