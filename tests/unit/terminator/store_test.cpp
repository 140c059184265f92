#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <functional>
#include <fstream>

#include "common/atomic_file.hpp"
#include "common/error.hpp"
#include "terminator/profiles.hpp"
#include "terminator/request.hpp"
#include "terminator/store.hpp"

namespace redir::terminator {
namespace {

class StoreTest : public ::testing::Test {
protected:
    void SetUp() override {
        char tmpl[] = "/tmp/redir-term-store-XXXXXX";
        ASSERT_NE(::mkdtemp(tmpl), nullptr);
        dir_ = tmpl;
    }
    void TearDown() override { std::filesystem::remove_all(dir_); }
    static Provider openai(const std::string& name = "oa") {
        return Provider{name, "openai", "", "", {{"OPENAI_API_KEY", "sk-test-secret-value-1234"}}};
    }
    std::string dir_;
};

mode_t file_mode(const std::string& p) {
    struct stat st {};
    EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
    return st.st_mode & 0777;
}

TEST_F(StoreTest, PersistsWithMode0600AndReloads) {
    {
        Store s(dir_);
        s.create_provider(openai());
        s.set_inference("oa", "gpt-4o-mini");
    }
    EXPECT_EQ(file_mode(dir_ + "/providers.json"), 0600u);
    EXPECT_EQ(file_mode(dir_ + "/inference.json"), 0600u);
    Store again(dir_);
    auto p = again.get_provider("oa");
    ASSERT_TRUE(p);
    EXPECT_EQ(p->base_url, "https://api.openai.com/v1");
    EXPECT_EQ(p->credentials.at("OPENAI_API_KEY"), "sk-test-secret-value-1234");
    auto inf = again.inference();
    ASSERT_TRUE(inf);
    EXPECT_EQ(inf->model, "gpt-4o-mini");
    EXPECT_EQ(inf->version, 1u);
    auto snap = again.snapshot();
    ASSERT_TRUE(snap->provider);
    EXPECT_EQ(snap->provider->name, "oa");
}

TEST_F(StoreTest, VersionIncrementsOnEveryChange) {
    Store s(dir_);
    s.create_provider(openai());
    s.create_provider(openai("other"));
    EXPECT_EQ(s.set_inference("oa", "m1").version, 1u);
    EXPECT_EQ(s.update_inference(std::nullopt, "m2").version, 2u);
    EXPECT_EQ(s.update_inference("other", std::nullopt).version, 3u);
    EXPECT_EQ(s.inference()->model, "m2");
    // Changing the provider in use changes inference too.
    s.update_provider("other", ProviderUpdate{.credentials = {{"OPENAI_API_KEY", "sk-rotated-secret-0000"}}});
    EXPECT_EQ(s.inference()->version, 4u);
    // A provider not in use does not.
    s.update_provider("oa", ProviderUpdate{.credentials = {{"OPENAI_API_KEY", "sk-rotated-secret-1111"}}});
    EXPECT_EQ(s.inference()->version, 4u);
    Store again(dir_);
    EXPECT_EQ(again.inference()->version, 4u);
    EXPECT_EQ(again.set_inference("oa", "m3").version, 5u);
}

TEST_F(StoreTest, DeleteRefusedWhileReferenced) {
    Store s(dir_);
    s.create_provider(openai());
    s.set_inference("oa", "gpt-4o");
    try {
        s.delete_provider("oa");
        FAIL() << "delete should be refused";
    } catch (const Error& e) {
        std::string m = e.what();
        EXPECT_NE(m.find("oa"), std::string::npos);
        EXPECT_NE(m.find("inference"), std::string::npos);
        EXPECT_NE(m.find("gpt-4o"), std::string::npos);
    }
    EXPECT_TRUE(s.get_provider("oa"));
    s.create_provider(Provider{"m", "mock", "", "", {}});
    s.set_inference("m", "x");
    s.delete_provider("oa");
    EXPECT_FALSE(s.get_provider("oa"));
    Store again(dir_);
    EXPECT_FALSE(again.get_provider("oa"));
}

TEST_F(StoreTest, UpdateChangesOnlyWhatIsGiven) {
    Store s(dir_);
    Provider p{"c", "openai-compatible", "https://llm.example.test/v1", "", {{"API_KEY", "k-aaaaaaaaaaaaaaaa"}}};
    s.create_provider(p);
    s.update_provider("c", ProviderUpdate{.credentials = {{"EXTRA", "v"}}});
    auto got = *s.get_provider("c");
    EXPECT_EQ(got.base_url, "https://llm.example.test/v1");
    EXPECT_EQ(got.credentials.size(), 2u);
    EXPECT_EQ(got.credentials.at("API_KEY"), "k-aaaaaaaaaaaaaaaa");
    s.update_provider("c", ProviderUpdate{.base_url = "https://other.example.test/api/v1"});
    got = *s.get_provider("c");
    EXPECT_EQ(got.base_url, "https://other.example.test/api/v1");
    EXPECT_EQ(got.credentials.size(), 2u);
    s.update_provider("c", ProviderUpdate{.remove_credentials = {"EXTRA"}});
    EXPECT_EQ(s.get_provider("c")->credentials.size(), 1u);
}

// The sentence a failed call throws ("" when it does not throw).
std::string error_of(const std::function<void()>& f) {
    try {
        f();
    } catch (const Error& e) {
        return e.what();
    }
    return "";
}

// Each refusal is its own sentence: it names what is wrong and what to do, so
// a refusal for another reason (or none) fails here.
TEST_F(StoreTest, ValidationSentences) {
    Store s(dir_);
    auto create = [&](Provider p) { return error_of([&] { s.create_provider(std::move(p)); }); };
    auto has = [](const std::string& msg, std::initializer_list<const char*> parts) {
        for (const char* part : parts)
            if (msg.find(part) == std::string::npos) return ::testing::AssertionFailure() << "\"" << msg << "\" lacks \"" << part << "\"";
        return ::testing::AssertionSuccess();
    };
    EXPECT_TRUE(has(create(Provider{"x", "bogus", "", "", {}}), {"unknown provider type \"bogus\"", "use one of", "openai"}));
    EXPECT_TRUE(has(create(Provider{"x", "openai-compatible", "", "", {}}), {"provider x", "needs --base-url"}));
    EXPECT_TRUE(has(create(Provider{"x", "openai-compatible", "http://plain.test/v1", "", {}}),
                    {"provider x", "http://plain.test/v1", "must start with https://"}));
    EXPECT_TRUE(has(create(Provider{"x", "openai", "", "", {}}), {"provider x", "needs a credential", "OPENAI_API_KEY"}));
    const std::string injected = create(Provider{"x", "openai", "", "", {{"OPENAI_API_KEY", "a\r\nX-Evil: 1"}}});
    EXPECT_TRUE(has(injected, {"credential OPENAI_API_KEY", "control characters"}));
    EXPECT_EQ(injected.find("X-Evil"), std::string::npos) << "the refused value is not echoed: " << injected;
    EXPECT_TRUE(has(create(Provider{"bad name", "mock", "", "", {}}), {"invalid provider name \"bad name\"", "letters"}));
    EXPECT_TRUE(has(create(Provider{"x", "openai", "", "/nonexistent/ca.pem", {{"OPENAI_API_KEY", "k"}}}),
                    {"provider x", "cannot read CA file /nonexistent/ca.pem"}));
    EXPECT_TRUE(has(error_of([&] { s.set_inference("nope", "m"); }), {"no provider named nope", "redirctl provider create"}));
    s.create_provider(openai());
    EXPECT_TRUE(has(create(openai()), {"provider oa already exists", "redirctl provider update oa"}));
    EXPECT_TRUE(has(error_of([&] { s.delete_provider("nope"); }), {"no provider named nope", "redirctl provider list"}));
    EXPECT_FALSE(s.inference());
    // A failed change leaves nothing on disk.
    Store again(dir_);
    EXPECT_EQ(again.list_providers().size(), 1u);
}

TEST_F(StoreTest, MaskedNeverShowsTheSecret) {
    Provider p = openai();
    auto m = p.masked();
    EXPECT_EQ(m.credentials.at("OPENAI_API_KEY"), "****1234");
    EXPECT_EQ(mask_secret("short"), "****");
}

TEST_F(StoreTest, SnapshotIsImmutableAcrossChanges) {
    Store s(dir_);
    s.create_provider(Provider{"m", "mock", "", "", {}});
    s.set_inference("m", "a");
    auto before = s.snapshot();
    s.set_inference("m", "b");
    EXPECT_EQ(before->inference->model, "a");
    EXPECT_EQ(s.snapshot()->inference->model, "b");
}

TEST(BaseUrl, Parses) {
    std::string err;
    auto b = parse_base_url("https://api.openai.com/v1/", &err);
    ASSERT_TRUE(b) << err;
    EXPECT_EQ(b->host, "api.openai.com");
    EXPECT_EQ(b->port, 443);
    EXPECT_EQ(b->path, "/v1");
    EXPECT_EQ(b->host_header, "api.openai.com");
    EXPECT_FALSE(b->ip_literal);
    b = parse_base_url("https://127.0.0.1:8443", &err);
    ASSERT_TRUE(b);
    EXPECT_TRUE(b->ip_literal);
    EXPECT_EQ(b->port, 8443);
    EXPECT_EQ(b->host_header, "127.0.0.1:8443");
    b = parse_base_url("https://[::1]:9000/x", &err);
    ASSERT_TRUE(b);
    EXPECT_EQ(b->host, "::1");
    EXPECT_EQ(b->host_header, "[::1]:9000");
    EXPECT_FALSE(parse_base_url("http://a.test", &err));
    EXPECT_FALSE(parse_base_url("https://user@a.test", &err));
    EXPECT_FALSE(parse_base_url("https://a.test:99999", &err));
}

// ---- named inference routes: each its own snapshot, persisted, deletions in use refused naming who ----

TEST_F(StoreTest, EachRouteHasItsOwnSnapshot) {
    Store s(dir_);
    s.create_provider({"m", "mock", "", "", {}});
    s.create_provider({"m2", "mock", "", "", {}});
    s.set_inference("m", "slow-model");
    s.set_inference("m2", "fast-model", "fast");
    auto def = s.snapshot();
    auto fast = s.snapshot("fast");
    EXPECT_EQ(def->inference->model, "slow-model");
    EXPECT_EQ(fast->inference->model, "fast-model");
    EXPECT_EQ(fast->provider->name, "m2");
    EXPECT_FALSE(s.snapshot("nowhere")->inference) << "an unconfigured route serves nothing";

    s.update_inference(std::nullopt, "faster-model", "fast");
    EXPECT_EQ(s.snapshot("fast")->inference->model, "faster-model");
    EXPECT_EQ(s.snapshot()->inference->model, "slow-model") << "another route's sandboxes see no change";
    EXPECT_EQ(s.snapshot()->inference->version, def->inference->version);
    EXPECT_EQ(fast->inference->model, "fast-model") << "a snapshot never changes";
    ASSERT_EQ(s.routes().size(), 2u);
    EXPECT_EQ(s.routes()[1].route, "fast");
    EXPECT_NE(error_of([&] { s.set_inference("m", "x", "../etc"); }).find("invalid route name"), std::string::npos);
}

// What a request used to derive from the provider per request is derived
// once per snapshot, and a provider change (a rotated key, a new base URL)
// reaches the next snapshot, never the published one.
TEST_F(StoreTest, SnapshotCarriesTheParsedBaseUrlAndProviderHeaders) {
    Store s(dir_);
    s.create_provider({"o", "openai", "https://Provider.Example:8443/v1/", "",
                       {{"OPENAI_API_KEY", "sk-one"}, {"OPENAI_ORG_ID", "org-op"}}});
    s.set_inference("o", "gpt");
    auto before = s.snapshot();
    ASSERT_TRUE(before->base) << before->base_error;
    EXPECT_EQ(before->base->host, "provider.example");
    EXPECT_EQ(before->base->port, 8443);
    EXPECT_EQ(before->base->path, "/v1");
    EXPECT_EQ(before->base->host_header, "provider.example:8443");
    const HeaderList want1 = {{"authorization", "Bearer sk-one"}, {"openai-organization", "org-op"}};
    EXPECT_EQ(before->provider_headers, want1);
    EXPECT_EQ(before->provider_headers, provider_headers(*find_profile("openai"), *before->provider));

    ProviderUpdate u;
    u.base_url = "https://[2001:db8::5]/v1";
    u.credentials = {{"OPENAI_API_KEY", "sk-two"}};
    u.remove_credentials = {"OPENAI_ORG_ID"};
    s.update_provider("o", u);
    auto after = s.snapshot();
    ASSERT_TRUE(after->base);
    EXPECT_EQ(after->base->host_header, "[2001:db8::5]");
    const HeaderList want2 = {{"authorization", "Bearer sk-two"}};
    EXPECT_EQ(after->provider_headers, want2);
    EXPECT_EQ(before->provider_headers, want1) << "a published snapshot never changes";

    // Reloaded from disk: derived the same way.
    Store again(dir_);
    EXPECT_EQ(again.snapshot()->provider_headers, want2);
    ASSERT_TRUE(again.snapshot()->base);
    EXPECT_EQ(again.snapshot()->base->host, "2001:db8::5");

    // A hand-built snapshot with an unparsable base says why (the 502's text).
    Snapshot bad;
    bad.provider = Provider{"b", "openai", "http://plain.example", "", {{"OPENAI_API_KEY", "k"}}};
    derive_upstream(bad);
    EXPECT_FALSE(bad.base);
    EXPECT_NE(bad.base_error.find("https://"), std::string::npos) << bad.base_error;
    EXPECT_TRUE(s.snapshot("nowhere")->provider_headers.empty());
}

TEST_F(StoreTest, RoutesPersistedAndReread) {
    {
        Store s(dir_);
        s.create_provider({"m", "mock", "", "", {}});
        s.set_inference("m", "a");
        s.set_inference("m", "b", "second");
    }
    Store again(dir_);
    EXPECT_EQ(again.inference()->model, "a");
    EXPECT_EQ(again.inference("second")->model, "b");
    EXPECT_GT(again.set_inference("m", "c", "third").version, again.inference("second")->version);
}

TEST_F(StoreTest, FileFromBeforeRoutesIsTheDefaultRoute) {
    {
        Store s(dir_);
        s.create_provider({"m", "mock", "", "", {}});
    }
    std::ofstream(dir_ + "/inference.json") << R"({"provider":"m","model":"old","version":9})";
    Store s(dir_);
    EXPECT_EQ(s.inference()->model, "old");
    EXPECT_EQ(s.inference()->version, 9u);
    EXPECT_EQ(s.set_inference("m", "new").version, 10u);
}

TEST_F(StoreTest, RouteAndProviderDeletionsInUseAreRefusedNamingTheUsers) {
    Store s(dir_);
    s.create_provider({"m", "mock", "", "", {}});
    s.set_inference("m", "a", "r1");
    s.set_inference("m", "b", "r2");
    auto msg = error_of([&] { s.delete_provider("m"); });
    EXPECT_NE(msg.find("r1 (model a)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("r2 (model b)"), std::string::npos) << msg;
    msg = error_of([&] { s.delete_route("r1", {"policy p (sandboxes /sys/fs/cgroup/x)"}); });
    EXPECT_NE(msg.find("policy p (sandboxes /sys/fs/cgroup/x)"), std::string::npos) << msg;
    EXPECT_TRUE(s.inference("r1"));
    s.delete_route("r1", {});
    s.delete_route("r2", {});
    EXPECT_FALSE(s.inference("r1"));
    s.delete_provider("m");
    Store again(dir_);
    EXPECT_TRUE(again.routes().empty());
}

}  // namespace
}  // namespace redir::terminator
