#include "agent/inference_service.hpp"

#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "agent/audit_log.hpp"
#include "agent/conn_audit.hpp"
#include "agent/inference_limits.hpp"
#include "agent/json_out.hpp"
#include "common/error.hpp"
#include "terminator/gateway.hpp"
#include "terminator/store.hpp"
#include "tls/leaf_cache.hpp"
#include "tls/local_ca.hpp"
#include "tls/server_context.hpp"

namespace redir::agent {
namespace {

control::ProviderView view_of(const terminator::Provider& p) {
    auto m = p.masked();
    return {m.name, m.type, m.base_url, m.ca_file, m.credentials};
}

control::InferenceView view_of(const terminator::InferenceConfig& c) { return {c.route, c.provider, c.model, c.version}; }
control::InferenceReply reply_of(const terminator::InferenceConfig& c) { return {view_of(c)}; }

// A request's "route": absent or empty names the default route.
std::string route_of(const std::string& r) { return r.empty() ? std::string(terminator::kDefaultRoute) : r; }

}  // namespace

InferenceService::InferenceService(boost::asio::io_context& io, const std::string& state_dir, OrigDstLookup lookup,
                                   AuditLog& audit, std::chrono::seconds stream_idle_timeout,
                                   const GatewayLimits& limits,
                                   SandboxPolicyHooks policy_hooks,
                                   std::function<void(const terminator::RequestLog&, std::int64_t now_ms)> on_request)
    : audit_(audit), hooks_(std::move(policy_hooks)) {
    ca_ = std::make_unique<tls::LocalCa>(tls::LocalCa::load_or_create(state_dir, {}));
    if (ca_->created()) spdlog::info("created the local CA in {}/ca (export it with `redirctl ca export`)", state_dir);
    leaves_ = std::make_shared<tls::LeafCache>(*ca_, std::vector<std::string>{std::string(tls::kInferenceName)});
    tls::ServerContext::Hooks hooks;
    hooks.on_refused = [&audit](const std::string& sni) {
        JsonOut j;
        j.begin().str("event", "tls").str("verdict", "refused").str("reason", "name not served").str("sni", sni).end();
        audit.write(j.take());
    };
    hooks.on_error = [](const std::string& sni, const std::string& err) {
        spdlog::error("issuing a certificate for {} failed: {}", sni, err);
    };
    server_ctx_ = std::make_unique<tls::ServerContext>(leaves_, hooks);
    store_ = std::make_shared<terminator::Store>(state_dir);

    terminator::GatewayOptions go;
    go.stream_idle_timeout = stream_idle_timeout;  // no total cap: long tool-call streams must arrive whole
    // Request records go to the audit log (one place to read), not twice.
    go.access_log = std::make_shared<spdlog::logger>("access", std::make_shared<spdlog::sinks::null_sink_mt>());
    go.access_log->set_level(spdlog::level::off);  // the gateway then does not even build the line
    limits_ = std::make_unique<InferenceLimitsKeeper>(io, state_dir + "/inference-limits.json");
    go.admit_request = [limits = limits_.get()](uint64_t cg, const terminator::InferenceLimits& l) {
        return limits->admit(cg, l);
    };
    go.on_request = [&audit, loops = &audit_loops_, limits = limits_.get(),
                     on_request = std::move(on_request)](const terminator::RequestLog& r) {
        // Built in this io thread's reused buffer, copied into the audit
        // log's reused batch and a reused slot of the tail: no allocation per
        // record. The batch reaches the file in one writev(2) at the end of
        // this io thread's loop turn, not one per request.
        write_from_loop(audit, terminator::request_log_line(r), *loops);
        // One wall-clock read for the limits and the usage ledger.
        const auto now = static_cast<std::int64_t>(now_ms());
        limits->charge(r, now);
        if (on_request) on_request(r, now);  // the usage ledger
    };
    apply_gateway_limits(limits, go);
    go.sandbox_inference = hooks_.sandbox_inference;
    go.sandbox_inference_generation = hooks_.sandbox_inference_generation;
    go.on_refused = [&audit](const ConnInfo& ci, const terminator::LimitRefusal& r) {
        audit.write(refusal_record("inference", {"sandbox over a terminator limit", r.limit, r.cap, r.suppressed}, ci,
                                   false));
    };
    gateway_ = std::make_unique<terminator::Gateway>(io.get_executor(), store_, go);
    // Where requests are served: the gateway's io threads, or IO without
    // threads of its own. Filled before the listeners exist, so before any
    // request; read-only after.
    audit_loops_ = gateway_->io_executors();
    audit_loops_.push_back(io.get_executor());

    SSL_CTX* sctx = server_ctx_->get();
    auto* gw = gateway_.get();
    // Accepted, looked up and served on the gateway's io threads: no hop
    // through the agent's thread per connection.
    tls_listener_ = std::make_unique<RedirectListener>(
        io, "terminator", 0, lookup, audit,
        ContextAcceptHandler([gw, sctx](ContextSocket s, ConnInfo ci) { gw->serve_tls(std::move(s), sctx, std::move(ci)); }),
        gateway_->io_executors());
    plain_listener_ = std::make_unique<RedirectListener>(
        io, "plain-http", 0, lookup, audit,
        [gw](boost::asio::ip::tcp::socket s, ConnInfo ci) { gw->serve_plain_refusal(std::move(s), std::move(ci)); });
}

InferenceService::~InferenceService() = default;

uint16_t InferenceService::tls_port() const { return tls_listener_->port(); }
uint16_t InferenceService::plain_port() const { return plain_listener_->port(); }
bool InferenceService::has_v6() const { return tls_listener_->has_v6(); }

std::string InferenceService::metrics() const {
    return terminator_metrics(gateway_->stats(), gateway_->connections());
}

void InferenceService::serve(control::Dispatcher& commands) {
    commands.on_members(this, &InferenceService::ca_export, &InferenceService::provider_create,
                        &InferenceService::provider_get, &InferenceService::provider_list,
                        &InferenceService::provider_update, &InferenceService::provider_delete,
                        &InferenceService::inference_set, &InferenceService::inference_get,
                        &InferenceService::inference_update, &InferenceService::inference_list,
                        &InferenceService::inference_delete);
}

control::CaExportReply InferenceService::ca_export(const control::CaExportRequest&) { return {ca_->cert_pem()}; }

control::ProviderReply InferenceService::provider_create(const control::ProviderCreateRequest& req) {
    store_->create_provider({req.name, req.type, req.base_url, req.ca_file, req.credentials});
    return {view_of(*store_->get_provider(req.name))};
}

control::ProviderReply InferenceService::provider_get(const control::ProviderGetRequest& req) {
    auto p = store_->get_provider(req.name);
    if (!p) throw Error("no provider named \"" + req.name + "\" (see `redirctl provider list`)");
    return {view_of(*p)};
}

control::ProviderListReply InferenceService::provider_list(const control::ProviderListRequest&) {
    control::ProviderListReply r;
    for (auto& p : store_->list_providers()) r.providers.push_back(view_of(p));
    return r;
}

control::ProviderReply InferenceService::provider_update(const control::ProviderUpdateRequest& req) {
    store_->update_provider(req.name, {req.base_url, req.ca_file, req.credentials, req.remove_credentials});
    return {view_of(*store_->get_provider(req.name))};
}

control::ProviderDeleteReply InferenceService::provider_delete(const control::ProviderDeleteRequest& req) {
    store_->delete_provider(req.name);
    return {req.name};
}

control::InferenceReply InferenceService::inference_set(const control::InferenceSetRequest& req) {
    return reply_of(store_->set_inference(req.provider, req.model, route_of(req.route)));
}

control::InferenceReply InferenceService::inference_update(const control::InferenceUpdateRequest& req) {
    return reply_of(store_->update_inference(req.provider, req.model, route_of(req.route)));
}

control::InferenceReply InferenceService::inference_get(const control::InferenceGetRequest& req) {
    const auto route = route_of(req.route);
    auto c = store_->inference(route);
    if (!c)
        throw Error("no inference route named " + route + " is configured; set one with `redirctl inference set" +
                    (route == terminator::kDefaultRoute ? "" : " --route " + route) + " --provider N --model M`");
    return reply_of(*c);
}

control::InferenceListReply InferenceService::inference_list(const control::InferenceListRequest&) {
    control::InferenceListReply r;
    for (const auto& c : store_->routes())
        r.routes.push_back({view_of(c), hooks_.route_users ? hooks_.route_users(c.route) : std::vector<std::string>{}});
    return r;
}

control::InferenceReply InferenceService::inference_delete(const control::InferenceDeleteRequest& req) {
    auto gone = store_->inference(req.route);
    store_->delete_route(req.route, hooks_.route_users ? hooks_.route_users(req.route) : std::vector<std::string>{});
    return reply_of(*gone);  // delete_route refused a route that does not exist
}

}  // namespace redir::agent
