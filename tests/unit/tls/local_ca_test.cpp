#include "tls/local_ca.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "common/atomic_file.hpp"
#include "tls_test_util.hpp"

namespace redir::tls {
namespace {

using test::TempDir;
using namespace std::chrono_literals;

mode_t mode_of(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
}

bool ext_critical(X509* cert, int nid) {
    int idx = X509_get_ext_by_NID(cert, nid, -1);
    EXPECT_GE(idx, 0) << OBJ_nid2sn(nid);
    return idx >= 0 && X509_EXTENSION_get_critical(X509_get_ext(cert, idx)) == 1;
}

std::vector<std::string> constraint_names(X509* cert, bool* has_excluded) {
    NameConstraintsPtr nc(static_cast<NAME_CONSTRAINTS*>(X509_get_ext_d2i(cert, NID_name_constraints, nullptr, nullptr)));
    std::vector<std::string> out;
    if (!nc) return out;
    *has_excluded = nc->excludedSubtrees != nullptr && sk_GENERAL_SUBTREE_num(nc->excludedSubtrees) > 0;
    for (int i = 0; i < sk_GENERAL_SUBTREE_num(nc->permittedSubtrees); ++i) {
        GENERAL_SUBTREE* s = sk_GENERAL_SUBTREE_value(nc->permittedSubtrees, i);
        EXPECT_EQ(s->base->type, GEN_DNS);
        out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s->base->d.dNSName)),
                         ASN1_STRING_length(s->base->d.dNSName));
    }
    return out;
}

void overwrite(const std::string& path, const std::string& data) {
    // Keep the file's mode: the test is about content, not permissions.
    std::ofstream(path, std::ios::binary | std::ios::trunc) << data;
}

TEST(LocalCa, CreatesConstrainedP256CaWithPrivateKeyFile) {
    TempDir dir;
    auto before = std::chrono::system_clock::now();
    LocalCa ca = LocalCa::load_or_create(dir.path(), {"API.Example.com"});
    EXPECT_TRUE(ca.created());
    EXPECT_EQ(ca.dir(), dir.path() + "/ca");
    EXPECT_EQ(mode_of(ca.key_path()), 0600u);
    EXPECT_EQ(mode_of(ca.cert_path()), 0644u);
    EXPECT_EQ(read_file(ca.cert_path()), ca.cert_pem());

    X509* cert = ca.cert();
    EXPECT_EQ(X509_get_version(cert), X509_VERSION_3);
    EVP_PKEY* pub = X509_get0_pubkey(cert);
    EXPECT_TRUE(EVP_PKEY_is_a(pub, "EC"));
    char group[64] = {};
    size_t glen = 0;
    EVP_PKEY_get_group_name(pub, group, sizeof group, &glen);
    EXPECT_STREQ(group, "prime256v1");
    EXPECT_EQ(X509_verify(cert, ca.key()), 1) << "self-signed";

    // basicConstraints CA:TRUE, pathlen 0, critical
    EXPECT_TRUE(X509_get_extension_flags(cert) & EXFLAG_CA);
    EXPECT_EQ(X509_get_pathlen(cert), 0);
    EXPECT_TRUE(ext_critical(cert, NID_basic_constraints));
    // keyUsage exactly keyCertSign + cRLSign, critical
    EXPECT_EQ(X509_get_key_usage(cert), static_cast<uint32_t>(KU_KEY_CERT_SIGN | KU_CRL_SIGN));
    EXPECT_TRUE(ext_critical(cert, NID_key_usage));
    // nameConstraints, critical, permitted DNS only
    EXPECT_TRUE(ext_critical(cert, NID_name_constraints));
    bool excluded = true;
    EXPECT_EQ(constraint_names(cert, &excluded), (std::vector<std::string>{"inference.local", "api.example.com"}));
    EXPECT_FALSE(excluded);
    EXPECT_EQ(ca.permitted_names(), (std::vector<std::string>{"inference.local", "api.example.com"}));
    // SKI is the key hash; AKI points at it
    const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(cert);
    ASSERT_NE(ski, nullptr);
    EXPECT_EQ(ASN1_STRING_length(ski), 20);
    Asn1OctetStringPtr expect_ski = key_identifier(cert);
    EXPECT_EQ(ASN1_OCTET_STRING_cmp(ski, expect_ski.get()), 0);
    const ASN1_OCTET_STRING* aki = X509_get0_authority_key_id(cert);
    ASSERT_NE(aki, nullptr);
    EXPECT_EQ(ASN1_OCTET_STRING_cmp(ski, aki), 0);
    // ten years, starting (a little before) now
    auto nb = to_time_point(X509_get0_notBefore(cert));
    auto na = to_time_point(X509_get0_notAfter(cert));
    EXPECT_LE(nb, before);
    EXPECT_GE(nb, before - 10min);
    using days = std::chrono::duration<double, std::ratio<86400>>;
    EXPECT_NEAR(days(na - nb).count(), 3650.0, 0.1);
    // 128-bit random serial, positive
    BignumPtr serial(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
    EXPECT_FALSE(BN_is_negative(serial.get()));
    EXPECT_GT(BN_num_bits(serial.get()), 120);
    EXPECT_LE(BN_num_bits(serial.get()), 128);
    // Issuer == subject
    EXPECT_EQ(X509_NAME_cmp(X509_get_subject_name(cert), X509_get_issuer_name(cert)), 0);
}

TEST(LocalCa, DistinctCasGetDistinctSerialsAndKeys) {
    TempDir a, b;
    LocalCa ca1 = LocalCa::load_or_create(a.path(), {});
    LocalCa ca2 = LocalCa::load_or_create(b.path(), {});
    EXPECT_NE(ASN1_INTEGER_cmp(X509_get0_serialNumber(ca1.cert()), X509_get0_serialNumber(ca2.cert())), 0);
    EXPECT_NE(EVP_PKEY_eq(ca1.key(), ca2.key()), 1);
}

TEST(LocalCa, SecondStartReusesTheSameCa) {
    TempDir dir;
    LocalCa first = LocalCa::load_or_create(dir.path(), {"api.example.com"});
    const std::string key_bytes = read_file(first.key_path());
    const std::string cert_bytes = read_file(first.cert_path());

    LocalCa second = LocalCa::load_or_create(dir.path(), {"api.example.com"});
    EXPECT_FALSE(second.created());
    EXPECT_EQ(second.cert_pem(), first.cert_pem());
    EXPECT_EQ(EVP_PKEY_eq(second.key(), first.key()), 1);
    EXPECT_EQ(X509_cmp(second.cert(), first.cert()), 0);
    EXPECT_EQ(second.permitted_names(), first.permitted_names());
    EXPECT_EQ(read_file(first.key_path()), key_bytes);
    EXPECT_EQ(read_file(first.cert_path()), cert_bytes);

    // Fewer names, or a name inside a permitted subtree, still fit this CA.
    EXPECT_NO_THROW(LocalCa::load_or_create(dir.path(), {}));
    EXPECT_NO_THROW(LocalCa::load_or_create(dir.path(), {"eu.api.example.com"}));
}

void expect_error_mentioning(const std::function<void()>& f, const std::vector<std::string>& needles) {
    try {
        f();
        ADD_FAILURE() << "no error thrown";
    } catch (const Error& e) {
        for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    }
}

TEST(LocalCa, CorruptKeyFileIsAnErrorNamingItAndIsLeftAlone) {
    TempDir dir;
    LocalCa ca = LocalCa::load_or_create(dir.path(), {});
    const std::string cert_bytes = read_file(ca.cert_path());
    overwrite(ca.key_path(), "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n");
    expect_error_mentioning([&] { LocalCa::load_or_create(dir.path(), {}); }, {ca.key_path()});
    EXPECT_EQ(read_file(ca.key_path()), "-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n");
    EXPECT_EQ(read_file(ca.cert_path()), cert_bytes);
}

TEST(LocalCa, CorruptCertFileIsAnErrorNamingIt) {
    TempDir dir;
    LocalCa ca = LocalCa::load_or_create(dir.path(), {});
    overwrite(ca.cert_path(), "garbage");
    expect_error_mentioning([&] { LocalCa::load_or_create(dir.path(), {}); }, {ca.cert_path()});
    EXPECT_EQ(read_file(ca.cert_path()), "garbage");
}

TEST(LocalCa, KeyOfAnotherCaIsRejected) {
    TempDir dir, other;
    LocalCa ca = LocalCa::load_or_create(dir.path(), {});
    LocalCa ca2 = LocalCa::load_or_create(other.path(), {});
    overwrite(ca.key_path(), read_file(ca2.key_path()));
    expect_error_mentioning([&] { LocalCa::load_or_create(dir.path(), {}); },
                            {ca.key_path(), ca.cert_path(), "does not belong"});
}

TEST(LocalCa, HalfPresentCaIsAnErrorNotARecreation) {
    TempDir dir;
    LocalCa ca = LocalCa::load_or_create(dir.path(), {});
    const std::string key_bytes = read_file(ca.key_path());
    std::filesystem::remove(ca.cert_path());
    expect_error_mentioning([&] { LocalCa::load_or_create(dir.path(), {}); }, {ca.cert_path(), "missing"});
    EXPECT_EQ(read_file(ca.key_path()), key_bytes);
    EXPECT_FALSE(std::filesystem::exists(ca.cert_path()));
}

TEST(LocalCa, KeyReadableByOthersIsRefused) {
    TempDir dir;
    LocalCa ca = LocalCa::load_or_create(dir.path(), {});
    ASSERT_EQ(::chmod(ca.key_path().c_str(), 0644), 0);
    expect_error_mentioning([&] { LocalCa::load_or_create(dir.path(), {}); }, {ca.key_path(), "chmod 600"});
}

TEST(LocalCa, NameOutsideTheExistingCaIsAnError) {
    TempDir dir;
    LocalCa ca = LocalCa::load_or_create(dir.path(), {});
    expect_error_mentioning([&] { LocalCa::load_or_create(dir.path(), {"api.example.com"}); },
                            {ca.cert_path(), "api.example.com", "inference.local"});
}

TEST(LocalCa, InvalidPermittedNameCreatesNothing) {
    TempDir dir;
    expect_error_mentioning([&] { LocalCa::load_or_create(dir.path(), {"*.example.com"}); }, {"*.example.com"});
    EXPECT_FALSE(std::filesystem::exists(dir.path() + "/ca"));
}

TEST(LocalCa, LeftoverStagingDirectoryIsCleanedUp) {
    TempDir dir;
    std::filesystem::create_directory(dir.path() + "/.ca-new.abc123");
    write_file_atomic(dir.path() + "/.ca-new.abc123/ca.key", "stale", 0600);
    LocalCa ca = LocalCa::load_or_create(dir.path(), {});
    EXPECT_TRUE(ca.created());
    EXPECT_FALSE(std::filesystem::exists(dir.path() + "/.ca-new.abc123"));
}

TEST(LocalCa, PermitsFollowsSubtreeSemantics) {
    TempDir dir;
    LocalCa ca = LocalCa::load_or_create(dir.path(), {"example.com"});
    EXPECT_TRUE(ca.permits("inference.local"));
    EXPECT_TRUE(ca.permits("INFERENCE.local"));
    EXPECT_TRUE(ca.permits("api.example.com"));
    EXPECT_FALSE(ca.permits("notinference.local"));
    EXPECT_FALSE(ca.permits("example.com.evil"));
    EXPECT_FALSE(ca.permits("local"));
}

TEST(DnsName, Normalize) {
    EXPECT_EQ(normalize_dns_name("Inference.LOCAL"), "inference.local");
    EXPECT_EQ(normalize_dns_name("a-b.c0"), "a-b.c0");
    EXPECT_EQ(normalize_dns_name(std::string(63, 'a') + ".b"), std::string(63, 'a') + ".b");
    for (const char* bad : {"", ".", "a..b", "a.", ".a", "-a.b", "a-.b", "*.a", "a_b", "a b", "a/b", "ä.b"})
        EXPECT_EQ(normalize_dns_name(bad), std::nullopt) << bad;
    EXPECT_EQ(normalize_dns_name(std::string(64, 'a') + ".b"), std::nullopt);
    EXPECT_EQ(normalize_dns_name(std::string("a\0b", 3)), std::nullopt);
}

}  // namespace
}  // namespace redir::tls
