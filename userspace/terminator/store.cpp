#include "terminator/store.hpp"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "common/atomic_file.hpp"
#include "common/error.hpp"
#include "common/json_state.hpp"
#include "terminator/request.hpp"
#include "terminator/profiles.hpp"

namespace redir::terminator {

namespace {

// Copies out of the store's maps, so no reference outlives the lock.
template <class M>
std::optional<typename M::mapped_type> copy_of(const M& m, const std::string& key) {
    auto it = m.find(key);
    if (it == m.end()) return std::nullopt;
    return it->second;
}
template <class M>
std::vector<typename M::mapped_type> values_of(const M& m) {
    std::vector<typename M::mapped_type> out;
    for (const auto& [k, v] : m) out.push_back(v);
    return out;
}
// Saves NEXT, and only once it is on disk makes it LIVE: a failed write changes nothing.
template <class M, class Save>
void save_then_swap(M& live, M next, const Save& save) {
    save(next);
    live = std::move(next);
}
// LIVE without KEY, the same way.
template <class M, class Save>
void erase_saved(M& live, const std::string& key, const Save& save) {
    M next = live;
    next.erase(key);
    save_then_swap(live, std::move(next), save);
}

bool valid_name(const std::string& n) {
    if (n.empty() || n.size() > 63 || !std::isalnum(static_cast<unsigned char>(n[0]))) return false;
    return std::all_of(n.begin(), n.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
    });
}

bool valid_credential_key(const std::string& k) {
    if (k.empty() || std::isdigit(static_cast<unsigned char>(k[0]))) return false;
    return std::all_of(k.begin(), k.end(),
                       [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

// A value ends up in a header line: anything that could end or fold the line
// would let a stored credential inject headers.
bool valid_credential_value(const std::string& v) {
    if (v.empty()) return false;
    return std::all_of(v.begin(), v.end(), [](char c) {
        auto u = static_cast<unsigned char>(c);
        return u >= 0x21 && u != 0x7f;
    });
}

std::string str_member(const rapidjson::Value& o, const char* key, const std::string& path) {
    auto it = o.FindMember(key);
    if (it == o.MemberEnd()) return {};
    if (!it->value.IsString()) throw Error(path + ": field \"" + key + "\" must be a string");
    return std::string(it->value.GetString(), it->value.GetStringLength());
}

rapidjson::Document parse_file(const std::string& path) {
    std::string text = read_file(path);
    rapidjson::Document d;
    d.Parse(text.data(), text.size());
    if (d.HasParseError())
        throw Error(path + ": invalid JSON at offset " + std::to_string(d.GetErrorOffset()) + ": " +
                    rapidjson::GetParseError_En(d.GetParseError()));
    if (!d.IsObject()) throw Error(path + ": expected a JSON object");
    return d;
}

}  // namespace

std::string mask_secret(const std::string& v) {
    if (v.size() >= 16) return "****" + v.substr(v.size() - 4);
    return "****";
}

Provider Provider::masked() const {
    Provider p = *this;
    for (auto& [k, v] : p.credentials) v = mask_secret(v);
    return p;
}

std::optional<BaseUrl> parse_base_url(const std::string& url, std::string* err) {
    auto fail = [&](const std::string& why) -> std::optional<BaseUrl> {
        if (err) *err = "base URL \"" + url + "\" " + why;
        return std::nullopt;
    };
    constexpr std::string_view scheme = "https://";
    if (url.size() < scheme.size() ||
        !std::equal(scheme.begin(), scheme.end(), url.begin(),
                    [](char a, char b) { return a == std::tolower(static_cast<unsigned char>(b)); }))
        return fail("must start with https:// (the provider is reached over verified TLS only)");
    std::string rest = url.substr(scheme.size());
    if (rest.find_first_of("?#@ \t\r\n") != std::string::npos)
        return fail("must not contain a query, fragment, user info or whitespace");
    auto slash = rest.find('/');
    std::string authority = rest.substr(0, slash);
    std::string path = slash == std::string::npos ? "" : rest.substr(slash);
    while (!path.empty() && path.back() == '/') path.pop_back();
    BaseUrl b;
    std::string port_str;
    if (!authority.empty() && authority[0] == '[') {
        auto close = authority.find(']');
        if (close == std::string::npos) return fail("has an unterminated [IPv6] address");
        b.host = authority.substr(1, close - 1);
        b.ip_literal = true;
        std::string after = authority.substr(close + 1);
        if (!after.empty()) {
            if (after[0] != ':') return fail("has garbage after the [IPv6] address");
            port_str = after.substr(1);
        }
    } else {
        auto colon = authority.rfind(':');
        b.host = authority.substr(0, colon);
        if (colon != std::string::npos) port_str = authority.substr(colon + 1);
        bool all_ip = !b.host.empty() && std::all_of(b.host.begin(), b.host.end(), [](char c) {
            return std::isdigit(static_cast<unsigned char>(c)) || c == '.';
        });
        b.ip_literal = all_ip;
    }
    if (b.host.empty()) return fail("has no host");
    for (char& c : b.host) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (!b.ip_literal && !std::all_of(b.host.begin(), b.host.end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
        }))
        return fail("has an invalid host name");
    if (!port_str.empty()) {
        if (port_str.size() > 5 || !std::all_of(port_str.begin(), port_str.end(),
                                                [](char c) { return std::isdigit(static_cast<unsigned char>(c)); }))
            return fail("has an invalid port");
        unsigned long p = std::stoul(port_str);
        if (p == 0 || p > 65535) return fail("has a port out of range");
        b.port = static_cast<uint16_t>(p);
    }
    b.path = path;
    std::string h = b.host.find(':') != std::string::npos ? "[" + b.host + "]" : b.host;
    b.host_header = b.port == 443 ? h : h + ":" + std::to_string(b.port);
    return b;
}

void derive_upstream(Snapshot& snap) {
    snap.base.reset();
    snap.base_error.clear();
    snap.provider_headers.clear();
    if (!snap.provider) return;
    snap.base = parse_base_url(snap.provider->base_url, &snap.base_error);
    if (const Profile* profile = find_profile(snap.provider->type))
        snap.provider_headers = provider_headers(*profile, *snap.provider);
}

Store::Store(std::string state_dir) : dir_(std::move(state_dir)) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (fs::exists(providers_path(), ec)) {
        auto d = parse_file(providers_path());
        auto it = d.FindMember("providers");
        if (it != d.MemberEnd()) {
            if (!it->value.IsArray()) throw Error(providers_path() + ": \"providers\" must be an array");
            for (const auto& v : it->value.GetArray()) {
                if (!v.IsObject()) throw Error(providers_path() + ": each provider must be an object");
                Provider p;
                p.name = str_member(v, "name", providers_path());
                p.type = str_member(v, "type", providers_path());
                p.base_url = str_member(v, "base_url", providers_path());
                p.ca_file = str_member(v, "ca_file", providers_path());
                auto c = v.FindMember("credentials");
                if (c != v.MemberEnd()) {
                    if (!c->value.IsObject())
                        throw Error(providers_path() + ": credentials of " + p.name + " must be an object");
                    for (const auto& kv : c->value.GetObject()) {
                        if (!kv.value.IsString())
                            throw Error(providers_path() + ": credential values of " + p.name + " must be strings");
                        p.credentials[kv.name.GetString()] = kv.value.GetString();
                    }
                }
                providers_[p.name] = std::move(p);
            }
        }
    }
    if (fs::exists(inference_path(), ec)) {
        auto d = parse_file(inference_path());
        auto v = d.FindMember("version");
        if (v != d.MemberEnd() && v->value.IsUint64()) version_ = v->value.GetUint64();
        auto read = [&](const rapidjson::Value& o, const std::string& route) {
            InferenceConfig c;
            c.route = route;
            c.provider = str_member(o, "provider", inference_path());
            c.model = str_member(o, "model", inference_path());
            auto rv = o.FindMember("version");
            c.version = rv != o.MemberEnd() && rv->value.IsUint64() ? rv->value.GetUint64() : version_;
            if (!c.provider.empty()) routes_[route] = c;
        };
        auto r = d.FindMember("routes");
        if (r == d.MemberEnd()) {
            read(d, kDefaultRoute);  // a file from before routes: its one configuration is the default route
        } else {
            if (!r->value.IsObject()) throw Error(inference_path() + ": \"routes\" must be an object");
            for (const auto& m : r->value.GetObject()) {
                if (!m.value.IsObject()) throw Error(inference_path() + ": each route must be an object");
                read(m.value, m.name.GetString());
            }
        }
    }
    std::lock_guard lk(mu_);
    publish_locked();
}

std::string Store::providers_path() const { return dir_ + "/providers.json"; }
std::string Store::inference_path() const { return dir_ + "/inference.json"; }

void Store::validate(const Provider& p) const {
    if (!valid_name(p.name))
        throw Error("invalid provider name \"" + p.name +
                    "\": use 1-63 letters, digits, '.', '-' or '_', starting with a letter or digit");
    const Profile* prof = find_profile(p.type);
    if (!prof)
        throw Error("unknown provider type \"" + p.type + "\" for provider " + p.name + ": use one of " +
                    profile_type_list());
    if (!prof->local) {
        if (p.base_url.empty())
            throw Error("provider " + p.name + " (type " + p.type + ") needs --base-url");
        std::string err;
        if (!parse_base_url(p.base_url, &err)) throw Error("provider " + p.name + ": " + err);
    }
    if (!p.ca_file.empty()) {
        if (p.ca_file[0] != '/')
            throw Error("provider " + p.name + ": CA file \"" + p.ca_file + "\" must be an absolute path");
        if (::access(p.ca_file.c_str(), R_OK) != 0)
            throw sys_error("provider " + p.name + ": cannot read CA file " + p.ca_file);
    }
    for (const auto& [k, v] : p.credentials) {
        if (!valid_credential_key(k))
            throw Error("provider " + p.name + ": invalid credential key \"" + k +
                        "\": use letters, digits and '_' (KEY=VALUE)");
        if (!valid_credential_value(v))
            throw Error("provider " + p.name + ": credential " + k +
                        " is empty or contains whitespace or control characters");
    }
    if (prof->credential_required && p.credentials.empty()) {
        std::string key = prof->credential_keys.empty() ? "API_KEY" : std::string(prof->credential_keys[0]);
        throw Error("provider " + p.name + " (type " + p.type + ") needs a credential: --credential " + key +
                    "=VALUE or --from-existing");
    }
    if (p.credentials.size() > 1) {
        bool known = std::any_of(prof->credential_keys.begin(), prof->credential_keys.end(),
                                 [&](std::string_view k) { return p.credentials.count(std::string(k)) > 0; });
        if (!known && prof->auth != AuthStyle::None) {
            std::string key = prof->credential_keys.empty() ? "API_KEY" : std::string(prof->credential_keys[0]);
            throw Error("provider " + p.name + " has several credentials and none is named " + key +
                        ": say which one to send by naming it " + key);
        }
    }
}

void Store::create_provider(Provider p) {
    const Profile* prof = find_profile(p.type);
    if (prof && p.base_url.empty()) p.base_url = std::string(prof->default_base_url);
    while (!p.base_url.empty() && p.base_url.back() == '/') p.base_url.pop_back();
    validate(p);
    std::lock_guard lk(mu_);
    if (providers_.count(p.name))
        throw Error("provider " + p.name + " already exists: use `redirctl provider update " + p.name + "`");
    auto next = providers_;
    next[p.name] = std::move(p);
    save_then_swap(providers_, std::move(next), [this](const auto& m) { save_providers(m); });
    publish_locked();
}

std::optional<Provider> Store::get_provider(const std::string& name) const {
    std::lock_guard lk(mu_);
    return copy_of(providers_, name);
}

std::vector<Provider> Store::list_providers() const {
    std::lock_guard lk(mu_);
    return values_of(providers_);
}

void Store::update_provider(const std::string& name, const ProviderUpdate& u) {
    std::lock_guard lk(mu_);
    auto it = providers_.find(name);
    if (it == providers_.end()) throw Error("no provider named " + name + ": see `redirctl provider list`");
    Provider p = it->second;
    if (u.base_url) {
        p.base_url = *u.base_url;
        if (p.base_url.empty()) p.base_url = std::string(find_profile(p.type)->default_base_url);
        while (!p.base_url.empty() && p.base_url.back() == '/') p.base_url.pop_back();
    }
    if (u.ca_file) p.ca_file = *u.ca_file;
    for (const auto& k : u.remove_credentials) {
        if (!p.credentials.erase(k)) throw Error("provider " + name + " has no credential named " + k);
    }
    for (const auto& [k, v] : u.credentials) p.credentials[k] = v;
    validate(p);
    auto next = providers_;
    next[name] = std::move(p);
    // Credentials or URL of a provider in use changed: that is a change of
    // what those routes do, so clients and logs can tell.
    auto routes = routes_;
    bool referenced = false;
    for (auto& [r, c] : routes)
        if (c.provider == name) c.version = version_ + 1, referenced = true;
    save_providers(next);
    if (referenced) {
        save_routes(routes);
        version_ += 1;
        routes_ = std::move(routes);
    }
    providers_ = std::move(next);
    publish_locked();
}

void Store::delete_provider(const std::string& name) {
    std::lock_guard lk(mu_);
    if (!providers_.count(name)) throw Error("no provider named " + name + ": see `redirctl provider list`");
    std::string users;
    for (const auto& [r, c] : routes_)
        if (c.provider == name) users += (users.empty() ? "" : ", ") + r + " (model " + c.model + ")";
    if (!users.empty())
        throw Error("provider " + name + " is in use by inference route(s) " + users +
                    ": point them elsewhere with `redirctl inference update --route R --provider P` first");
    erase_saved(providers_, name, [this](const auto& m) { save_providers(m); });
    publish_locked();
}

InferenceConfig Store::set_inference(const std::string& provider, const std::string& model, const std::string& route) {
    return update_inference(provider, model, route);
}

InferenceConfig Store::update_inference(const std::optional<std::string>& provider,
                                        const std::optional<std::string>& model, const std::string& route) {
    if (!valid_name(route))
        throw Error("invalid route name \"" + route +
                    "\": use 1-63 letters, digits, '.', '-' or '_', starting with a letter or digit");
    std::lock_guard lk(mu_);
    auto found = routes_.find(route);
    InferenceConfig c = found == routes_.end() ? InferenceConfig{} : found->second;
    c.route = route;
    if (provider) c.provider = *provider;
    if (model) c.model = *model;
    if (c.provider.empty())
        throw Error("inference needs a provider: `redirctl inference set --provider NAME --model MODEL`");
    if (!providers_.count(c.provider))
        throw Error("no provider named " + c.provider + ": create it with `redirctl provider create` first");
    if (c.model.empty() || c.model.size() > 256 ||
        std::any_of(c.model.begin(), c.model.end(), [](char ch) { return static_cast<unsigned char>(ch) < 0x20; }))
        throw Error("inference needs a model name (1-256 printable characters): --model MODEL");
    c.version = version_ + 1;
    auto routes = routes_;
    routes[route] = c;
    save_then_swap(routes_, std::move(routes), [this](const auto& m) { save_routes(m); });
    version_ = c.version;
    publish_locked();
    return c;
}

std::optional<InferenceConfig> Store::inference(const std::string& route) const {
    std::lock_guard lk(mu_);
    return copy_of(routes_, route);
}

std::vector<InferenceConfig> Store::routes() const {
    std::lock_guard lk(mu_);
    return values_of(routes_);
}

void Store::delete_route(const std::string& route, const std::vector<std::string>& users) {
    std::lock_guard lk(mu_);
    if (!routes_.count(route)) throw Error("no inference route named " + route + ": see `redirctl inference list`");
    if (!users.empty()) {
        std::string who;
        for (const auto& u : users) who += (who.empty() ? "" : ", ") + u;
        throw Error("inference route " + route + " is in use by " + who +
                    ": load those policies with another \"inference\": {\"route\": ...} first");
    }
    erase_saved(routes_, route, [this](const auto& m) { save_routes(m); });
    publish_locked();
}

std::shared_ptr<const Snapshot> Store::snapshot(const std::string& route) const {
    std::lock_guard lk(mu_);
    auto it = snapshots_.find(route);
    if (it != snapshots_.end()) return it->second;
    auto none = std::make_shared<Snapshot>();  // nothing to serve: the 503 names the route
    none->route = route;
    return none;
}

void Store::publish_locked() {
    std::map<std::string, std::shared_ptr<const Snapshot>> snaps;
    for (const auto& [r, c] : routes_) {
        auto s = std::make_shared<Snapshot>();
        s->route = r;
        s->inference = c;
        auto it = providers_.find(c.provider);
        if (it != providers_.end()) s->provider = it->second;
        derive_upstream(*s);
        snaps[r] = std::move(s);
    }
    snapshots_ = std::move(snaps);
    // After the swap, under the lock: whoever reads the new generation and
    // then asks snapshot() gets the new snapshots.
    generation_.fetch_add(1, std::memory_order_release);
}

void Store::save_providers(const std::map<std::string, Provider>& ps) const {
    write_json_state(providers_path(), [&](PrettyJsonOut& j) {
        j.begin().num("version", 1).begin_array("providers");
        for (const auto& [n, p] : ps) {
            j.begin()
                .str("name", p.name)
                .str("type", p.type)
                .str("base_url", p.base_url)
                .str("ca_file", p.ca_file)
                .begin_object("credentials");
            for (const auto& [k, v] : p.credentials) j.str(k, v);
            j.end().end();
        }
        j.end_array().end();
    });
}

void Store::save_routes(const std::map<std::string, InferenceConfig>& routes) const {
    uint64_t latest = version_;
    for (const auto& [r, c] : routes) latest = std::max(latest, c.version);
    write_json_state(inference_path(), [&](PrettyJsonOut& j) {
        j.begin().num("version", latest).begin_object("routes");
        for (const auto& [r, c] : routes)
            j.begin_object(r).str("provider", c.provider).str("model", c.model).num("version", c.version).end();
        j.end().end();
    });
}

}  // namespace redir::terminator
