#include "terminator/upstream_tls.hpp"

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "common/error.hpp"

namespace redir::terminator {

namespace {
std::string ossl_error() {
    unsigned long e = ERR_get_error();
    if (!e) return "unknown OpenSSL error";
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return buf;
}
}  // namespace

std::shared_ptr<boost::asio::ssl::context> make_client_ssl_ctx(const std::string& ca_file) {
    namespace ssl = boost::asio::ssl;
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
    SSL_CTX* c = ctx->native_handle();
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    if (SSL_CTX_set_default_verify_paths(c) != 1)
        throw Error("cannot load the system trust store: " + ossl_error());
    if (!ca_file.empty() && SSL_CTX_load_verify_locations(c, ca_file.c_str(), nullptr) != 1)
        throw Error("cannot load CA file " + ca_file + ": " + ossl_error());
    SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
    static const unsigned char alpn[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
    SSL_CTX_set_alpn_protos(c, alpn, sizeof alpn);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT);
    return ctx;
}

void prepare_client_ssl(SSL* ssl, const std::string& host, bool ip_literal) {
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (ip_literal) {
        if (X509_VERIFY_PARAM_set1_ip_asc(param, host.c_str()) != 1)
            throw Error("invalid provider address " + host);
        return;
    }
    if (SSL_set_tlsext_host_name(ssl, host.c_str()) != 1) throw Error("cannot set SNI " + host + ": " + ossl_error());
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    if (SSL_set1_host(ssl, host.c_str()) != 1) throw Error("cannot set expected host " + host);
}

std::string verify_failure(SSL* ssl) {
    long r = SSL_get_verify_result(ssl);
    if (r == X509_V_OK) return {};
    return X509_verify_cert_error_string(r);
}

}  // namespace redir::terminator
