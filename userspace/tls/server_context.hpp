#pragma once
// The terminator listener's SSL_CTX. It holds no certificate of its own: the
// SNI callback picks the leaf for the requested name from the LeafCache and
// switches the connection to that leaf's SSL_CTX, or aborts the handshake.
//
// Missing SNI: the connection is served as Options::default_name
// (inference.local). A client reaches the terminator only through a redirect
// of its connect(), so one that sent no SNI was almost always talking to
// inference.local by address (or is an old client); presenting that leaf
// lets it either succeed or fail with a readable "certificate is for
// inference.local" instead of an opaque alert. Set default_name empty to
// refuse such clients instead.
#include <functional>
#include <memory>
#include <string>

#include "tls/leaf_cache.hpp"
#include "tls/ossl.hpp"

namespace redir::tls {

class ServerContext {
public:
    struct Hooks {
        // A handshake was refused with unrecognized_name. SNI is what the
        // client sent ("" when it sent none). For the audit log.
        std::function<void(const std::string& sni)> on_refused;
        // Issuing the leaf for a served name failed; the handshake got
        // internal_error.
        std::function<void(const std::string& sni, const std::string& error)> on_error;
    };
    struct Options {
        std::string default_name = std::string(kInferenceName);
    };

    // The SSL_CTX owns what its callback needs (CACHE and the hooks), so
    // SSL objects made from it stay safe after this ServerContext is gone.
    ServerContext(std::shared_ptr<LeafCache> cache, Hooks hooks) : ServerContext(std::move(cache), std::move(hooks), Options{}) {}
    ServerContext(std::shared_ptr<LeafCache> cache, Hooks hooks, Options opts);

    // For SSL_new on accepted connections.
    SSL_CTX* get() const noexcept { return ctx_.get(); }

private:
    SslCtxPtr ctx_;
};

}  // namespace redir::tls
