#include "tls/local_ca.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <filesystem>

#include "common/atomic_file.hpp"
#include "common/fd.hpp"

namespace redir::tls {

namespace {

using namespace std::chrono_literals;
constexpr auto kCaValidity = std::chrono::hours(24 * 3650);
// Clients whose clocks run a little behind must not see a CA "from the future".
constexpr auto kBackdate = 5min;

std::string join(const std::vector<std::string>& v) {
    std::string out;
    for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
    return out;
}

std::vector<std::string> normalize_permitted(std::vector<std::string> extra) {
    std::vector<std::string> out{std::string(kInferenceName)};
    for (const auto& raw : extra) {
        auto name = normalize_dns_name(raw);
        if (!name)
            throw Error("CA permitted name '" + raw +
                        "' is not a DNS host name (letters, digits, '-' and '.', no wildcard); fix the agent configuration");
        if (std::find(out.begin(), out.end(), *name) == out.end()) out.push_back(*name);
    }
    return out;
}

std::string ca_common_name() {
    std::array<char, 256> host{};
    std::string cn = "redir local CA";
    if (::gethostname(host.data(), host.size() - 1) == 0 && host[0] != '\0') {
        // X.520 caps commonName at 64 characters.
        cn += " " + std::string(host.data()).substr(0, 64 - cn.size() - 1);
    }
    return cn;
}

X509Ptr build_ca_cert(EVP_PKEY* key, const std::vector<std::string>& permitted) {
    X509Ptr cert(ensure_ptr(X509_new(), "X509_new"));
    ensure(X509_set_version(cert.get(), X509_VERSION_3), "X509_set_version");
    ensure(X509_set_serialNumber(cert.get(), random_serial().get()), "X509_set_serialNumber");
    auto now = std::chrono::system_clock::now();
    set_time(X509_getm_notBefore(cert.get()), now - kBackdate, "cannot set CA notBefore");
    set_time(X509_getm_notAfter(cert.get()), now + kCaValidity, "cannot set CA notAfter");

    X509NamePtr name(ensure_ptr(X509_NAME_new(), "X509_NAME_new"));
    const std::string cn = ca_common_name();
    ensure(X509_NAME_add_entry_by_txt(name.get(), "O", MBSTRING_UTF8,
                                      reinterpret_cast<const unsigned char*>("redir"), -1, -1, 0),
           "cannot set CA organization");
    ensure(X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8,
                                      reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0),
           "cannot set CA common name");
    ensure(X509_set_subject_name(cert.get(), name.get()), "X509_set_subject_name");
    ensure(X509_set_issuer_name(cert.get(), name.get()), "X509_set_issuer_name");
    ensure(X509_set_pubkey(cert.get(), key), "X509_set_pubkey");

    BasicConstraintsPtr bc(ensure_ptr(BASIC_CONSTRAINTS_new(), "BASIC_CONSTRAINTS_new"));
    bc->ca = 1;
    bc->pathlen = ensure_ptr(ASN1_INTEGER_new(), "ASN1_INTEGER_new");
    ensure(ASN1_INTEGER_set(bc->pathlen, 0), "ASN1_INTEGER_set");
    add_extension(cert.get(), NID_basic_constraints, bc.get(), true);

    add_key_usage(cert.get(), {kKuKeyCertSign, kKuCrlSign});

    NameConstraintsPtr nc(ensure_ptr(NAME_CONSTRAINTS_new(), "NAME_CONSTRAINTS_new"));
    nc->permittedSubtrees = ensure_ptr(sk_GENERAL_SUBTREE_new_null(), "sk_GENERAL_SUBTREE_new_null");
    for (const auto& n : permitted) {
        GeneralSubtreePtr sub(ensure_ptr(GENERAL_SUBTREE_new(), "GENERAL_SUBTREE_new"));
        GENERAL_NAME_free(sub->base);
        sub->base = dns_general_name(n).release();
        ensure(sk_GENERAL_SUBTREE_push(nc->permittedSubtrees, sub.get()), "sk_GENERAL_SUBTREE_push");
        sub.release();
    }
    add_extension(cert.get(), NID_name_constraints, nc.get(), true);

    Asn1OctetStringPtr ski = key_identifier(cert.get());
    add_extension(cert.get(), NID_subject_key_identifier, ski.get(), false);
    add_authority_key_id(cert.get(), ski.get());

    ensure(X509_sign(cert.get(), key, EVP_sha256()), "cannot sign the CA certificate");
    return cert;
}

// Permitted dNSName subtrees of CERT; nullopt when it has no nameConstraints.
std::optional<std::vector<std::string>> read_permitted(X509* cert) {
    int crit = 0;
    NameConstraintsPtr nc(static_cast<NAME_CONSTRAINTS*>(X509_get_ext_d2i(cert, NID_name_constraints, &crit, nullptr)));
    if (!nc || !nc->permittedSubtrees) return std::nullopt;
    std::vector<std::string> out;
    for (int i = 0; i < sk_GENERAL_SUBTREE_num(nc->permittedSubtrees); ++i) {
        const GENERAL_SUBTREE* sub = sk_GENERAL_SUBTREE_value(nc->permittedSubtrees, i);
        if (sub->base->type != GEN_DNS) continue;
        const ASN1_IA5STRING* s = sub->base->d.dNSName;
        out.emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                         static_cast<size_t>(ASN1_STRING_length(s)));
    }
    return out;
}

bool exists(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) return true;
    if (errno == ENOENT) return false;
    throw sys_error("cannot inspect " + path);
}

// Staging directories left by a crash mid-creation hold a key nobody ever
// trusted; nothing else may reuse them.
void remove_stale_staging(const std::string& state_dir) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(state_dir, ec)) {
        if (entry.path().filename().string().starts_with(".ca-new.")) std::filesystem::remove_all(entry.path(), ec);
    }
}

}  // namespace

std::optional<std::string> normalize_dns_name(std::string_view name) {
    if (name.empty() || name.size() > 253) return std::nullopt;
    std::string out(name);
    size_t label_len = 0;
    for (size_t i = 0; i < out.size(); ++i) {
        char c = out[i];
        if (c >= 'A' && c <= 'Z') c = out[i] = static_cast<char>(c - 'A' + 'a');
        if (c == '.') {
            if (label_len == 0 || out[i - 1] == '-') return std::nullopt;
            label_len = 0;
            continue;
        }
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (c == '-' && label_len > 0);
        if (!ok || ++label_len > 63) return std::nullopt;
    }
    if (label_len == 0 || out.back() == '-') return std::nullopt;
    return out;
}

bool dns_name_permitted(std::string_view name, const std::vector<std::string>& subtrees) {
    return std::any_of(subtrees.begin(), subtrees.end(), [&](std::string_view c) {
        return name == c ||
               (name.size() > c.size() && name.ends_with(c) && name[name.size() - c.size() - 1] == '.');
    });
}

bool LocalCa::permits(std::string_view dns_name) const {
    auto n = normalize_dns_name(dns_name);
    return n && dns_name_permitted(*n, permitted_);
}

std::chrono::system_clock::time_point LocalCa::not_after() const {
    return to_time_point(X509_get0_notAfter(cert_.get()));
}

LocalCa LocalCa::load_or_create(const std::string& state_dir, std::vector<std::string> permitted_names) {
    const std::vector<std::string> wanted = normalize_permitted(std::move(permitted_names));
    LocalCa ca;
    ca.dir_ = state_dir + "/ca";
    const std::string key_path = ca.key_path();
    const std::string cert_path = ca.cert_path();

    bool have_key = exists(key_path);
    bool have_cert = exists(cert_path);
    if (!have_key && !have_cert) {
        make_dirs(state_dir, 0700);
        remove_stale_staging(state_dir);
        std::string staging = state_dir + "/.ca-new.XXXXXX";
        if (::mkdtemp(staging.data()) == nullptr) throw sys_error("cannot create a directory in " + state_dir);
        try {
            // The certificate is public (redirctl ca export); only ca.key is secret.
            if (::chmod(staging.c_str(), 0755) != 0) throw sys_error("cannot set mode on " + staging);
            PkeyPtr key = generate_p256_key();
            X509Ptr cert = build_ca_cert(key.get(), wanted);
            write_file_atomic(staging + "/ca.key", private_key_to_pem(key.get()), 0600);
            write_file_atomic(staging + "/ca.crt", to_pem(cert.get()), 0644);
            // One rename publishes key and certificate together, so a crash
            // can never leave a key without its certificate or the reverse.
            // rename(2) replaces an empty ca/ but never a populated one.
            if (::rename(staging.c_str(), ca.dir_.c_str()) == 0) {
                fsync_dir(state_dir);
                ca.key_ = std::move(key);
                ca.cert_ = std::move(cert);
                ca.cert_pem_ = to_pem(ca.cert_.get());
                ca.permitted_ = wanted;
                ca.created_ = true;
                return ca;
            }
            if (errno != ENOTEMPTY && errno != EEXIST) throw sys_error("cannot rename " + staging + " to " + ca.dir_);
            std::filesystem::remove_all(staging);
        } catch (...) {
            std::error_code ec;
            std::filesystem::remove_all(staging, ec);
            throw;
        }
        // Another agent on this state directory won the race, or ca/ holds
        // something else: fall through and judge what is there.
        have_key = exists(key_path);
        have_cert = exists(cert_path);
        if (!have_key && !have_cert)
            throw Error("cannot create the CA in " + ca.dir_ +
                        ": the directory exists and holds neither ca.key nor ca.crt; move it aside and restart");
    }
    if (!have_key || !have_cert) {
        const std::string& missing = have_key ? cert_path : key_path;
        const std::string& present = have_key ? key_path : cert_path;
        throw Error("CA file " + missing + " is missing while " + present +
                    " exists; restore it from backup, or move " + ca.dir_ +
                    " aside to create a new CA (sandboxes must then be given the new certificate)");
    }

    struct stat st {};
    if (::stat(key_path.c_str(), &st) != 0) throw sys_error("cannot inspect " + key_path);
    if ((st.st_mode & 077) != 0)
        throw Error("CA key " + key_path + " is accessible by group or others; run chmod 600 " + key_path);

    ca.key_ = private_key_from_pem(read_file(key_path), "CA key file " + key_path);
    const std::string cert_pem = read_file(cert_path);
    ca.cert_ = cert_from_pem(cert_pem, "CA certificate file " + cert_path);
    if (X509_check_private_key(ca.cert_.get(), ca.key_.get()) != 1) {
        take_errors();
        throw Error("CA key " + key_path + " does not belong to certificate " + cert_path +
                    "; restore the matching pair, or move " + ca.dir_ + " aside to create a new CA");
    }
    if (X509_check_ca(ca.cert_.get()) == 0 || X509_verify(ca.cert_.get(), ca.key_.get()) != 1) {
        take_errors();
        throw Error("CA certificate " + cert_path + " is not a self-signed CA certificate");
    }
    if (ca.not_after() <= std::chrono::system_clock::now())
        throw Error("CA certificate " + cert_path + " has expired; move " + ca.dir_ +
                    " aside to create a new CA and give sandboxes the new certificate");
    auto permitted = read_permitted(ca.cert_.get());
    if (!permitted)
        throw Error("CA certificate " + cert_path + " has no DNS name constraints; redir only uses a CA it created");
    ca.permitted_ = std::move(*permitted);
    for (const auto& name : wanted) {
        if (!ca.permits(name))
            throw Error("CA certificate " + cert_path + " may sign only for " + join(ca.permitted_) + ", not " + name +
                        "; to change the CA's names move " + ca.dir_ +
                        " aside and restart, then give sandboxes the new certificate");
    }
    ca.cert_pem_ = to_pem(ca.cert_.get());
    return ca;
}

}  // namespace redir::tls
