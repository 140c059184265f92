#include "tls/ossl.hpp"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <array>
#include <ctime>

namespace redir::tls {

std::string take_errors() {
    std::string out;
    unsigned long e;
    const char* file = nullptr;
    const char* data = nullptr;
    int line = 0;
    int flags = 0;
    while ((e = ERR_get_error_all(&file, &line, nullptr, &data, &flags)) != 0) {
        std::array<char, 256> buf{};
        ERR_error_string_n(e, buf.data(), buf.size());
        if (!out.empty()) out += "; ";
        out += buf.data();
        if ((flags & ERR_TXT_STRING) && data != nullptr && *data != '\0') {
            out += " (";
            out += data;
            out += ")";
        }
    }
    return out.empty() ? "no detail from OpenSSL" : out;
}

void throw_openssl(std::string_view what) {
    throw Error(std::string(what) + ": " + take_errors());
}

X509Ptr up_ref(X509* x) {
    ensure(X509_up_ref(x), "X509_up_ref");
    return X509Ptr(x);
}

PkeyPtr up_ref(EVP_PKEY* k) {
    ensure(EVP_PKEY_up_ref(k), "EVP_PKEY_up_ref");
    return PkeyPtr(k);
}

PkeyPtr generate_p256_key() {
    return PkeyPtr(ensure_ptr(EVP_EC_gen("P-256"), "cannot generate an ECDSA P-256 key"));
}

Asn1IntegerPtr random_serial() {
    std::array<unsigned char, 16> bytes{};
    ensure(RAND_bytes(bytes.data(), bytes.size()), "cannot draw a random serial number");
    // Top bit clear keeps the DER INTEGER positive without a padding octet;
    // a set low bit of the first octet keeps it at full length and non-zero.
    bytes[0] = static_cast<unsigned char>((bytes[0] & 0x7f) | 0x40);
    BignumPtr bn(ensure_ptr(BN_bin2bn(bytes.data(), bytes.size(), nullptr), "BN_bin2bn"));
    return Asn1IntegerPtr(ensure_ptr(BN_to_ASN1_INTEGER(bn.get(), nullptr), "BN_to_ASN1_INTEGER"));
}

void add_extension(X509* cert, int nid, void* value, bool critical) {
    ensure(X509_add1_ext_i2d(cert, nid, value, critical ? 1 : 0, X509V3_ADD_REPLACE),
           std::string("cannot add certificate extension ") + OBJ_nid2sn(nid));
}

Asn1OctetStringPtr key_identifier(X509* cert) {
    std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
    unsigned int len = 0;
    ensure(X509_pubkey_digest(cert, EVP_sha1(), md.data(), &len), "cannot hash the public key");
    Asn1OctetStringPtr id(ensure_ptr(ASN1_OCTET_STRING_new(), "ASN1_OCTET_STRING_new"));
    ensure(ASN1_OCTET_STRING_set(id.get(), md.data(), static_cast<int>(len)), "ASN1_OCTET_STRING_set");
    return id;
}

void add_key_usage(X509* cert, std::initializer_list<int> bits) {
    Asn1BitStringPtr ku(ensure_ptr(ASN1_BIT_STRING_new(), "ASN1_BIT_STRING_new"));
    for (int bit : bits) ensure(ASN1_BIT_STRING_set_bit(ku.get(), bit, 1), "ASN1_BIT_STRING_set_bit");
    add_extension(cert, NID_key_usage, ku.get(), true);
}

void add_authority_key_id(X509* cert, const ASN1_OCTET_STRING* issuer_key_id) {
    AuthorityKeyIdPtr akid(ensure_ptr(AUTHORITY_KEYID_new(), "AUTHORITY_KEYID_new"));
    akid->keyid = ensure_ptr(ASN1_OCTET_STRING_dup(issuer_key_id), "ASN1_OCTET_STRING_dup");
    add_extension(cert, NID_authority_key_identifier, akid.get(), false);
}

GeneralNamePtr dns_general_name(std::string_view name) {
    Asn1Ia5StringPtr ia5(ensure_ptr(ASN1_IA5STRING_new(), "ASN1_IA5STRING_new"));
    ensure(ASN1_STRING_set(ia5.get(), name.data(), static_cast<int>(name.size())), "ASN1_STRING_set");
    GeneralNamePtr gn(ensure_ptr(GENERAL_NAME_new(), "GENERAL_NAME_new"));
    GENERAL_NAME_set0_value(gn.get(), GEN_DNS, ia5.release());
    return gn;
}

namespace {

std::string bio_contents(BIO* bio) {
    char* data = nullptr;
    long n = BIO_get_mem_data(bio, &data);
    return std::string(data, static_cast<size_t>(n));
}

BioPtr read_bio(std::string_view pem) {
    return BioPtr(ensure_ptr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())), "BIO_new_mem_buf"));
}

// Never let OpenSSL fall back to prompting on a terminal for a passphrase.
int no_passphrase(char*, int, int, void*) { return -1; }

}  // namespace

std::string to_pem(X509* cert) {
    BioPtr bio(ensure_ptr(BIO_new(BIO_s_mem()), "BIO_new"));
    ensure(PEM_write_bio_X509(bio.get(), cert), "cannot encode certificate as PEM");
    return bio_contents(bio.get());
}

std::string private_key_to_pem(EVP_PKEY* key) {
    BioPtr bio(ensure_ptr(BIO_new(BIO_s_mem()), "BIO_new"));
    ensure(PEM_write_bio_PrivateKey(bio.get(), key, nullptr, nullptr, 0, nullptr, nullptr),
           "cannot encode private key as PEM");
    return bio_contents(bio.get());
}

X509Ptr cert_from_pem(std::string_view pem, std::string_view what) {
    BioPtr bio = read_bio(pem);
    X509* x = PEM_read_bio_X509(bio.get(), nullptr, no_passphrase, nullptr);
    if (x == nullptr) throw_openssl(std::string(what) + " does not hold a PEM certificate");
    return X509Ptr(x);
}

PkeyPtr private_key_from_pem(std::string_view pem, std::string_view what) {
    BioPtr bio = read_bio(pem);
    EVP_PKEY* k = PEM_read_bio_PrivateKey(bio.get(), nullptr, no_passphrase, nullptr);
    if (k == nullptr) throw_openssl(std::string(what) + " does not hold an unencrypted PEM private key");
    return PkeyPtr(k);
}

std::chrono::system_clock::time_point to_time_point(const ASN1_TIME* t) {
    struct tm tm {};
    ensure(ASN1_TIME_to_tm(t, &tm), "cannot read a certificate time");
    return std::chrono::system_clock::from_time_t(timegm(&tm));
}

void set_time(ASN1_TIME* field, std::chrono::system_clock::time_point tp, std::string_view what) {
    ensure_ptr(ASN1_TIME_set(field, std::chrono::system_clock::to_time_t(tp)), what);
}

}  // namespace redir::tls
