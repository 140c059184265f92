#include <gtest/gtest.h>
#include <openssl/err.h>

#include <atomic>

#include "tls/server_context.hpp"
#include "tls_test_util.hpp"

namespace redir::tls {
namespace {

using test::ClientOptions;
using test::Handshake;

class HandshakeTest : public ::testing::Test {
protected:
    test::TempDir dir;
    LocalCa ca = LocalCa::load_or_create(dir.path(), {});
    std::shared_ptr<LeafCache> cache = std::make_shared<LeafCache>(ca, std::vector<std::string>{});
    std::vector<std::string> refused;
    std::vector<std::string> errors;

    ServerContext make_server(ServerContext::Options opts = {}) {
        return ServerContext(cache,
                             ServerContext::Hooks{
                                 .on_refused = [this](const std::string& sni) { refused.push_back(sni); },
                                 .on_error = [this](const std::string&, const std::string& e) { errors.push_back(e); },
                             },
                             std::move(opts));
    }

    Handshake connect(SSL_CTX* client_ctx, SSL_CTX* server_ctx, const ClientOptions& o = {}) {
        return test::handshake(test::new_client(client_ctx, o), SslPtr(SSL_new(server_ctx)));
    }
};

void close_both(Handshake& h) {
    // A clean close keeps a TLS 1.2 session resumable from the server cache.
    SSL_shutdown(h.client.get());
    SSL_shutdown(h.server.get());
}

TEST_F(HandshakeTest, Tls13WithSniVerifiesChainAndPicksHttp11) {
    ServerContext server = make_server();
    SslCtxPtr client = test::client_ctx(ca.cert(), TLS1_3_VERSION);
    Handshake h = connect(client.get(), server.get());
    ASSERT_TRUE(h.ok) << ERR_reason_error_string(h.client_error);
    EXPECT_EQ(SSL_get_verify_result(h.client.get()), X509_V_OK);
    EXPECT_EQ(SSL_version(h.client.get()), TLS1_3_VERSION);
    EXPECT_EQ(test::alpn_of(h.client.get()), "http/1.1");
    EXPECT_EQ(test::alpn_of(h.server.get()), "http/1.1");
    X509Ptr peer(SSL_get1_peer_certificate(h.client.get()));
    ASSERT_TRUE(peer);
    EXPECT_EQ(X509_check_host(peer.get(), "inference.local", 0, 0, nullptr), 1);
    EXPECT_EQ(SSL_get_servername(h.server.get(), TLSEXT_NAMETYPE_host_name), std::string("inference.local"));
    EXPECT_TRUE(test::exchange(h.client.get(), h.server.get()));
    EXPECT_TRUE(refused.empty());
    EXPECT_TRUE(errors.empty());
    EXPECT_EQ(cache->issued_count(), 1u);
}

TEST_F(HandshakeTest, Tls12WorksWithAnAeadEcdsaSuite) {
    ServerContext server = make_server();
    SslCtxPtr client = test::client_ctx(ca.cert(), TLS1_2_VERSION);
    Handshake h = connect(client.get(), server.get());
    ASSERT_TRUE(h.ok) << ERR_reason_error_string(h.client_error);
    EXPECT_EQ(SSL_get_verify_result(h.client.get()), X509_V_OK);
    EXPECT_EQ(SSL_version(h.client.get()), TLS1_2_VERSION);
    EXPECT_EQ(test::alpn_of(h.client.get()), "http/1.1");
    std::string cipher = SSL_get_cipher_name(h.client.get());
    EXPECT_TRUE(cipher.starts_with("ECDHE-ECDSA-")) << cipher;
    EXPECT_TRUE(cipher.find("GCM") != std::string::npos || cipher.find("CHACHA20") != std::string::npos) << cipher;
    EXPECT_TRUE(test::exchange(h.client.get(), h.server.get()));
}

// The server's own TLS 1.2 minimum, not the host's OpenSSL policy, refuses
// TLS 1.1: the server context is dropped to security level 0 (what a host's
// openssl.cnf may do), the client offers TLS 1.1 with a suite TLS 1.1 can use,
// and the refusal must be the protocol_version alert, not a cipher mismatch.
TEST_F(HandshakeTest, OlderThanTls12IsRefusedBecauseOfTheVersion) {
    ServerContext server = make_server();
    SSL_CTX_set_security_level(server.get(), 0);
    auto tls11_client = [&](int max_version) {
        SslCtxPtr c = test::client_ctx(ca.cert());
        SSL_CTX_set_security_level(c.get(), 0);
        SSL_CTX_set_min_proto_version(c.get(), TLS1_1_VERSION);
        SSL_CTX_set_max_proto_version(c.get(), max_version);
        EXPECT_EQ(SSL_CTX_set_cipher_list(c.get(), "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES128-GCM-SHA256:@SECLEVEL=0"),
                  1);
        return c;
    };
    // Control: the same client allowed TLS 1.2 connects, so nothing else stands in the way.
    SslCtxPtr up_to_12 = tls11_client(TLS1_2_VERSION);
    Handshake ok = connect(up_to_12.get(), server.get());
    ASSERT_TRUE(ok.ok) << ERR_reason_error_string(ok.client_error);
    EXPECT_EQ(SSL_version(ok.client.get()), TLS1_2_VERSION);

    SslCtxPtr only_11 = tls11_client(TLS1_1_VERSION);
    Handshake h = connect(only_11.get(), server.get());
    EXPECT_FALSE(h.ok);
    EXPECT_EQ(ERR_GET_REASON(h.client_error), SSL_R_TLSV1_ALERT_PROTOCOL_VERSION)
        << "expected the server's protocol_version alert, got: " << ERR_reason_error_string(h.client_error);
}

TEST_F(HandshakeTest, ClientWithoutAlpnStillConnects) {
    ServerContext server = make_server();
    SslCtxPtr client = test::client_ctx(ca.cert());
    Handshake h = connect(client.get(), server.get(), ClientOptions{.alpn = {}});
    ASSERT_TRUE(h.ok);
    EXPECT_EQ(test::alpn_of(h.client.get()), "");
}

TEST_F(HandshakeTest, AlpnWithoutHttp11GetsNoApplicationProtocol) {
    ServerContext server = make_server();
    SslCtxPtr client = test::client_ctx(ca.cert());
    Handshake h = connect(client.get(), server.get(), ClientOptions{.alpn = {"h2"}});
    EXPECT_FALSE(h.ok);
    EXPECT_EQ(ERR_GET_REASON(h.client_error), SSL_R_TLSV1_ALERT_NO_APPLICATION_PROTOCOL)
        << ERR_reason_error_string(h.client_error);
}

struct ResumeCase {
    int version;
    bool tickets;
};

class ResumptionTest : public HandshakeTest, public ::testing::WithParamInterface<ResumeCase> {};

TEST_P(ResumptionTest, SecondConnectionResumes) {
    ServerContext server = make_server();
    SslCtxPtr client = test::client_ctx(ca.cert(), GetParam().version, GetParam().tickets);

    Handshake first = connect(client.get(), server.get());
    ASSERT_TRUE(first.ok);
    ASSERT_TRUE(test::exchange(first.client.get(), first.server.get()));
    EXPECT_FALSE(SSL_session_reused(first.client.get()));
    SslSessionPtr session(SSL_get1_session(first.client.get()));
    ASSERT_TRUE(session);
    ASSERT_TRUE(SSL_SESSION_is_resumable(session.get()));
    close_both(first);

    Handshake second = connect(client.get(), server.get(), ClientOptions{.session = session.get()});
    ASSERT_TRUE(second.ok);
    EXPECT_TRUE(SSL_session_reused(second.client.get()));
    EXPECT_TRUE(SSL_session_reused(second.server.get()));
    EXPECT_EQ(SSL_version(second.client.get()), GetParam().version);
    EXPECT_EQ(test::alpn_of(second.client.get()), "http/1.1");
    EXPECT_TRUE(test::exchange(second.client.get(), second.server.get()));
    EXPECT_EQ(cache->issued_count(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Versions, ResumptionTest,
                         ::testing::Values(ResumeCase{TLS1_3_VERSION, true}, ResumeCase{TLS1_2_VERSION, true},
                                           ResumeCase{TLS1_2_VERSION, false}),
                         [](const auto& info) {
                             return std::string(info.param.version == TLS1_3_VERSION ? "Tls13" : "Tls12") +
                                    (info.param.tickets ? "Ticket" : "SessionCache");
                         });

TEST_F(HandshakeTest, UnservedSniGetsUnrecognizedNameAndFiresTheHook) {
    ServerContext server = make_server();
    SslCtxPtr client = test::client_ctx(ca.cert());
    Handshake h = connect(client.get(), server.get(),
                          ClientOptions{.sni = "api.openai.com", .verify_host = "api.openai.com"});
    EXPECT_FALSE(h.ok);
    EXPECT_EQ(ERR_GET_REASON(h.client_error), SSL_R_TLSV1_UNRECOGNIZED_NAME)
        << ERR_reason_error_string(h.client_error);
    EXPECT_EQ(refused, (std::vector<std::string>{"api.openai.com"}));
    EXPECT_EQ(cache->issued_count(), 0u);
}

TEST_F(HandshakeTest, MissingSniIsServedAsInferenceLocal) {
    ServerContext server = make_server();
    SslCtxPtr client = test::client_ctx(ca.cert());
    Handshake h = connect(client.get(), server.get(), ClientOptions{.sni = std::nullopt});
    ASSERT_TRUE(h.ok);
    EXPECT_EQ(SSL_get_verify_result(h.client.get()), X509_V_OK);
    EXPECT_TRUE(refused.empty());
}

TEST_F(HandshakeTest, MissingSniIsRefusedWithoutADefaultName) {
    ServerContext server = make_server(ServerContext::Options{.default_name = ""});
    SslCtxPtr client = test::client_ctx(ca.cert());
    Handshake h = connect(client.get(), server.get(), ClientOptions{.sni = std::nullopt});
    EXPECT_FALSE(h.ok);
    EXPECT_EQ(ERR_GET_REASON(h.client_error), SSL_R_TLSV1_UNRECOGNIZED_NAME);
    EXPECT_EQ(refused, (std::vector<std::string>{""}));
}

TEST_F(HandshakeTest, ConnectionOutlivesTheServerContextObject) {
    SslPtr server_ssl;
    {
        ServerContext server = make_server();
        server_ssl.reset(SSL_new(server.get()));
    }
    SslCtxPtr client = test::client_ctx(ca.cert());
    Handshake h = test::handshake(test::new_client(client.get(), {}), std::move(server_ssl));
    ASSERT_TRUE(h.ok);
    EXPECT_TRUE(test::exchange(h.client.get(), h.server.get()));
}

TEST_F(HandshakeTest, ConnectionOutlivesItsLeafsRenewal) {
    auto t0 = std::chrono::system_clock::now();
    std::atomic<std::chrono::system_clock::time_point> clock{t0};
    auto own = std::make_shared<LeafCache>(ca, std::vector<std::string>{},
                                           LeafCache::Options{.clock = [&] { return clock.load(); }});
    ServerContext server(own, {});
    SslCtxPtr client = test::client_ctx(ca.cert());
    Handshake h = connect(client.get(), server.get());
    ASSERT_TRUE(h.ok);
    std::weak_ptr<const Leaf> old = own->get("inference.local");
    clock = t0 + std::chrono::hours(24 * 6 + 12);
    auto renewed = own->get("inference.local");
    ASSERT_TRUE(renewed);
    ASSERT_EQ(own->issued_count(), 2u);
    EXPECT_TRUE(old.expired()) << "the cache let go of the old leaf";
    EXPECT_TRUE(test::exchange(h.client.get(), h.server.get()));
}

}  // namespace
}  // namespace redir::tls
