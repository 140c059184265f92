#include "tls/leaf_cache.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <latch>
#include <set>
#include <thread>

#include "tls_test_util.hpp"

namespace redir::tls {
namespace {

using test::TempDir;
using test::verify_leaf;
using namespace std::chrono_literals;

class LeafCacheTest : public ::testing::Test {
protected:
    TempDir dir;
    LocalCa ca = LocalCa::load_or_create(dir.path(), {"example.test"});
};

TEST_F(LeafCacheTest, LeafVerifiesAgainstTheCaForInferenceLocal) {
    LeafCache cache(ca, {});
    auto before = std::chrono::system_clock::now();
    auto leaf = cache.get("inference.local");
    ASSERT_TRUE(leaf);
    EXPECT_EQ(verify_leaf(leaf->cert(), ca.cert(), "inference.local"), X509_V_OK);
    EXPECT_EQ(verify_leaf(leaf->cert(), ca.cert(), "other.example.test"), X509_V_ERR_HOSTNAME_MISMATCH);

    X509* cert = leaf->cert();
    EXPECT_EQ(X509_check_host(cert, "inference.local", 0, 0, nullptr), 1);
    char cn[128] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
    EXPECT_STREQ(cn, "inference.local");
    EXPECT_EQ(X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(ca.cert())), 0);
    EXPECT_FALSE(X509_get_extension_flags(cert) & EXFLAG_CA);
    EXPECT_EQ(X509_get_extended_key_usage(cert), static_cast<uint32_t>(XKU_SSL_SERVER));
    EXPECT_EQ(X509_get_key_usage(cert), static_cast<uint32_t>(KU_DIGITAL_SIGNATURE));
    int ku = X509_get_ext_by_NID(cert, NID_key_usage, -1);
    ASSERT_GE(ku, 0);
    EXPECT_EQ(X509_EXTENSION_get_critical(X509_get_ext(cert, ku)), 1);
    ASSERT_NE(X509_get0_authority_key_id(cert), nullptr);
    EXPECT_EQ(ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(cert), X509_get0_subject_key_id(ca.cert())), 0);
    EXPECT_TRUE(EVP_PKEY_is_a(X509_get0_pubkey(cert), "EC"));
    EXPECT_EQ(EVP_PKEY_get_bits(X509_get0_pubkey(cert)), 256);
    EXPECT_EQ(X509_check_private_key(cert, leaf->key()), 1);

    EXPECT_LE(leaf->not_before(), before - 5min + 2s);
    EXPECT_GE(leaf->not_before(), before - 5min - 2s);
    EXPECT_NEAR(std::chrono::duration<double>(leaf->not_after() - before).count(),
                std::chrono::duration<double>(std::chrono::hours(24 * 7)).count(), 5.0);
    ASSERT_EQ(leaf->chain().size(), 1u);
    EXPECT_EQ(X509_cmp(leaf->chain()[0].get(), ca.cert()), 0);
    EXPECT_NE(leaf->ssl_ctx(), nullptr);
}

TEST_F(LeafCacheTest, NameConstraintsAreEnforcedByVerifiers) {
    // Issue outside the cache's checks, as a leaked or misused CA key would.
    LeafIssuer issuer(ca);
    auto now = std::chrono::system_clock::now();
    for (const char* name : {"evil.example", "api.openai.com", "notinference.local", "example.test.evil"}) {
        auto issued = issuer.issue_cert(name, now);
        EXPECT_EQ(verify_leaf(issued.cert.get(), ca.cert(), name), X509_V_ERR_PERMITTED_VIOLATION) << name;
    }
    // Same issuer, permitted names: the constraint, not the issuer, made the difference.
    for (const char* name : {"inference.local", "example.test", "api.example.test"}) {
        auto issued = issuer.issue_cert(name, now);
        EXPECT_EQ(verify_leaf(issued.cert.get(), ca.cert(), name), X509_V_OK) << name;
    }
}

TEST_F(LeafCacheTest, ServedSetDecidesAndIsCaseInsensitive) {
    LeafCache cache(ca, {"api.example.test"});
    EXPECT_TRUE(cache.is_served("inference.local"));
    EXPECT_TRUE(cache.is_served("API.example.TEST"));
    EXPECT_FALSE(cache.is_served("example.test"));
    EXPECT_FALSE(cache.is_served("api.openai.com"));
    EXPECT_FALSE(cache.is_served(""));
    EXPECT_EQ(cache.get("api.openai.com"), nullptr);
    EXPECT_EQ(cache.get("bad name"), nullptr);
    EXPECT_EQ(cache.issued_count(), 0u);

    auto a = cache.get("Inference.Local");
    auto b = cache.get("inference.local");
    ASSERT_TRUE(a);
    EXPECT_EQ(a, b);
    EXPECT_EQ(a->name(), "inference.local");
    auto api = cache.get("api.example.test");
    ASSERT_TRUE(api);
    EXPECT_EQ(verify_leaf(api->cert(), ca.cert(), "api.example.test"), X509_V_OK);
    EXPECT_EQ(cache.issued_count(), 2u);
    EXPECT_EQ(cache.served_names(), (std::vector<std::string>{"api.example.test", "inference.local"}));

    cache.set_served_names({});
    EXPECT_FALSE(cache.is_served("api.example.test"));
    EXPECT_EQ(cache.get("api.example.test"), nullptr);
    EXPECT_EQ(cache.get("inference.local"), a) << "inference.local is always served and keeps its leaf";
}

TEST_F(LeafCacheTest, ServedNameOutsideTheCaIsRefusedUpFront) {
    EXPECT_THROW(LeafCache(ca, {"api.openai.com"}), Error);
    EXPECT_THROW(LeafCache(ca, {"*.example.test"}), Error);
    LeafCache cache(ca, {});
    EXPECT_THROW(cache.set_served_names({"api.openai.com"}), Error);
    EXPECT_TRUE(cache.is_served("inference.local"));
}

TEST_F(LeafCacheTest, RenewalWindowMustBeShorterThanValidity) {
    EXPECT_THROW(LeafCache(ca, {}, LeafCache::Options{.validity = 24h, .renew_before = 24h}), Error);
}

TEST_F(LeafCacheTest, ConcurrentCallersShareOneIssuance) {
    constexpr int kThreads = 16;
    constexpr int kRounds = 8;
    std::vector<std::string> names;
    for (int r = 0; r < kRounds; ++r) names.push_back("n" + std::to_string(r) + ".example.test");
    LeafCache cache(ca, names);

    for (const auto& name : names) {
        std::latch start(kThreads);
        std::vector<std::shared_ptr<const Leaf>> got(kThreads);
        std::vector<std::thread> threads;
        for (int i = 0; i < kThreads; ++i) {
            threads.emplace_back([&, i] {
                start.arrive_and_wait();
                got[i] = cache.get(name);
            });
        }
        for (auto& t : threads) t.join();
        for (const auto& leaf : got) {
            ASSERT_TRUE(leaf);
            EXPECT_EQ(leaf, got[0]) << name;
        }
    }
    EXPECT_EQ(cache.issued_count(), static_cast<std::uint64_t>(kRounds));
}

TEST_F(LeafCacheTest, RenewsWithinTheWindowBeforeExpiry) {
    auto t0 = std::chrono::system_clock::now();
    std::atomic<std::chrono::system_clock::time_point> clock{t0};
    LeafCache cache(ca, {}, LeafCache::Options{.clock = [&] { return clock.load(); }});

    auto first = cache.get("inference.local");
    ASSERT_TRUE(first);
    EXPECT_NEAR(std::chrono::duration<double>(first->not_after() - t0).count(), 7 * 86400.0, 2.0);

    clock = t0 + std::chrono::hours(24 * 5);
    EXPECT_EQ(cache.get("inference.local"), first);
    clock = t0 + std::chrono::hours(24 * 6) - 1min;
    EXPECT_EQ(cache.get("inference.local"), first) << "just outside the 1-day window";
    EXPECT_EQ(cache.issued_count(), 1u);

    clock = t0 + std::chrono::hours(24 * 6) + 1h;
    auto second = cache.get("inference.local");
    ASSERT_TRUE(second);
    EXPECT_NE(second, first);
    EXPECT_EQ(cache.issued_count(), 2u);
    EXPECT_GT(second->not_after(), first->not_after());
    EXPECT_NE(ASN1_INTEGER_cmp(X509_get0_serialNumber(second->cert()), X509_get0_serialNumber(first->cert())), 0);
    EXPECT_EQ(verify_leaf(second->cert(), ca.cert(), "inference.local", clock.load()), X509_V_OK);
    EXPECT_EQ(cache.get("inference.local"), second);
    EXPECT_EQ(cache.issued_count(), 2u);
}

TEST_F(LeafCacheTest, ConfigurableValidityAndWindow) {
    auto t0 = std::chrono::system_clock::now();
    std::atomic<std::chrono::system_clock::time_point> clock{t0};
    LeafCache cache(ca, {}, LeafCache::Options{.validity = 2h, .renew_before = 30min, .clock = [&] { return clock.load(); }});
    auto first = cache.get("inference.local");
    EXPECT_NEAR(std::chrono::duration<double>(first->not_after() - t0).count(), 7200.0, 2.0);
    clock = t0 + 89min;
    EXPECT_EQ(cache.get("inference.local"), first);
    clock = t0 + 91min;
    EXPECT_NE(cache.get("inference.local"), first);
}

TEST_F(LeafCacheTest, LongNameGoesInTheSanOnly) {
    std::string name = std::string(60, 'a') + ".example.test";
    LeafIssuer issuer(ca);
    auto issued = issuer.issue_cert(name, std::chrono::system_clock::now());
    EXPECT_EQ(X509_NAME_entry_count(X509_get_subject_name(issued.cert.get())), 0);
    EXPECT_EQ(verify_leaf(issued.cert.get(), ca.cert(), name), X509_V_OK);
}

}  // namespace
}  // namespace redir::tls
