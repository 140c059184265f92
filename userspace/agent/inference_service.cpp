#include "agent/inference_service.hpp"

#include <rapidjson/document.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "agent/audit_log.hpp"
#include "agent/conn_audit.hpp"
#include "agent/json_out.hpp"
#include "common/error.hpp"
#include "terminator/gateway.hpp"
#include "terminator/store.hpp"
#include "tls/leaf_cache.hpp"
#include "tls/local_ca.hpp"
#include "tls/server_context.hpp"

namespace redir::agent {
namespace {

std::string opt_str(const rapidjson::Value& v, const char* k) {
    return v.HasMember(k) && v[k].IsString() ? v[k].GetString() : std::string();
}

std::optional<std::string> maybe_str(const rapidjson::Value& v, const char* k) {
    if (v.HasMember(k) && v[k].IsString()) return std::string(v[k].GetString());
    return std::nullopt;
}

void provider_json(JsonOut& j, const terminator::Provider& p) {
    auto m = p.masked();
    j.begin().str("name", m.name).str("type", m.type).str("base_url", m.base_url).str("ca_file", m.ca_file);
    j.begin_object("credentials");
    for (auto& [k, v] : m.credentials) j.str(k, v);
    j.end().end();
}

}  // namespace

InferenceService::InferenceService(boost::asio::io_context& io, const std::string& state_dir, OrigDstLookup lookup,
                                   AuditLog& audit, std::chrono::seconds stream_idle_timeout,
                                   const GatewayLimits& limits,
                                   std::function<bool(uint64_t cgroup_id)> provider_fetch_allowed)
    : audit_(audit) {
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
    go.on_request = [&audit](const terminator::RequestLog& r) { audit.write(terminator::request_log_json(r)); };
    apply_gateway_limits(limits, go);
    go.provider_fetch_allowed = std::move(provider_fetch_allowed);
    go.on_refused = [&audit](const ConnInfo& ci, const terminator::LimitRefusal& r) {
        audit.write(refusal_record("inference", {"sandbox over a terminator limit", r.limit, r.cap, r.suppressed}, ci,
                                   false));
    };
    gateway_ = std::make_unique<terminator::Gateway>(io.get_executor(), store_, go);

    SSL_CTX* sctx = server_ctx_->get();
    auto* gw = gateway_.get();
    tls_listener_ = std::make_unique<RedirectListener>(
        io, "terminator", 0, lookup, audit,
        [gw, sctx](boost::asio::ip::tcp::socket s, ConnInfo ci) { gw->serve_tls(std::move(s), sctx, std::move(ci)); });
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

std::string InferenceService::handle(const std::string& cmd, const std::string& line) {
    rapidjson::Document req;
    req.Parse(line.c_str());
    if (cmd == "ca.export") {
        return JsonOut().begin().boolean("ok", true).str("pem", ca_->cert_pem()).end().take();
    }
    if (cmd == "provider.create") {
        terminator::Provider p;
        p.name = opt_str(req, "name");
        p.type = opt_str(req, "type");
        p.base_url = opt_str(req, "base_url");
        p.ca_file = opt_str(req, "ca_file");
        if (req.HasMember("credentials") && req["credentials"].IsObject())
            for (auto& m : req["credentials"].GetObject())
                if (m.value.IsString()) p.credentials[m.name.GetString()] = m.value.GetString();
        store_->create_provider(p);
        auto got = store_->get_provider(p.name);
        JsonOut j;
        j.begin().boolean("ok", true).key("provider");
        provider_json(j, *got);
        return j.end().take();
    }
    if (cmd == "provider.get") {
        auto name = opt_str(req, "name");
        auto p = store_->get_provider(name);
        if (!p) return error_response("no provider named \"" + name + "\" (see `redirctl provider list`)");
        JsonOut j;
        j.begin().boolean("ok", true).key("provider");
        provider_json(j, *p);
        return j.end().take();
    }
    if (cmd == "provider.list") {
        JsonOut j;
        j.begin().boolean("ok", true).begin_array("providers");
        for (auto& p : store_->list_providers()) provider_json(j, p);
        return j.end_array().end().take();
    }
    if (cmd == "provider.update") {
        terminator::ProviderUpdate u;
        u.base_url = maybe_str(req, "base_url");
        u.ca_file = maybe_str(req, "ca_file");
        if (req.HasMember("credentials") && req["credentials"].IsObject())
            for (auto& m : req["credentials"].GetObject())
                if (m.value.IsString()) u.credentials[m.name.GetString()] = m.value.GetString();
        if (req.HasMember("remove_credentials") && req["remove_credentials"].IsArray())
            for (auto& v : req["remove_credentials"].GetArray())
                if (v.IsString()) u.remove_credentials.push_back(v.GetString());
        auto name = opt_str(req, "name");
        store_->update_provider(name, u);
        JsonOut j;
        j.begin().boolean("ok", true).key("provider");
        provider_json(j, *store_->get_provider(name));
        return j.end().take();
    }
    if (cmd == "provider.delete") {
        auto name = opt_str(req, "name");
        store_->delete_provider(name);
        return JsonOut().begin().boolean("ok", true).str("provider", name).end().take();
    }
    auto inference_json = [](const terminator::InferenceConfig& c) {
        return JsonOut()
            .begin()
            .boolean("ok", true)
            .begin_object("inference")
            .str("provider", c.provider)
            .str("model", c.model)
            .num("version", c.version)
            .end()
            .end()
            .take();
    };
    if (cmd == "inference.set") return inference_json(store_->set_inference(opt_str(req, "provider"), opt_str(req, "model")));
    if (cmd == "inference.update")
        return inference_json(store_->update_inference(maybe_str(req, "provider"), maybe_str(req, "model")));
    if (cmd == "inference.get") {
        auto c = store_->inference();
        if (!c) return error_response("no inference configured; set one with `redirctl inference set --provider N --model M`");
        return inference_json(*c);
    }
    return {};
}

}  // namespace redir::agent
