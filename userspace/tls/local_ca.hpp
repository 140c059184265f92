#pragma once
// The node's local certificate authority: the root that sandboxes trust for
// https://inference.local. It is created once and then kept for the life of
// the node, because every sandbox bundle (redirctl ca export / redirctl run)
// pins it; replacing it silently would break every client at once.
#include <chrono>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tls/ossl.hpp"

namespace redir::tls {

inline constexpr std::string_view kInferenceName = "inference.local";

// Lower-cases NAME and checks it is a plain DNS host name (LDH labels of
// 1..63 octets, at most 253 in all, no trailing dot, no wildcard); nullopt
// when it is not.
std::optional<std::string> normalize_dns_name(std::string_view name);

// True when NAME equals one of SUBTREES or lies below it (RFC 5280 dNSName
// subtree semantics); all already normalized.
bool dns_name_permitted(std::string_view name, const std::vector<std::string>& subtrees);

class LocalCa {
public:
    // Loads STATE_DIR/ca/{ca.key,ca.crt}, or creates them when the directory
    // holds neither. The CA may sign only for inference.local and
    // PERMITTED_NAMES (and names below them): the permission is written into
    // the certificate as a critical nameConstraints extension, so a client
    // rejects anything else this key signs.
    //
    // Throws redir::Error naming the file when a file is unreadable or
    // corrupt, when only one of the two exists, when key and certificate do
    // not match, when the CA has expired, or when the existing CA does not
    // permit a requested name. Existing files are never modified.
    static LocalCa load_or_create(const std::string& state_dir, std::vector<std::string> permitted_names);

    LocalCa(LocalCa&&) noexcept = default;
    LocalCa& operator=(LocalCa&&) noexcept = default;

    X509* cert() const noexcept { return cert_.get(); }
    EVP_PKEY* key() const noexcept { return key_.get(); }
    // What `redirctl ca export` hands out.
    const std::string& cert_pem() const noexcept { return cert_pem_; }
    // The DNS subtrees the certificate permits, as read back from it.
    const std::vector<std::string>& permitted_names() const noexcept { return permitted_; }
    bool permits(std::string_view dns_name) const;
    std::chrono::system_clock::time_point not_after() const;

    const std::string& dir() const noexcept { return dir_; }
    std::string key_path() const { return dir_ + "/ca.key"; }
    std::string cert_path() const { return dir_ + "/ca.crt"; }
    // True when this call created the CA (the agent logs it: sandboxes must
    // be handed the new certificate).
    bool created() const noexcept { return created_; }

private:
    LocalCa() = default;

    std::string dir_;
    PkeyPtr key_;
    X509Ptr cert_;
    std::string cert_pem_;
    std::vector<std::string> permitted_;
    bool created_ = false;
};

}  // namespace redir::tls
