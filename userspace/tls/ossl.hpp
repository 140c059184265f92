#pragma once
// Owning handles for OpenSSL objects and the few primitives every TLS piece of
// the agent shares. Every OpenSSL object the agent creates is freed exactly once
// by its handle; every failure becomes a redir::Error that carries the OpenSSL
// error queue, so a log line says what OpenSSL objected to.
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <chrono>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>

#include "common/error.hpp"

namespace redir::tls {

namespace detail {
template <auto Free>
struct Deleter {
    template <class T>
    void operator()(T* p) const noexcept {
        Free(p);
    }
};
// STACK_OF(...) free functions are macros/inline wrappers, so they get named
// deleters instead of going through Deleter<>.
struct X509StackDeleter {
    void operator()(STACK_OF(X509)* s) const noexcept { sk_X509_pop_free(s, X509_free); }
};
struct Asn1ObjectStackDeleter {
    void operator()(STACK_OF(ASN1_OBJECT)* s) const noexcept { sk_ASN1_OBJECT_pop_free(s, ASN1_OBJECT_free); }
};
}  // namespace detail

using PkeyPtr = std::unique_ptr<EVP_PKEY, detail::Deleter<&EVP_PKEY_free>>;
using PkeyCtxPtr = std::unique_ptr<EVP_PKEY_CTX, detail::Deleter<&EVP_PKEY_CTX_free>>;
using MdCtxPtr = std::unique_ptr<EVP_MD_CTX, detail::Deleter<&EVP_MD_CTX_free>>;
using X509Ptr = std::unique_ptr<X509, detail::Deleter<&X509_free>>;
using X509NamePtr = std::unique_ptr<X509_NAME, detail::Deleter<&X509_NAME_free>>;
using X509ExtPtr = std::unique_ptr<X509_EXTENSION, detail::Deleter<&X509_EXTENSION_free>>;
using X509StorePtr = std::unique_ptr<X509_STORE, detail::Deleter<&X509_STORE_free>>;
using X509StoreCtxPtr = std::unique_ptr<X509_STORE_CTX, detail::Deleter<&X509_STORE_CTX_free>>;
using X509StackPtr = std::unique_ptr<STACK_OF(X509), detail::X509StackDeleter>;
using SslCtxPtr = std::unique_ptr<SSL_CTX, detail::Deleter<&SSL_CTX_free>>;
using SslPtr = std::unique_ptr<SSL, detail::Deleter<&SSL_free>>;
using SslSessionPtr = std::unique_ptr<SSL_SESSION, detail::Deleter<&SSL_SESSION_free>>;
using BioPtr = std::unique_ptr<BIO, detail::Deleter<&BIO_free_all>>;
using BignumPtr = std::unique_ptr<BIGNUM, detail::Deleter<&BN_free>>;
using Asn1IntegerPtr = std::unique_ptr<ASN1_INTEGER, detail::Deleter<&ASN1_INTEGER_free>>;
using Asn1OctetStringPtr = std::unique_ptr<ASN1_OCTET_STRING, detail::Deleter<&ASN1_OCTET_STRING_free>>;
using Asn1BitStringPtr = std::unique_ptr<ASN1_BIT_STRING, detail::Deleter<&ASN1_BIT_STRING_free>>;
using Asn1Ia5StringPtr = std::unique_ptr<ASN1_IA5STRING, detail::Deleter<&ASN1_IA5STRING_free>>;
using Asn1ObjectStackPtr = std::unique_ptr<STACK_OF(ASN1_OBJECT), detail::Asn1ObjectStackDeleter>;
using GeneralNamePtr = std::unique_ptr<GENERAL_NAME, detail::Deleter<&GENERAL_NAME_free>>;
using GeneralNamesPtr = std::unique_ptr<GENERAL_NAMES, detail::Deleter<&GENERAL_NAMES_free>>;
using GeneralSubtreePtr = std::unique_ptr<GENERAL_SUBTREE, detail::Deleter<&GENERAL_SUBTREE_free>>;
using NameConstraintsPtr = std::unique_ptr<NAME_CONSTRAINTS, detail::Deleter<&NAME_CONSTRAINTS_free>>;
using BasicConstraintsPtr = std::unique_ptr<BASIC_CONSTRAINTS, detail::Deleter<&BASIC_CONSTRAINTS_free>>;
using AuthorityKeyIdPtr = std::unique_ptr<AUTHORITY_KEYID, detail::Deleter<&AUTHORITY_KEYID_free>>;

// Takes (and clears) this thread's OpenSSL error queue as one line;
// "no detail from OpenSSL" when it is empty.
std::string take_errors();

// Error(what + ": " + take_errors()).
[[noreturn]] void throw_openssl(std::string_view what);

// OpenSSL signals failure with 0 or a negative return, or a null pointer.
inline void ensure(int rc, std::string_view what) {
    if (rc <= 0) throw_openssl(what);
}
template <class T>
T* ensure_ptr(T* p, std::string_view what) {
    if (p == nullptr) throw_openssl(what);
    return p;
}

// New owning reference to an object someone else owns.
X509Ptr up_ref(X509* x);
PkeyPtr up_ref(EVP_PKEY* k);

// Fresh ECDSA P-256 key pair.
PkeyPtr generate_p256_key();

// Positive 128-bit serial from the CSPRNG (RFC 5280 allows up to 20 octets;
// CA/B requires at least 64 bits of entropy).
Asn1IntegerPtr random_serial();

// Adds EXT (an OpenSSL extension struct of NID's type) to CERT.
void add_extension(X509* cert, int nid, void* value, bool critical);

// SHA-1 of the subjectPublicKey bits: RFC 5280 4.2.1.2 method (1).
Asn1OctetStringPtr key_identifier(X509* cert);

// keyUsage (always critical here) from RFC 5280 bit numbers.
inline constexpr int kKuDigitalSignature = 0;
inline constexpr int kKuKeyCertSign = 5;
inline constexpr int kKuCrlSign = 6;
void add_key_usage(X509* cert, std::initializer_list<int> bits);

// authorityKeyIdentifier carrying ISSUER_KEY_ID.
void add_authority_key_id(X509* cert, const ASN1_OCTET_STRING* issuer_key_id);

// A dNSName GENERAL_NAME.
GeneralNamePtr dns_general_name(std::string_view name);

std::string to_pem(X509* cert);
std::string private_key_to_pem(EVP_PKEY* key);  // unencrypted PKCS#8
// WHAT names the source (usually a path) for the error message.
X509Ptr cert_from_pem(std::string_view pem, std::string_view what);
PkeyPtr private_key_from_pem(std::string_view pem, std::string_view what);

std::chrono::system_clock::time_point to_time_point(const ASN1_TIME* t);
void set_time(ASN1_TIME* field, std::chrono::system_clock::time_point tp, std::string_view what);

}  // namespace redir::tls
