// What the request path reuses or builds without intermediate lists: a
// connection's ReusedHeaders (exactly this request's headers every time, a
// bounded keep between requests), and normalise_target's in-place folding
// checked against the old segment list on generated paths.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "terminator/request.hpp"
#include "terminator_reference.hpp"

namespace redir::terminator {
namespace {

struct Field {
    std::string n, v;
    std::string_view name_string() const { return n; }
    std::string_view value() const { return v; }
};

TEST(ReusedHeaders, EachFillHoldsExactlyThatRequestsHeadersLowerCased) {
    ReusedHeaders h;
    const std::string long_value(100, 'v');
    h.fill(std::vector<Field>{{"X-Long", long_value}, {"Content-Type", "application/json"},
                              {"Anthropic-Beta", "mcp-client-2025"}});
    ASSERT_EQ(h.list().size(), 3u);
    EXPECT_EQ(h.list()[2], (std::pair<std::string, std::string>{"anthropic-beta", "mcp-client-2025"}));
    const char* buffer = h.list()[0].second.data();

    // A shorter request next: nothing of the first one is left, not even the
    // header the fetch scan looks at.
    h.fill(std::vector<Field>{{"x-long", "short"}, {"ACCEPT", "*/*"}});
    ASSERT_EQ(h.list().size(), 2u);
    EXPECT_EQ(h.list()[0], (std::pair<std::string, std::string>{"x-long", "short"}));
    EXPECT_EQ(h.list()[1], (std::pair<std::string, std::string>{"accept", "*/*"}));
    h.fill(std::vector<Field>{{"X-Long", long_value}, {"a", "b"}});
    EXPECT_EQ(h.list()[0].second, long_value);
    EXPECT_EQ(h.list()[0].second.data(), buffer) << "the value's buffer is reused";
    h.fill(std::vector<Field>{});
    EXPECT_TRUE(h.list().empty());
}

// Only the headers KEEP accepts (by lower-cased name) are listed; a dropped
// header in between leaves nothing behind.
TEST(ReusedHeaders, KeepsOnlyWhatThePredicateAccepts) {
    ReusedHeaders h;
    auto keep = [](std::string_view n) { return n == "accept" || n == "anthropic-beta"; };
    h.fill(std::vector<Field>{{"X-Stainless-Package-Version", "1.2.3"}, {"Accept", "a/b"},
                              {"Host", "inference.local"}, {"Anthropic-Beta", "x"}},
           keep);
    ASSERT_EQ(h.list().size(), 2u);
    EXPECT_EQ(h.list()[0], (std::pair<std::string, std::string>{"accept", "a/b"}));
    EXPECT_EQ(h.list()[1], (std::pair<std::string, std::string>{"anthropic-beta", "x"}));
    h.fill(std::vector<Field>{{"Anthropic-Beta", "y"}, {"X-Other", "z"}}, keep);
    ASSERT_EQ(h.list().size(), 1u);
    EXPECT_EQ(h.list()[0], (std::pair<std::string, std::string>{"anthropic-beta", "y"}));
}

// A sandbox sending hundreds of headers, or huge ones, once: the connection
// does not keep what that request needed.
TEST(ReusedHeaders, ALargeHeaderSetIsNotKeptAfterTheRequest) {
    ReusedHeaders h;
    std::vector<Field> usual{{"content-type", "application/json"}, {"authorization", "Bearer " + std::string(60, 'k')}};
    h.fill(usual);
    h.release_if_large();
    EXPECT_EQ(h.list().size(), 2u) << "a usual request's headers are kept for the next one";

    std::vector<Field> many;
    for (int i = 0; i < 200; ++i) many.push_back({"x-" + std::to_string(i), "v"});
    h.fill(many);
    EXPECT_EQ(h.list().size(), 200u);
    h.release_if_large();
    EXPECT_TRUE(h.list().empty());
    EXPECT_EQ(h.list().capacity(), 0u);

    h.fill(std::vector<Field>{{"x-huge", std::string(15000, 'h')}});
    h.release_if_large();
    EXPECT_EQ(h.list().capacity(), 0u);
    h.fill(usual);
    EXPECT_EQ(h.list().size(), 2u);
}

TEST(Target, FoldsSegmentsInPlaceAsTheSegmentListDid) {
    const char* pieces[] = {"", ".", "..", "...", "v1", "chat", "completions", "a.b", "%2e%2e", "models"};
    std::mt19937 rng(11);
    for (int n = 0; n < 20000; ++n) {
        std::string path;
        const int k = static_cast<int>(rng() % 7);
        for (int i = 0; i < k; ++i) path += std::string("/") + pieces[rng() % std::size(pieces)];
        if (path.empty() || rng() % 4 == 0) path += "/";
        auto t = normalise_target(path);
        ASSERT_TRUE(t) << path;
        ASSERT_EQ(t->path, reference::fold_segments(path)) << path;
    }
    EXPECT_EQ(normalise_target("/../../v1/./models/x/..//")->path, "/v1/models");
    EXPECT_EQ(normalise_target("/..")->path, "/");
}

}  // namespace
}  // namespace redir::terminator
