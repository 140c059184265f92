#include "tls/leaf_cache.hpp"

#include <algorithm>
#include <cstring>

namespace redir::tls {

namespace {

constexpr unsigned char kSessionIdContext[] = "redir.tls";
// X.520 caps commonName at 64 characters; longer names live in the SAN only.
constexpr size_t kMaxCommonName = 64;

// The terminator speaks HTTP/1.1 only. RFC 7301: a server that supports none
// of the offered protocols answers no_application_protocol.
int select_http11(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
                  void*) {
    static constexpr std::string_view kProto = "http/1.1";
    for (unsigned int i = 0; i < inlen;) {
        unsigned int len = in[i];
        if (i + 1 + len > inlen) break;
        if (len == kProto.size() && std::memcmp(in + i + 1, kProto.data(), len) == 0) {
            *out = in + i + 1;
            *outlen = static_cast<unsigned char>(len);
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + len;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

}  // namespace

SslCtxPtr new_server_ctx() {
    SslCtxPtr ctx(ensure_ptr(SSL_CTX_new(TLS_server_method()), "cannot create a TLS server context"));
    SSL_CTX* c = ctx.get();
    ensure(SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION), "cannot set minimum TLS version");
    ensure(SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION), "cannot set maximum TLS version");
    // Leaves carry ECDSA keys, so only ECDSA suites can ever be chosen for 1.2;
    // naming them keeps CBC and non-forward-secret suites out.
    ensure(SSL_CTX_set_cipher_list(
               c, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384"),
           "cannot set TLS 1.2 cipher suites");
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_clear_options(c, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_SERVER);
    ensure(SSL_CTX_set_session_id_context(c, kSessionIdContext, sizeof(kSessionIdContext) - 1),
           "cannot set session id context");
    SSL_CTX_set_alpn_select_cb(c, select_http11, nullptr);
    return ctx;
}

Leaf::Leaf(std::string name, PkeyPtr key, X509Ptr cert, X509Ptr issuer)
    : name_(std::move(name)), key_(std::move(key)), cert_(std::move(cert)), ctx_(new_server_ctx()) {
    chain_.push_back(std::move(issuer));
    ensure(SSL_CTX_use_certificate(ctx_.get(), cert_.get()), "cannot install the leaf certificate for " + name_);
    ensure(SSL_CTX_use_PrivateKey(ctx_.get(), key_.get()), "cannot install the leaf key for " + name_);
    ensure(SSL_CTX_check_private_key(ctx_.get()), "leaf key and certificate for " + name_ + " do not match");
    not_before_ = to_time_point(X509_get0_notBefore(cert_.get()));
    not_after_ = to_time_point(X509_get0_notAfter(cert_.get()));
}

std::string Leaf::cert_pem() const { return to_pem(cert_.get()); }

LeafIssuer::LeafIssuer(const LocalCa& ca, Options opts)
    : ca_key_(up_ref(ca.key())), ca_cert_(up_ref(ca.cert())), opts_(opts) {
    if (const ASN1_OCTET_STRING* ski = X509_get0_subject_key_id(ca_cert_.get()))
        ca_key_id_.reset(ensure_ptr(ASN1_OCTET_STRING_dup(ski), "ASN1_OCTET_STRING_dup"));
    else
        ca_key_id_ = key_identifier(ca_cert_.get());
}

LeafIssuer::Issued LeafIssuer::issue_cert(std::string_view name, std::chrono::system_clock::time_point now) const {
    const std::string what = "cannot issue a certificate for " + std::string(name);
    Issued out{generate_p256_key(), X509Ptr(ensure_ptr(X509_new(), "X509_new"))};
    X509* cert = out.cert.get();
    ensure(X509_set_version(cert, X509_VERSION_3), what);
    ensure(X509_set_serialNumber(cert, random_serial().get()), what);
    ensure(X509_set_issuer_name(cert, X509_get_subject_name(ca_cert_.get())), what);
    set_time(X509_getm_notBefore(cert), now - opts_.backdate, what);
    set_time(X509_getm_notAfter(cert), now + opts_.validity, what);
    const bool with_cn = name.size() <= kMaxCommonName;
    if (with_cn) {
        ensure(X509_NAME_add_entry_by_NID(X509_get_subject_name(cert), NID_commonName, MBSTRING_UTF8,
                                          reinterpret_cast<const unsigned char*>(name.data()),
                                          static_cast<int>(name.size()), -1, 0),
               what);
    }
    ensure(X509_set_pubkey(cert, out.key.get()), what);

    BasicConstraintsPtr bc(ensure_ptr(BASIC_CONSTRAINTS_new(), "BASIC_CONSTRAINTS_new"));
    add_extension(cert, NID_basic_constraints, bc.get(), true);
    add_key_usage(cert, {kKuDigitalSignature});

    Asn1ObjectStackPtr eku(ensure_ptr(sk_ASN1_OBJECT_new_null(), "sk_ASN1_OBJECT_new_null"));
    ensure(sk_ASN1_OBJECT_push(eku.get(), OBJ_nid2obj(NID_server_auth)), what);
    add_extension(cert, NID_ext_key_usage, eku.get(), false);

    GeneralNamesPtr san(ensure_ptr(GENERAL_NAMES_new(), "GENERAL_NAMES_new"));
    GeneralNamePtr dns = dns_general_name(name);
    ensure(sk_GENERAL_NAME_push(san.get(), dns.get()), what);
    dns.release();
    // RFC 5280 4.2.1.6: with an empty subject the SAN must be critical.
    add_extension(cert, NID_subject_alt_name, san.get(), !with_cn);

    add_authority_key_id(cert, ca_key_id_.get());
    ensure(X509_sign(cert, ca_key_.get(), EVP_sha256()), what);
    return out;
}

std::shared_ptr<const Leaf> LeafIssuer::issue(std::string_view name, std::chrono::system_clock::time_point now) const {
    Issued i = issue_cert(name, now);
    return std::make_shared<const Leaf>(std::string(name), std::move(i.key), std::move(i.cert), up_ref(ca_cert_.get()));
}

LeafCache::LeafCache(const LocalCa& ca, std::vector<std::string> served_names, Options opts)
    : ca_permitted_(ca.permitted_names()),
      issuer_(ca, LeafIssuer::Options{.validity = opts.validity}),
      opts_(std::move(opts)) {
    if (opts_.validity <= std::chrono::seconds(0) || opts_.renew_before >= opts_.validity)
        throw Error("leaf renewal window must be shorter than the leaf validity");
    for (auto& n : checked_names(std::move(served_names))) entries_.emplace(std::move(n), Entry{});
}

std::vector<std::string> LeafCache::checked_names(std::vector<std::string> names) const {
    names.emplace_back(kInferenceName);
    std::vector<std::string> out;
    for (const auto& raw : names) {
        auto n = normalize_dns_name(raw);
        if (!n) throw Error("served name '" + raw + "' is not a DNS host name; fix the agent configuration");
        if (!dns_name_permitted(*n, ca_permitted_))
            throw Error("served name '" + raw +
                        "' is outside the local CA's name constraints, so clients would reject its certificate; "
                        "add it to the CA's permitted names (this creates a new CA) or stop serving it");
        if (std::find(out.begin(), out.end(), *n) == out.end()) out.push_back(std::move(*n));
    }
    return out;
}

std::chrono::system_clock::time_point LeafCache::now() const {
    return opts_.clock ? opts_.clock() : std::chrono::system_clock::now();
}

std::shared_ptr<const Leaf> LeafCache::get(std::string_view raw_name) {
    auto name = normalize_dns_name(raw_name);
    if (!name) return nullptr;

    std::promise<std::shared_ptr<const Leaf>> promise;
    std::shared_future<std::shared_ptr<const Leaf>> wait_on;
    std::chrono::system_clock::time_point t;
    {
        std::lock_guard lk(mu_);
        auto it = entries_.find(*name);
        if (it == entries_.end()) return nullptr;
        Entry& e = it->second;
        t = now();
        if (e.leaf && t < e.leaf->not_after() - opts_.renew_before) return e.leaf;
        if (e.inflight.valid()) {
            if (e.leaf && t < e.leaf->not_after()) return e.leaf;
            wait_on = e.inflight;
        } else {
            e.inflight = promise.get_future().share();
        }
    }
    if (wait_on.valid()) return wait_on.get();

    std::shared_ptr<const Leaf> leaf;
    try {
        leaf = issuer_.issue(*name, t);
    } catch (...) {
        {
            std::lock_guard lk(mu_);
            if (auto it = entries_.find(*name); it != entries_.end()) it->second.inflight = {};
        }
        promise.set_exception(std::current_exception());
        throw;
    }
    issued_.fetch_add(1, std::memory_order_relaxed);
    {
        std::lock_guard lk(mu_);
        if (auto it = entries_.find(*name); it != entries_.end()) {
            it->second.leaf = leaf;
            it->second.inflight = {};
        }
    }
    promise.set_value(leaf);
    return leaf;
}

bool LeafCache::is_served(std::string_view raw_name) const {
    auto name = normalize_dns_name(raw_name);
    if (!name) return false;
    std::lock_guard lk(mu_);
    return entries_.contains(*name);
}

std::vector<std::string> LeafCache::served_names() const {
    std::lock_guard lk(mu_);
    std::vector<std::string> out;
    for (const auto& [name, _] : entries_) out.push_back(name);
    std::sort(out.begin(), out.end());
    return out;
}

void LeafCache::set_served_names(std::vector<std::string> names) {
    std::vector<std::string> checked = checked_names(std::move(names));
    std::lock_guard lk(mu_);
    std::erase_if(entries_, [&](const auto& kv) {
        return std::find(checked.begin(), checked.end(), kv.first) == checked.end();
    });
    for (auto& n : checked) entries_.try_emplace(std::move(n));
}

std::uint64_t LeafCache::issued_count() const noexcept { return issued_.load(std::memory_order_relaxed); }

}  // namespace redir::tls
