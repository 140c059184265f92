#pragma once
// Everything behind https://inference.local inside the agent: the local CA and
// its leaf cache, the provider store, the gateway, and the two listeners the
// kernel redirects the inference VIP to (443 → TLS, 80 → refusal).
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "agent/gateway_limits.hpp"
#include "agent/listeners.hpp"
#include "control/dispatcher.hpp"
#include "terminator/sandbox_inference.hpp"

namespace redir::tls {
class LocalCa;
class LeafCache;
class ServerContext;
}  // namespace redir::tls
namespace redir::terminator {
class Store;
class Gateway;
struct RequestLog;
}  // namespace redir::terminator

namespace redir::agent {

class AuditLog;

// What the inference side asks the agent about sandboxes and their policies.
struct SandboxPolicyHooks {
    // The policy "inference" settings of an attached cgroup, asked per request
    // from the terminator's threads: must be thread-safe.
    std::function<terminator::SandboxInference(uint64_t cgroup_id)> sandbox_inference;
    // Who uses an inference route ("policy P (sandboxes /a, /b)"), asked on
    // the agent's thread: deleting the route is refused while any.
    std::function<std::vector<std::string>(const std::string& route)> route_users;
    // Changes whenever an answer of sandbox_inference may change (see
    // terminator::GatewayOptions::sandbox_inference_generation); null: unknown.
    std::function<std::uint64_t()> sandbox_inference_generation;
};

class InferenceLimitsKeeper;

class InferenceService {
public:
    InferenceService(boost::asio::io_context& io, const std::string& state_dir, OrigDstLookup lookup,
                     AuditLog& audit, std::chrono::seconds stream_idle_timeout, const GatewayLimits& limits = {},
                     SandboxPolicyHooks hooks = {},
                     std::function<void(const terminator::RequestLog&, std::int64_t now_ms)> on_request = {});
    ~InferenceService();

    uint16_t tls_port() const;
    uint16_t plain_port() const;
    bool has_v6() const;
    // Prometheus text: the terminator's limits and its listeners.
    std::string metrics() const;
    const RedirectListener& tls_listener() const { return *tls_listener_; }
    const RedirectListener& plain_listener() const { return *plain_listener_; }
    // Sandboxes in their own network namespace add their targets here.
    RedirectListener& tls_listener() { return *tls_listener_; }
    RedirectListener& plain_listener() { return *plain_listener_; }

    // Serves the control commands provider.*, inference.* and ca.export.
    void serve(control::Dispatcher& commands);

private:
    control::CaExportReply ca_export(const control::CaExportRequest&);
    control::ProviderReply provider_create(const control::ProviderCreateRequest& req);
    control::ProviderReply provider_get(const control::ProviderGetRequest& req);
    control::ProviderListReply provider_list(const control::ProviderListRequest&);
    control::ProviderReply provider_update(const control::ProviderUpdateRequest& req);
    control::ProviderDeleteReply provider_delete(const control::ProviderDeleteRequest& req);
    control::InferenceReply inference_set(const control::InferenceSetRequest& req);
    control::InferenceReply inference_get(const control::InferenceGetRequest&);
    control::InferenceReply inference_update(const control::InferenceUpdateRequest& req);
    control::InferenceListReply inference_list(const control::InferenceListRequest&);
    control::InferenceReply inference_delete(const control::InferenceDeleteRequest& req);

    AuditLog& audit_;
    std::unique_ptr<tls::LocalCa> ca_;
    std::shared_ptr<tls::LeafCache> leaves_;
    std::unique_ptr<tls::ServerContext> server_ctx_;
    std::shared_ptr<terminator::Store> store_;
    std::unique_ptr<InferenceLimitsKeeper> limits_;  // outlives the gateway that calls it
    // The io_contexts requests are served on, each flushing its own audit
    // batch (write_from_loop); outlives the gateway that reads it.
    std::vector<boost::asio::io_context::executor_type> audit_loops_;
    std::unique_ptr<terminator::Gateway> gateway_;
    std::unique_ptr<RedirectListener> tls_listener_, plain_listener_;
    SandboxPolicyHooks hooks_;
};

}  // namespace redir::agent
