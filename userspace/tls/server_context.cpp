#include "tls/server_context.hpp"

#include <exception>

namespace redir::tls {

namespace {

struct State {
    std::shared_ptr<LeafCache> cache;
    ServerContext::Hooks hooks;
    ServerContext::Options opts;
};

// Callbacks run inside OpenSSL's C code: nothing may escape them.
void notify_refused(const State& st, const std::string& sni) noexcept {
    if (!st.hooks.on_refused) return;
    try {
        st.hooks.on_refused(sni);
    } catch (...) {
    }
}

void notify_error(const State& st, const std::string& sni, const std::string& what) noexcept {
    if (!st.hooks.on_error) return;
    try {
        st.hooks.on_error(sni, what);
    } catch (...) {
    }
}

int on_servername(SSL* ssl, int* alert, void* arg) {
    const State& st = *static_cast<const State*>(arg);
    const char* sni = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    const std::string sent = sni ? sni : "";
    const std::string& name = sni ? sent : st.opts.default_name;
    try {
        std::shared_ptr<const Leaf> leaf = name.empty() ? nullptr : st.cache->get(name);
        if (!leaf) {
            notify_refused(st, sent);
            *alert = SSL_AD_UNRECOGNIZED_NAME;
            return SSL_TLSEXT_ERR_ALERT_FATAL;
        }
        // The SSL takes its own reference on the leaf's SSL_CTX (and through
        // it on key and certificate), so renewal cannot pull them away.
        if (SSL_set_SSL_CTX(ssl, leaf->ssl_ctx()) == nullptr) throw_openssl("cannot switch to the leaf context");
        return SSL_TLSEXT_ERR_OK;
    } catch (const std::exception& e) {
        notify_error(st, sent, e.what());
    } catch (...) {
        notify_error(st, sent, "unknown error");
    }
    *alert = SSL_AD_INTERNAL_ERROR;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

void free_state(void*, void* ptr, CRYPTO_EX_DATA*, int, long, void*) { delete static_cast<State*>(ptr); }

int state_index() {
    static const int idx = [] {
        int i = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, free_state);
        if (i < 0) throw_openssl("SSL_CTX_get_ex_new_index");
        return i;
    }();
    return idx;
}

}  // namespace

ServerContext::ServerContext(std::shared_ptr<LeafCache> cache, Hooks hooks, Options opts) : ctx_(new_server_ctx()) {
    if (!cache) throw Error("ServerContext needs a leaf cache");
    auto st = std::make_unique<State>(State{std::move(cache), std::move(hooks), std::move(opts)});
    ensure(SSL_CTX_set_ex_data(ctx_.get(), state_index(), st.get()), "SSL_CTX_set_ex_data");
    State* raw = st.release();  // now freed with the SSL_CTX
    SSL_CTX_set_tlsext_servername_callback(ctx_.get(), on_servername);
    SSL_CTX_set_tlsext_servername_arg(ctx_.get(), raw);
}

}  // namespace redir::tls
