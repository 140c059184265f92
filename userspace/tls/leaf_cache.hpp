#pragma once
// Server certificates for the names the terminator serves, issued on demand
// by the local CA and kept in memory only: a leaf lives a week, so there is
// nothing worth persisting and no second private key on disk to protect.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tls/local_ca.hpp"
#include "tls/ossl.hpp"

namespace redir::tls {

// A server SSL_CTX configured the way every terminator context is: TLS 1.2
// and 1.3 only, AEAD ECDHE-ECDSA suites for 1.2, ALPN "http/1.1" (a client
// offering ALPN without it gets no_application_protocol), server-side session
// cache and session tickets, and one session id context. The listener's
// default context and every leaf context share these settings so that
// SSL_set_SSL_CTX from the SNI callback changes nothing but the certificate.
SslCtxPtr new_server_ctx();

// One issued server certificate, its key, and a ready SSL_CTX presenting it.
// Immutable once built; share it freely across threads.
class Leaf {
public:
    Leaf(std::string name, PkeyPtr key, X509Ptr cert, X509Ptr issuer);

    const std::string& name() const noexcept { return name_; }
    EVP_PKEY* key() const noexcept { return key_.get(); }
    X509* cert() const noexcept { return cert_.get(); }
    // Certificates above the leaf, up to and including the local CA. The
    // handshake sends the leaf alone: every client that can verify it
    // already holds the CA as a trust anchor.
    const std::vector<X509Ptr>& chain() const noexcept { return chain_; }
    // For SSL_new or SSL_set_SSL_CTX; the SSL takes its own reference, so a
    // connection outlives this Leaf safely.
    SSL_CTX* ssl_ctx() const noexcept { return ctx_.get(); }
    std::chrono::system_clock::time_point not_before() const noexcept { return not_before_; }
    std::chrono::system_clock::time_point not_after() const noexcept { return not_after_; }
    std::string cert_pem() const;

private:
    std::string name_;
    PkeyPtr key_;
    X509Ptr cert_;
    std::vector<X509Ptr> chain_;
    SslCtxPtr ctx_;
    std::chrono::system_clock::time_point not_before_;
    std::chrono::system_clock::time_point not_after_;
};

// Signs leaves with the CA. It does not judge names: the CA's name
// constraints and LeafCache's served set do (tests rely on issuing a name the
// CA does not permit to show the constraint is enforced by clients).
class LeafIssuer {
public:
    struct Options {
        std::chrono::seconds validity = std::chrono::hours(24 * 7);
        // Clients whose clocks run behind must not see a leaf "from the future".
        std::chrono::seconds backdate = std::chrono::minutes(5);
    };

    explicit LeafIssuer(const LocalCa& ca) : LeafIssuer(ca, Options{}) {}
    LeafIssuer(const LocalCa& ca, Options opts);

    // Fresh ECDSA P-256 key and certificate for NAME (already normalized):
    // CN and SAN dNSName = NAME, EKU serverAuth, keyUsage digitalSignature
    // (critical), AKI = the CA's key id, random serial,
    // validity [now - backdate, now + validity].
    struct Issued {
        PkeyPtr key;
        X509Ptr cert;
    };
    Issued issue_cert(std::string_view name, std::chrono::system_clock::time_point now) const;

    // issue_cert plus the ready SSL_CTX.
    std::shared_ptr<const Leaf> issue(std::string_view name, std::chrono::system_clock::time_point now) const;

private:
    PkeyPtr ca_key_;
    X509Ptr ca_cert_;
    Asn1OctetStringPtr ca_key_id_;
    Options opts_;
};

// Leaves by name, for the set of names the terminator serves.
// Thread-safe. Each name is issued at most once at a time: concurrent callers
// for a name without a usable leaf wait for the one issuance in flight.
class LeafCache {
public:
    struct Options {
        std::chrono::seconds validity = std::chrono::hours(24 * 7);
        // Re-issue when the cached leaf expires within this long. While the
        // re-issue runs, other callers keep getting the still-valid leaf.
        std::chrono::seconds renew_before = std::chrono::hours(24);
        // Time source; empty means the system clock. Tests move it forward.
        std::function<std::chrono::system_clock::time_point()> clock;
    };

    // SERVED_NAMES: names handshakes may ask for; inference.local is always
    // served. Throws redir::Error when a name is not a DNS host name or lies
    // outside the CA's name constraints (clients would reject its leaf), or
    // when renew_before is not shorter than validity.
    LeafCache(const LocalCa& ca, std::vector<std::string> served_names) : LeafCache(ca, std::move(served_names), Options{}) {}
    LeafCache(const LocalCa& ca, std::vector<std::string> served_names, Options opts);

    // The leaf for NAME (case-insensitive), issuing or renewing it as needed.
    // nullptr when NAME is not served: the caller refuses the handshake.
    // Throws redir::Error when issuance fails.
    std::shared_ptr<const Leaf> get(std::string_view name);

    bool is_served(std::string_view name) const;
    std::vector<std::string> served_names() const;
    // Replaces the served set (same checks as the constructor); leaves of
    // names no longer served are dropped.
    void set_served_names(std::vector<std::string> names);

    // Leaves issued so far (metrics, and the single-flight test).
    std::uint64_t issued_count() const noexcept;

private:
    struct Entry {
        std::shared_ptr<const Leaf> leaf;
        std::shared_future<std::shared_ptr<const Leaf>> inflight;
    };

    std::vector<std::string> checked_names(std::vector<std::string> names) const;
    std::chrono::system_clock::time_point now() const;

    std::vector<std::string> ca_permitted_;
    LeafIssuer issuer_;
    Options opts_;
    mutable std::mutex mu_;
    std::unordered_map<std::string, Entry> entries_;  // one per served name
    std::atomic<std::uint64_t> issued_{0};
};

}  // namespace redir::tls
