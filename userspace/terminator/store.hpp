#pragma once
// Providers and the inference configuration: what the terminator forwards to.
// Persisted in the agent's state directory (mode 0600: the files hold
// credentials). Readers take an immutable snapshot, so a change applies to the
// next request without a restart and never to half of one.
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace redir::terminator {

struct Provider {
    std::string name;
    std::string type;      // a profile type: openai, anthropic, nvidia, openai-compatible, mock
    std::string base_url;  // filled with the profile's default when not given
    std::string ca_file;   // extra trust anchors (PEM) beside the system store; "" = none
    std::map<std::string, std::string> credentials;  // KEY=VALUE, e.g. OPENAI_API_KEY=sk-...

    // Same provider with every credential value masked, for `get`/`list`.
    Provider masked() const;
};

// One inference route: which provider and model serve the sandboxes whose
// policy names it (policy "inference.route"; "default" when unnamed).
inline constexpr const char* kDefaultRoute = "default";

struct InferenceConfig {
    std::string provider;
    std::string model;
    // Increments on every change of the configuration, including updates of
    // the provider it references.
    uint64_t version = 0;
    std::string route = kDefaultRoute;
};

// https://host[:port][/path] split for the upstream client.
struct BaseUrl {
    std::string host;        // without brackets for IPv6 literals
    uint16_t port = 443;
    std::string path;        // "" or "/v1"-like, no trailing slash
    bool ip_literal = false;
    std::string host_header; // what goes in Host:
};
// nullopt with *err set to one sentence on failure.
std::optional<BaseUrl> parse_base_url(const std::string& url, std::string* err);

// What one request works with; never changes once published.
struct Snapshot {
    std::string route = kDefaultRoute;  // the route it serves
    std::optional<InferenceConfig> inference;
    std::optional<Provider> provider;  // the one inference references

    // Derived from the provider once, when the snapshot is published, instead
    // of on every request (derive_upstream: publish calls it; a snapshot built
    // by hand must too).
    std::optional<BaseUrl> base;  // provider->base_url parsed; nullopt: base_error says why
    std::string base_error;
    // The headers the provider itself adds to every request, in order: its
    // credential as the profile sends it, its account headers.
    std::vector<std::pair<std::string, std::string>> provider_headers;
};
// Fills SNAP's derived fields from its provider (and its type's profile).
void derive_upstream(Snapshot& snap);

// "sk-…" → "****wxyz" (last four kept only for long values, to tell keys apart).
std::string mask_secret(const std::string& value);

struct ProviderUpdate {
    std::optional<std::string> base_url;
    std::optional<std::string> ca_file;
    // Merged into the existing credentials (same key replaces).
    std::map<std::string, std::string> credentials;
    // Keys removed from the credentials.
    std::vector<std::string> remove_credentials;
};

// Every method throws redir::Error with one clear sentence on invalid input
// or storage failure; a failed change leaves memory and disk as they were.
class Store {
public:
    // Loads STATE_DIR/providers.json and STATE_DIR/inference.json if present.
    explicit Store(std::string state_dir);

    void create_provider(Provider p);
    std::optional<Provider> get_provider(const std::string& name) const;  // unmasked
    std::vector<Provider> list_providers() const;                          // unmasked, by name
    void update_provider(const std::string& name, const ProviderUpdate& u);
    // Refused while a route references NAME (the message names the routes).
    void delete_provider(const std::string& name);

    InferenceConfig set_inference(const std::string& provider, const std::string& model,
                                  const std::string& route = kDefaultRoute);
    InferenceConfig update_inference(const std::optional<std::string>& provider,
                                     const std::optional<std::string>& model,
                                     const std::string& route = kDefaultRoute);
    std::optional<InferenceConfig> inference(const std::string& route = kDefaultRoute) const;
    std::vector<InferenceConfig> routes() const;  // by name
    // USERS: who still uses ROUTE (policies, sandboxes); non-empty refuses.
    void delete_route(const std::string& route, const std::vector<std::string>& users);

    // What a request of a sandbox using ROUTE works with (no inference when
    // the route is not configured).
    std::shared_ptr<const Snapshot> snapshot(const std::string& route = kDefaultRoute) const;
    // Changes with every published change (providers, routes); never 0. A
    // snapshot() asked after reading generation G is current for as long as
    // generation() still reads G (the gateway reuses it per connection while
    // it does).
    std::uint64_t generation() const { return generation_.load(std::memory_order_acquire); }

    const std::string& state_dir() const { return dir_; }
    std::string providers_path() const;
    std::string inference_path() const;

private:
    void validate(const Provider& p) const;
    void save_providers(const std::map<std::string, Provider>& ps) const;
    void save_routes(const std::map<std::string, InferenceConfig>& routes) const;
    void publish_locked();

    std::string dir_;
    mutable std::mutex mu_;
    std::map<std::string, Provider> providers_;
    std::map<std::string, InferenceConfig> routes_;
    uint64_t version_ = 0;  // survives inference being re-set
    std::map<std::string, std::shared_ptr<const Snapshot>> snapshots_;
    std::atomic<std::uint64_t> generation_{1};
};

}  // namespace redir::terminator
