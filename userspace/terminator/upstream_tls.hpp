#pragma once
// TLS towards providers: the system trust store plus an optional per-provider
// CA file, and a name (or IP-literal SAN) check on every connection.
#include <openssl/ssl.h>

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <string>

namespace redir::terminator {

// Verifying client context. CA_FILE ("" = none) adds PEM trust anchors beside
// the system store. Throws redir::Error naming the file when it cannot be used.
std::shared_ptr<boost::asio::ssl::context> make_client_ssl_ctx(const std::string& ca_file);

// Per connection: SNI for names (never for IP literals), and the identity the
// certificate must carry. Throws redir::Error on failure.
void prepare_client_ssl(SSL* ssl, const std::string& host, bool ip_literal);

// Why verification failed, for the 502 message ("" when it did not).
std::string verify_failure(SSL* ssl);

}  // namespace redir::terminator
