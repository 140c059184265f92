#pragma once
// Shared by the redir_tls tests: a scratch state directory, chain
// verification as a TLS client would do it, and an in-memory handshake
// between two SSL objects over a BIO pair.
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "loopback.hpp"
#include "tls/ossl.hpp"

namespace redir::tls::test {

// A scratch directory of the TLS tests (the loopback tests' one, named for TLS).
class TempDir : public redir::test::ScratchDir {
public:
    TempDir() : ScratchDir("redir-tls-test") {}
};

// X509_V_OK or the verification error for LEAF under the single trust anchor
// CA, with the host name check for HOST and the TLS server purpose.
inline int verify_leaf(X509* leaf, X509* ca, const std::string& host,
                       std::optional<std::chrono::system_clock::time_point> at = std::nullopt) {
    X509StorePtr store(X509_STORE_new());
    X509_STORE_add_cert(store.get(), ca);
    X509StoreCtxPtr ctx(X509_STORE_CTX_new());
    X509_STORE_CTX_init(ctx.get(), store.get(), leaf, nullptr);
    X509_VERIFY_PARAM* param = X509_STORE_CTX_get0_param(ctx.get());
    X509_VERIFY_PARAM_set1_host(param, host.c_str(), host.size());
    X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_SSL_SERVER);
    if (at) X509_VERIFY_PARAM_set_time(param, std::chrono::system_clock::to_time_t(*at));
    int ok = X509_verify_cert(ctx.get());
    ERR_clear_error();
    return ok == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx.get());
}

// A client context trusting only CA; VERSION 0 means 1.2 and 1.3.
inline SslCtxPtr client_ctx(X509* ca, int version = 0, bool tickets = true) {
    SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx.get()), ca);
    SSL_CTX_set_verify(ctx.get(), SSL_VERIFY_PEER, nullptr);
    if (version != 0) {
        SSL_CTX_set_min_proto_version(ctx.get(), version);
        SSL_CTX_set_max_proto_version(ctx.get(), version);
    }
    if (!tickets) SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET);
    return ctx;
}

struct ClientOptions {
    std::optional<std::string> sni = "inference.local";
    std::string verify_host = "inference.local";
    std::vector<std::string> alpn = {"h2", "http/1.1"};
    SSL_SESSION* session = nullptr;
};

inline SslPtr new_client(SSL_CTX* ctx, const ClientOptions& o) {
    SslPtr ssl(SSL_new(ctx));
    if (o.sni) SSL_set_tlsext_host_name(ssl.get(), o.sni->c_str());
    SSL_set1_host(ssl.get(), o.verify_host.c_str());
    if (!o.alpn.empty()) {
        std::string wire;
        for (const auto& p : o.alpn) wire += static_cast<char>(p.size()) + p;
        SSL_set_alpn_protos(ssl.get(), reinterpret_cast<const unsigned char*>(wire.data()),
                            static_cast<unsigned>(wire.size()));
    }
    if (o.session) SSL_set_session(ssl.get(), o.session);
    return ssl;
}

struct Handshake {
    SslPtr client;
    SslPtr server;
    bool ok = false;
    unsigned long client_error = 0;  // last OpenSSL error on the client side
};

// Drives both ends over a BIO pair until both finish or fail.
inline Handshake handshake(SslPtr client, SslPtr server) {
    BIO* cb = nullptr;
    BIO* sb = nullptr;
    BIO_new_bio_pair(&cb, 0, &sb, 0);
    SSL_set_bio(client.get(), cb, cb);
    SSL_set_bio(server.get(), sb, sb);
    SSL_set_connect_state(client.get());
    SSL_set_accept_state(server.get());
    enum { kRunning, kDone, kFailed } cs = kRunning, ss = kRunning;
    Handshake h;
    for (int i = 0; i < 100 && (cs == kRunning || ss == kRunning); ++i) {
        if (cs == kRunning) {
            int rc = SSL_do_handshake(client.get());
            int err = SSL_get_error(client.get(), rc);
            if (rc == 1) cs = kDone;
            else if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
                cs = kFailed;
                h.client_error = ERR_peek_last_error();
            }
            ERR_clear_error();
        }
        if (ss == kRunning) {
            int rc = SSL_do_handshake(server.get());
            int err = SSL_get_error(server.get(), rc);
            if (rc == 1) ss = kDone;
            else if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) ss = kFailed;
            ERR_clear_error();
        }
    }
    h.ok = cs == kDone && ss == kDone;
    h.client = std::move(client);
    h.server = std::move(server);
    return h;
}

// Application data both ways; also makes the client take in TLS 1.3 tickets.
inline bool exchange(SSL* client, SSL* server) {
    char buf[16];
    if (SSL_write(client, "ping", 4) != 4) return false;
    if (SSL_read(server, buf, sizeof buf) != 4 || std::string(buf, 4) != "ping") return false;
    if (SSL_write(server, "pong", 4) != 4) return false;
    if (SSL_read(client, buf, sizeof buf) != 4 || std::string(buf, 4) != "pong") return false;
    return true;
}

inline std::string alpn_of(SSL* ssl) {
    const unsigned char* p = nullptr;
    unsigned len = 0;
    SSL_get0_alpn_selected(ssl, &p, &len);
    return std::string(reinterpret_cast<const char*>(p), len);
}

}  // namespace redir::tls::test
