#pragma once
// Throwaway PKI for tests: a CA and leaves it signs, made with OpenSSL at test
// time so no key material lives in the repository.
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace redir::terminator::test {

struct KeyCert {
    std::string key_pem;
    std::string cert_pem;
};

namespace detail {
struct PkeyFree {
    void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
    void operator()(X509* p) const { X509_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;
using Cert = std::unique_ptr<X509, X509Free>;

inline void check(bool ok, const char* what) {
    if (!ok) throw std::runtime_error(std::string("OpenSSL: ") + what);
}

inline Pkey new_key() {
    Pkey k(EVP_EC_gen("P-256"));
    check(k != nullptr, "EVP_EC_gen");
    return k;
}

inline std::string key_pem(EVP_PKEY* k) {
    BIO* b = BIO_new(BIO_s_mem());
    check(PEM_write_bio_PrivateKey(b, k, nullptr, nullptr, 0, nullptr, nullptr) == 1, "write key");
    char* d;
    long n = BIO_get_mem_data(b, &d);
    std::string s(d, static_cast<size_t>(n));
    BIO_free(b);
    return s;
}

inline std::string cert_pem(X509* c) {
    BIO* b = BIO_new(BIO_s_mem());
    check(PEM_write_bio_X509(b, c) == 1, "write cert");
    char* d;
    long n = BIO_get_mem_data(b, &d);
    std::string s(d, static_cast<size_t>(n));
    BIO_free(b);
    return s;
}

inline void add_ext(X509* cert, X509* issuer, int nid, const std::string& value) {
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ex = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
    check(ex != nullptr, "extension");
    X509_add_ext(cert, ex, -1);
    X509_EXTENSION_free(ex);
}

inline Cert make_cert(EVP_PKEY* key, const std::string& cn, X509* issuer, EVP_PKEY* issuer_key, bool ca,
                      const std::string& san) {
    static long serial = 1000;
    Cert c(X509_new());
    X509_set_version(c.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(c.get()), ++serial);
    X509_gmtime_adj(X509_getm_notBefore(c.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(c.get()), 3600 * 24);
    X509_set_pubkey(c.get(), key);
    X509_NAME* name = X509_get_subject_name(c.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1,
                               0);
    X509_set_issuer_name(c.get(), issuer ? X509_get_subject_name(issuer) : name);
    X509* iss = issuer ? issuer : c.get();
    if (ca) {
        add_ext(c.get(), iss, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(c.get(), iss, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(c.get(), iss, NID_basic_constraints, "critical,CA:FALSE");
        add_ext(c.get(), iss, NID_ext_key_usage, "serverAuth");
        if (!san.empty()) add_ext(c.get(), iss, NID_subject_alt_name, san);
    }
    add_ext(c.get(), iss, NID_subject_key_identifier, "hash");
    check(X509_sign(c.get(), issuer_key ? issuer_key : key, EVP_sha256()) > 0, "sign");
    return c;
}
}  // namespace detail

class TestCa {
public:
    TestCa() : key_(detail::new_key()), cert_(detail::make_cert(key_.get(), "redir test CA", nullptr, nullptr, true, "")) {}
    std::string cert_pem() const { return detail::cert_pem(cert_.get()); }
    // SAN like "IP:127.0.0.1,DNS:provider.test".
    KeyCert issue(const std::string& cn, const std::string& san) const {
        auto k = detail::new_key();
        auto c = detail::make_cert(k.get(), cn, cert_.get(), key_.get(), false, san);
        return {detail::key_pem(k.get()), detail::cert_pem(c.get())};
    }

private:
    detail::Pkey key_;
    detail::Cert cert_;
};

}  // namespace redir::terminator::test
