// What the request path reuses or builds without intermediate lists: a
// connection's ReusedHeaders (exactly this request's headers every time, a
// bounded keep between requests), and normalise_target's in-place folding
// checked against the old segment list on generated paths.
#include <gtest/gtest.h>

#include <random>
#include <stdexcept>
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

// Names are lower-cased as tolower in the C locale does: 'A'..'Z' only, every
// other byte (0x80 and up, NUL, punctuation) left as it is.
TEST(ReusedHeaders, OnlyAsciiUpperCaseIsLowered) {
    std::string all;
    for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
    std::string expected = all;
    for (char& c : expected)
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    ReusedHeaders h;
    std::string seen;
    h.fill(std::vector<Field>{{all, "v"}, {"\xC3\x84RGER-\xE9T\xC9", "w"}}, [&](std::string_view n) {
        if (seen.empty()) seen = n;
        return true;
    });
    EXPECT_EQ(seen, expected) << "what KEEP is given";
    ASSERT_EQ(h.list().size(), 2u);
    EXPECT_EQ(h.list()[0].first, expected);
    EXPECT_EQ(h.list()[1].first, "\xC3\x84rger-\xE9t\xC9");
}

std::size_t held_bytes(const HeaderList& l) {
    std::size_t bytes = 0;
    for (const auto& [n, v] : l) bytes += n.capacity() + v.capacity();
    return bytes;
}

// The bounds exactly: kKeepEntries entries are kept and one more is not; a
// list whose strings hold more than kKeepBytes (capacity, as a shorter later
// request reusing a grown buffer still holds it) is not kept.
TEST(ReusedHeaders, KeepsUpToTheBoundsAndNotAByteMore) {
    auto entries = [](std::size_t n) {
        std::vector<Field> f;
        for (std::size_t i = 0; i < n; ++i) f.push_back({"x-" + std::to_string(i), "v"});
        return f;
    };
    {
        ReusedHeaders h;
        h.fill(entries(ReusedHeaders::kKeepEntries));
        h.release_if_large();
        EXPECT_EQ(h.list().size(), ReusedHeaders::kKeepEntries);
        h.fill(entries(ReusedHeaders::kKeepEntries + 1));
        h.release_if_large();
        EXPECT_EQ(h.list().capacity(), 0u);
        // Fewer entries next, but the list grew to more than the bound: given back.
        h.fill(entries(ReusedHeaders::kKeepEntries + 1));
        h.fill(entries(2));
        h.release_if_large();
        EXPECT_EQ(h.list().capacity(), 0u);
    }
    // Values of every size around the byte bound: kept exactly when what the
    // strings hold is within it.
    bool kept_one = false, released_one = false;
    for (std::size_t size = ReusedHeaders::kKeepBytes - 200; size <= ReusedHeaders::kKeepBytes + 50; ++size) {
        ReusedHeaders h;
        h.fill(std::vector<Field>{{"a", "b"}, {"x-big", std::string(size, 'v')}});
        const std::size_t held = held_bytes(h.list());
        h.release_if_large();
        if (held > ReusedHeaders::kKeepBytes) {
            ASSERT_EQ(h.list().capacity(), 0u) << size;
            released_one = true;
        } else {
            ASSERT_EQ(h.list().size(), 2u) << size;
            kept_one = true;
        }
    }
    EXPECT_TRUE(kept_one && released_one);
    // A grown buffer reused by a later, shorter request still counts.
    ReusedHeaders h;
    h.fill(std::vector<Field>{{"x-big", std::string(ReusedHeaders::kKeepBytes, 'v')}});
    h.fill(std::vector<Field>{{"x-big", "short"}});
    EXPECT_GT(held_bytes(h.list()), ReusedHeaders::kKeepBytes);
    h.release_if_large();
    EXPECT_EQ(h.list().capacity(), 0u);
    // And after a release the next usual request is kept again.
    h.fill(std::vector<Field>{{"content-type", "application/json"}});
    h.release_if_large();
    EXPECT_EQ(h.list().size(), 1u);
}

// A fill cut short (KEEP throwing after a large value was copied) leaves no
// stale count behind: what the list holds is still within the bounds after
// the release.
TEST(ReusedHeaders, AFillCutShortKeepsNothingLarge) {
    ReusedHeaders h;
    h.fill(std::vector<Field>{{"a", "b"}});
    h.release_if_large();
    EXPECT_THROW(h.fill(std::vector<Field>{{"x-big", std::string(15000, 'v')}, {"boom", "c"}},
                        [](std::string_view n) {
                            if (n == "boom") throw std::runtime_error("keep failed");
                            return true;
                        }),
                 std::runtime_error);
    h.release_if_large();
    EXPECT_LE(held_bytes(h.list()), ReusedHeaders::kKeepBytes);
    EXPECT_LE(h.list().capacity(), ReusedHeaders::kKeepEntries);
    h.fill(std::vector<Field>{{"a", "b"}});
    h.release_if_large();
    EXPECT_EQ(h.list().size(), 1u);
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

// A target already in normal form is taken as it is (one pass, no segment
// loop): every origin-form target of up to 8 bytes of '/', '.', 'a' (and a
// '?' or '#' ending some) folds as the segment list did, fast path or not.
TEST(Target, TheAlreadyNormalShortcutFoldsAsTheSegmentListDid) {
    const char alphabet[] = {'/', '.', 'a'};
    std::vector<std::string> level{"/"};
    std::size_t checked = 0;
    for (int len = 1; len <= 8; ++len) {
        std::vector<std::string> next;
        for (const auto& p : level) {
            for (const char* tail : {"", "?q", "#f", "/?q", ".?q"}) {
                const std::string t = p + tail;
                auto got = normalise_target(t);
                ASSERT_TRUE(got) << t;
                ASSERT_EQ(got->path, reference::fold_segments(t.substr(0, t.find_first_of("?#")))) << t;
                ++checked;
            }
            for (char c : alphabet) next.push_back(p + c);
        }
        level = std::move(next);
    }
    EXPECT_GT(checked, 10000u);
    EXPECT_EQ(normalise_target("/v1/chat/completions")->path, "/v1/chat/completions");
    EXPECT_EQ(normalise_target("/v1/chat/completions")->query, "");
    EXPECT_EQ(normalise_target("/v1/chat/completions/")->path, "/v1/chat/completions");
    EXPECT_EQ(normalise_target("/v1/./chat")->path, "/v1/chat");
    EXPECT_EQ(normalise_target("/v1/..")->path, "/");
    EXPECT_EQ(normalise_target("/v1/.x/..y/...")->path, "/v1/.x/..y/...");
}

}  // namespace
}  // namespace redir::terminator
