#include "agent/agent.hpp"
#include "agent/containment.hpp"

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <rapidjson/document.h>
#include <spdlog/spdlog.h>

#include "agent/dns_service.hpp"
#include "agent/fd_reserve.hpp"
#include "agent/inference_service.hpp"
#include "agent/json_out.hpp"
#include "agent/metrics.hpp"
#include "agent/listeners.hpp"
#include "agent/netns_target.hpp"
#include "agent/relay.hpp"
#include "agent/revoke.hpp"
#include "agent/usage_ledger.hpp"
#include "common/addr.hpp"
#include "common/atomic_file.hpp"
#include "common/error.hpp"
#include "common/netns_cookie.hpp"
#include "enforce/undo.hpp"
#include "loader/features.hpp"
#include "policy/compile.hpp"
#include "terminator/request.hpp"

namespace fs = std::filesystem;

namespace redir::agent {

struct Agent::Listeners {
    std::unique_ptr<Relay> relay_service;  // declared first: outlives the listener that feeds it
    std::unique_ptr<RedirectListener> relay;
};

namespace {

const char* verdict_name(uint8_t v) {
    switch (v) {
        case REDIR_VERDICT_ALLOW: return "allow";
        case REDIR_VERDICT_DENY: return "deny";
        case REDIR_VERDICT_REDIRECT: return "redirect";
        default: return "none";
    }
}

const char* reason_name(uint8_t r) {
    switch (r) {
        case REDIR_REASON_POLICY: return "policy";
        case REDIR_REASON_NO_ATTACHMENT: return "no-attachment";
        case REDIR_REASON_LINK_LOCAL: return "link-local";
        case REDIR_REASON_LOOPBACK: return "loopback";
        case REDIR_REASON_INFERENCE: return "inference";
        case REDIR_REASON_SOCKET_TYPE: return "socket-type";
        case REDIR_REASON_DNS: return "dns";
        case REDIR_REASON_SOURCE_ROUTE: return "source-route";
        case REDIR_REASON_AGENT_ADDRESS: return "agent-address";
        case REDIR_REASON_UNREDIRECTED: return "unredirected";
        case REDIR_REASON_UNPARSED: return "unparsed";
        default: return "unknown";
    }
}

const char* kind_name(uint8_t k) {
    switch (k) {
        case REDIR_EV_CONNECT: return "connect";
        case REDIR_EV_SENDMSG: return "sendmsg";
        case REDIR_EV_SOCKET: return "socket";
        case REDIR_EV_SETSOCKOPT: return "setsockopt";
        case REDIR_EV_FORWARDED: return "forwarded";
        default: return "unknown";
    }
}

}  // namespace

Agent::Agent(boost::asio::io_context& io, AgentOptions opts) : io_(io), opts_(std::move(opts)) {}

Agent::~Agent() = default;

void Agent::start() {
    started_ = std::chrono::steady_clock::now();
    auto checks = loader::check_kernel_features(opts_.bpffs_dir);
    if (auto miss = loader::first_missing(checks); !miss.empty())
        throw Error("this host cannot run redird: " + miss + " (see `redirctl doctor`)");

    make_dirs(opts_.run_dir, 0700);
    store_ = std::make_unique<StateStore>(opts_.state_dir);
    audit_ = std::make_unique<AuditLog>(opts_.audit_log.empty() ? opts_.state_dir + "/audit.log" : opts_.audit_log,
                                        opts_.audit);
    FdReserve::instance().init(opts_.fd_reserve);

    dp_ = loader::Datapath::open({opts_.bpffs_dir});
    policies_ = std::make_unique<PolicyRegistry>(*dp_, *store_);
    netns_cookie_ = current_netns_cookie();

    listeners_ = std::make_unique<Listeners>();
    auto lookup = [this](const redir_tuple_key& k) { return dp_->take_origdst(k); };
    listeners_->relay_service = std::make_unique<Relay>(io_, *audit_, relay_options(opts_.gateway_limits));
    listeners_->relay =
        std::make_unique<RedirectListener>(io_, "relay", 0, lookup, *audit_, listeners_->relay_service->handler());

    usage_ = std::make_unique<UsageLedger>(opts_.state_dir + "/usage.json");
    inference_ = std::make_unique<InferenceService>(
        io_, opts_.state_dir, lookup, *audit_, std::chrono::seconds(opts_.stream_idle_timeout_s),
        opts_.gateway_limits,
        SandboxPolicyHooks{[t = inference_table_](uint64_t cg) { return t->find(cg); },
                           [this](const std::string& r) { return route_users(r); },
                           [t = inference_table_] { return t->generation(); }},
        [ledger = usage_.get()](const terminator::RequestLog& r, int64_t now) { ledger->record(usage_record_of(r, now)); });
    DnsOptions dopts = opts_.dns;
    dopts.upstream = opts_.dns_upstream;
    // Beside the pinned maps' lifetime: /run is emptied at boot, like bpffs.
    dopts.journal_path = opts_.run_dir + "/dns-admissions";
    dopts.accept_allowed = [] { return FdReserve::instance().full(); };
    if (auto v = addr_parse(opts_.inference_vip); v && addr_is_v4(*v)) std::memcpy(dopts.vip4.data(), &v->b[12], 4);
    std::optional<redir_addr> vip6;
    if (!opts_.inference_vip6.empty()) {
        vip6 = addr_parse(opts_.inference_vip6);
        if (!vip6 || addr_is_v4(*vip6))
            throw Error("--inference-vip6 " + opts_.inference_vip6 + " is not an IPv6 address; give one such as fd00:1::1");
        dopts.vip6 = to_addr(*vip6);
    }
    dns_ = std::make_unique<DnsService>(io_, *dp_, *audit_, dopts);
    sandboxes_ = std::make_unique<enforce::Sandboxes>(enforce::SandboxesDeps{
        *dp_, *dns_, [this](const std::vector<StoredAttachment>& a) { store_->save_attachments(a); }});

    redir_config cfg{};
    cfg.agent_netns_cookie = netns_cookie_;
    cfg.terminator_port = inference_->tls_port();
    cfg.plain_http_port = inference_->plain_port();
    auto vip = addr_parse(opts_.inference_vip);
    if (!vip) throw Error("--inference-vip " + opts_.inference_vip + " is not an IP address");
    if (addr_is_v4(*vip))
        cfg.inference_vip4 = *vip;
    else
        cfg.inference_vip6 = *vip;
    if (vip6) cfg.inference_vip6 = *vip6;
    cfg.terminator4 = *addr_parse("127.0.0.1");
    cfg.terminator6 = listeners_->relay->has_v6() ? *addr_parse("::1") : redir_addr{};
    cfg.relay_port = listeners_->relay->port();
    dp_->set_config(cfg);

    restore();

    dp_->open_events([this](const redir_event& e) { on_event(e); });
    if (!opts_.metrics.empty())
        metrics_ = std::make_unique<MetricsServer>(io_, opts_.metrics, [this] { return render_metrics(); });
    // Last, so it covers what the services above created (the CA, pins).
    secure_private_dirs();
    serve_commands();
    control_ = std::make_unique<ControlServer>(
        io_, opts_.run_dir + "/redird.sock",
        [this](const std::string& line, const std::shared_ptr<ControlConn>& c) {
            // The operator's request (state writes included) may use the spare
            // descriptors; the data plane waits until they are back.
            FdReserve::instance().release();
            auto resp = handle(line, c);
            FdReserve::instance().refill();
            return resp;
        },
        [this](pid_t pid) { return control_peer_refusal(pid); });
    schedule_housekeeping();
    spdlog::info("redird ready: state {}, control {}/redird.sock, bpffs {}, {} policies, {} attachments",
                 opts_.state_dir, opts_.run_dir, opts_.bpffs_dir, policies_->size(), sandboxes_->all().size());
}

namespace {
std::shared_ptr<const policy::CompiledPolicy> compiled_of(const ActivePolicy* p) {
    if (!p) return nullptr;
    return std::static_pointer_cast<const policy::CompiledPolicy>(p->info.compiled);
}

// What a sandbox needs of a loaded policy.
enforce::PolicyRef policy_ref(const ActivePolicy& p) {
    return {p.info.name, p.id, p.info.inference_enabled, compiled_of(&p)};
}
}  // namespace

// The gateway reads the table per request, so a policy reload or an attach
// applies to the next request. Runs on the agent's thread, like every change
// to policies_ and the sandboxes.
void Agent::publish_sandbox_inference() {
    terminator::SandboxInferenceTable::Map m;
    for (const auto& sb : sandboxes_->all()) {
        // Named in the usage ledger now, not at the next flush: a `redirctl run`
        // that comes and goes within a second still shows its path in `usage`.
        usage_->label(sb.cgroup_id, sb.cgroup_path);
        const auto* p = policies_->find(sb.policy);
        if (!p) continue;  // a policy that no longer loads: defaults (no fetches)
        const auto& info = p->info;
        m[sb.cgroup_id] = {info.route, info.provider_fetch, {info.requests_per_minute, info.tokens_per_day}};
    }
    inference_table_->publish(std::move(m));
}

std::vector<std::string> Agent::route_users(const std::string& route) const {
    std::vector<std::string> out;
    for (const auto& [name, p] : policies_->all()) {
        if (p.info.route != route) continue;
        std::string who = "policy " + name;
        std::string paths;
        for (const auto& sb : sandboxes_->all())
            if (sb.policy == name) paths += (paths.empty() ? "" : ", ") + sb.cgroup_path;
        out.push_back(paths.empty() ? who : who + " (sandboxes " + paths + ")");
    }
    return out;
}

void Agent::secure_private_dirs() {
    // Credentials, the CA key, the control socket and the pins that keep
    // sandboxes enforced: nobody but root may read or change any of them.
    const std::pair<std::string, const char*> dirs[] = {
        {opts_.state_dir, "state dir"}, {opts_.run_dir, "run dir"}, {opts_.bpffs_dir, "bpffs dir"}};
    for (auto& [dir, what] : dirs)
        if (make_private_tree(dir, what))
            spdlog::warn("{} {} was open to other users; it and everything in it are now root-only (0700/0600)", what,
                         dir);
}

std::optional<std::string> Agent::control_peer_refusal(pid_t pid) {
    auto cg = process_cgroup(pid);
    if (!cg) return "cannot read the cgroup of control peer pid " + std::to_string(pid) + "; refused";
    for (uint64_t id : cgroup_lineage_ids(*cg)) {
        bool attached = dp_->attachment(id).has_value() || sandboxes_->encloses(id);
        std::string where = "cgroup id " + std::to_string(id);
        if (auto* sb = sandboxes_->find(id)) where = sb->cgroup_path;
        if (attached)
            return "control requests from inside a sandbox are refused (pid " + std::to_string(pid) + " is in " +
                   *cg + ", under sandbox " + where + "): a sandbox may not change its own enforcement";
    }
    return std::nullopt;
}

void Agent::restore() {
    // Ids never go backwards: the maps may hold ids from a previous agent.
    policies_->resume_ids();
    for (auto& [name, sp] : store_->load_policies()) {
        try {
            policies_->put(name, policies_->install(sp));
        } catch (const std::exception& e) {
            spdlog::error("stored policy {} no longer loads ({}); sandboxes using it deny everything", name, e.what());
        }
    }

    // Policies first: the sandboxes are adopted under their new ids.
    std::map<std::string, enforce::PolicyRef> refs;
    for (auto& [name, ap] : policies_->all()) refs[name] = policy_ref(ap);
    sandboxes_->restore(store_->load_attachments(), [&](const std::string& name) -> const enforce::PolicyRef* {
        auto it = refs.find(name);
        return it == refs.end() ? nullptr : &it->second;
    });
    // Targets of sandboxes in their own namespaces, from the pinned entries.
    for (auto& sb : sandboxes_->all()) {
        try {
            serve_target(sb.target);
        } catch (const std::exception& e) {
            spdlog::warn("sandbox {}: {}; its redirects fail until it is attached again", sb.cgroup_path, e.what());
        }
    }
    policies_->collect_garbage();
    publish_sandbox_inference();
}

// A sandbox flooding the shared ring buffer loses its own events and may
// lose others': each sandbox's losses (counted by the kernel) become one
// audit record per second at most, so a gap in its record is visible.
void Agent::report_event_drops() {
    std::map<uint64_t, uint64_t> now;
    for (auto& a : sandboxes_->all()) {
        uint64_t n = dp_->event_drops(a.cgroup_id);
        now[a.cgroup_id] = n;
        uint64_t before = drops_seen_.count(a.cgroup_id) ? drops_seen_[a.cgroup_id] : 0;
        if (n > before)
            audit_->write(JsonOut()
                              .begin()
                              .num("ts_ms", now_ms())
                              .str("event", "events_dropped")
                              .num("cgroup_id", a.cgroup_id)
                              .str("cgroup", a.cgroup_path)
                              .num("count", n - before)
                              .num("total", n)
                              .end()
                              .take());
    }
    drops_seen_ = std::move(now);
}

void Agent::schedule_housekeeping() {
    if (!housekeeping_) housekeeping_ = std::make_unique<boost::asio::steady_timer>(io_);
    housekeeping_->expires_after(std::chrono::seconds(1));
    housekeeping_->async_wait([this](boost::system::error_code ec) {
        if (ec) return;
        audit_->flush_suppressed();
        report_event_drops();
        flush_usage();
        FdReserve::instance().refill();
        schedule_housekeeping();
    });
}

void Agent::serve_commands() {
    commands_.on_members(this, &Agent::cmd_status, &Agent::cmd_attach, &Agent::cmd_detach, &Agent::cmd_policy_load,
                         &Agent::cmd_policy_show, &Agent::cmd_policy_list, &Agent::cmd_policy_delete,
                         &Agent::cmd_events, &Agent::cmd_usage);
    inference_->serve(commands_);
    if (auto missing = commands_.unserved(); !missing.empty())
        throw Error("redird serves no handler for control command \"" + std::string(missing.front()) +
                    "\": a command was added to control::Request without one");
}

std::string Agent::handle(const std::string& line, const std::shared_ptr<ControlConn>& conn) {
    std::string reply;
    try {
        reply = commands_.dispatch(line, conn);
    } catch (const PolicyRejected& e) {
        reply = control::encode_error({e.what(), e.errors});
    } catch (const std::exception& e) {
        reply = control::encode_error({e.what()});
    }
    // Any command may have changed a policy or a sandbox (a failed one rolls
    // back, which is a change too): the table is small, rebuilt every time.
    publish_sandbox_inference();
    return reply;
}

std::string Agent::render_metrics() {
    auto c = dp_->counters();
    std::string o;
    auto counter = [&](const char* name, const char* help, const std::string& labels, uint64_t v) {
        o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n";
        o += std::string(name) + labels + " " + std::to_string(v) + "\n";
    };
    o += "# HELP redir_verdicts_total connect()/sendmsg() verdicts in sandboxes\n# TYPE redir_verdicts_total counter\n";
    o += "redir_verdicts_total{verdict=\"allow\"} " + std::to_string(c[REDIR_CNT_ALLOW]) + "\n";
    o += "redir_verdicts_total{verdict=\"deny\"} " + std::to_string(c[REDIR_CNT_DENY]) + "\n";
    o += "redir_verdicts_total{verdict=\"redirect\"} " + std::to_string(c[REDIR_CNT_REDIRECT]) + "\n";
    counter("redir_sockets_refused_total", "socket() of a kind outside the allowlist refused at creation", "",
            c[REDIR_CNT_SOCKET_DENY]);
    counter("redir_sockopts_refused_total", "setsockopt() of source-routing options refused", "",
            c[REDIR_CNT_SOCKOPT_DENY]);
    counter("redir_guard_drops_total", "packets from a sandbox's link the node-side guard dropped", "",
            c[REDIR_CNT_GUARD_DROP]);
    counter("redir_events_dropped_total", "kernel events lost because the ring buffer was full", "",
            c[REDIR_CNT_EVENTS_DROPPED]);
    counter("redir_audit_records_total", "audit records written", "", audit_->written());
    counter("redir_audit_suppressed_total", "repeated identical audit records counted instead of written", "",
            audit_->suppressed());
    counter("redir_audit_write_errors_total", "audit records the file did not take (disk full?)", "",
            audit_->write_errors());
    o += "# HELP redir_sandbox_events_dropped_total kernel events of one sandbox lost to a full ring buffer\n"
         "# TYPE redir_sandbox_events_dropped_total counter\n";
    for (auto& a : sandboxes_->all())
        o += "redir_sandbox_events_dropped_total{cgroup_id=\"" + std::to_string(a.cgroup_id) + "\"} " +
             std::to_string(dp_->event_drops(a.cgroup_id)) + "\n";
    auto d = dns_->counters();
    counter("redir_dns_queries_total", "DNS queries received from sandboxes", "", d.queries);
    counter("redir_dns_refused_total", "DNS queries not answered normally (each raised an event)", "", d.refused);
    counter("redir_dns_admissions_total", "addresses admitted through DNS", "", d.admissions);
    counter("redir_dns_quota_refusals_total", "answers refused because the sandbox held its admission quota", "",
            d.quota_refusals);
    counter("redir_dns_tcp_refused_total", "DNS-over-TCP connections closed on accept (cap or fds short)", "",
            d.tcp_refused);
    counter("redir_dns_tcp_cut_total", "DNS-over-TCP connections closed with answers the client never read", "",
            d.tcp_cut);
    counter("redir_accept_backoffs_total", "accept errors (EMFILE, ENFILE) that paused an accept loop", "{listener=\"dns\"}",
            d.accept_backoffs);
    // Same family, so its samples follow without a second HELP/TYPE.
    o += listener_metrics({&inference_->tls_listener(), &inference_->plain_listener(), listeners_->relay.get()});
    counter("redir_dns_owner_lookups_total", "refusal records whose process was looked up", "", d.owner_lookups);
    counter("redir_dns_owner_lookups_skipped_total", "refusal records written without a pid (lookup queue full)", "",
            d.owner_lookups_skipped);
    counter("redir_dns_restored_total", "DNS admissions re-keyed under new policy ids at start", "", d.restored);
    counter("redir_dns_restore_withdrawn_total", "DNS admissions withdrawn at start (expired, no longer allowed)",
            "", d.restore_withdrawn);
    counter("redir_dns_journal_errors_total", "failed writes of the DNS admission journal", "", d.journal_errors);
    auto gauge = [&](const char* name, const char* help, uint64_t v) {
        o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " gauge\n";
        o += std::string(name) + " " + std::to_string(v) + "\n";
    };
    gauge("redir_dns_tcp_connections", "DNS-over-TCP connections open", d.tcp_open);
    gauge("redir_dns_admissions", "live DNS admissions held by the agent", d.admissions_live);
    rlimit rl{};
    ::getrlimit(RLIMIT_NOFILE, &rl);
    gauge("redir_open_fds", "file descriptors redird has open", count_open_fds());
    gauge("redir_fd_limit", "RLIMIT_NOFILE (soft) of redird", rl.rlim_cur);
    gauge("redir_fd_reserve", "spare descriptors held for the control socket", FdReserve::instance().held());
    o += "# HELP redir_attachments attached sandbox cgroups\n# TYPE redir_attachments gauge\nredir_attachments " +
         std::to_string(sandboxes_->all().size()) + "\n";
    o += "# HELP redir_policies loaded policies\n# TYPE redir_policies gauge\nredir_policies " +
         std::to_string(policies_->size()) + "\n";
    o += inference_->metrics();
    o += usage_metrics(usage_->rows());
    o += relay_metrics(listeners_->relay_service->stats(), listeners_->relay_service->connections());
    return o;
}

// "capable": the sandbox's processes that hold capabilities able to undo
// enforcement in the host user namespace (DESIGN: containment).
std::vector<control::CapableProcess> Agent::capable_of(const std::string& cgroup) {
    std::vector<control::CapableProcess> out;
    for (auto& p : capable_processes(cgroup))
        out.push_back({static_cast<uint64_t>(p.pid), p.comm, cap_names(p.caps)});
    return out;
}

control::StatusReply Agent::cmd_status(const control::StatusRequest&) {
    control::StatusReply r;
    r.agent = {static_cast<uint64_t>(::getpid()),
               opts_.state_dir,
               opts_.run_dir,
               opts_.bpffs_dir,
               opts_.inference_vip,
               listeners_->relay->port(),
               inference_->tls_port(),
               inference_->plain_port(),
               dns_->upstream(),
               dp_->lsm_available(),
               std::string(loader::to_string(dp_->lsm_probe().state)),
               static_cast<uint64_t>(
                   std::chrono::duration_cast<std::chrono::seconds>(std::chrono::steady_clock::now() - started_)
                       .count())};
    for (auto& c : loader::check_kernel_features(opts_.bpffs_dir)) r.kernel.push_back({c.name, c.ok, c.required, c.detail});
    auto pinned = dp_->pinned_attachments();
    for (auto& a : sandboxes_->all()) {
        control::AttachmentStatus& s = r.attachments.emplace_back();
        s.cgroup = a.cgroup_path;
        s.cgroup_id = a.cgroup_id;
        s.policy = a.policy;
        auto v = dp_->attachment(a.cgroup_id);
        s.policy_id = v ? v->policy_id : 0;
        for (auto& p : pinned)
            if (p.cgroup_id == a.cgroup_id) s.programs = p.programs.size();
        s.dns_port = a.dns_port;
        s.capable = capable_of(a.cgroup_path);
        if (auto g = dp_->guard_state(a.cgroup_id))
            s.guard = control::GuardStatus{g->interface, g->ifindex, g->hook, g->active, g->problem};
        if (const auto* p = policies_->find(a.policy)) {
            s.host_rules = p->info.pending_hosts;  // enforced through this sandbox's DNS responder
            s.pending_hosts.emplace();
        }
    }
    auto orphans = sandboxes_->orphans();
    r.orphans.assign(orphans.begin(), orphans.end());
    auto c = dp_->counters();
    r.counters = {c[REDIR_CNT_ALLOW],       c[REDIR_CNT_DENY],         c[REDIR_CNT_REDIRECT],
                  c[REDIR_CNT_SOCKET_DENY], c[REDIR_CNT_SOCKOPT_DENY], c[REDIR_CNT_EVENTS_DROPPED],
                  audit_->written()};
    return r;
}

// The redirect listeners of a sandbox in its own network namespace (its DNS
// responder is the DNS service's): all of them, or none.
void Agent::serve_target(const enforce::RedirectTarget& t) {
    if (!t.served()) return;
    std::vector<std::pair<RedirectListener*, ListenAddress>> done;
    try {
        for (auto* l : {listeners_->relay.get(), &inference_->tls_listener(), &inference_->plain_listener()})
            for (auto* a : {&t.addr4, &t.addr6}) {
                if (addr_is_zero(*a)) continue;
                ListenAddress la{boost::asio::ip::make_address(addr_to_string(*a)), t.device};
                l->add_target(la, t.netns_cookie);
                done.emplace_back(l, la);
            }
    } catch (...) {
        for (auto& [l, la] : done) l->remove_target(la, t.netns_cookie);
        throw;
    }
}

void Agent::unserve_target(const enforce::RedirectTarget& t) {
    if (!t.served()) return;
    for (auto* l : {listeners_->relay.get(), &inference_->tls_listener(), &inference_->plain_listener()})
        for (auto* a : {&t.addr4, &t.addr6})
            if (!addr_is_zero(*a))
                l->remove_target({boost::asio::ip::make_address(addr_to_string(*a)), t.device}, t.netns_cookie);
}

control::AttachReply Agent::cmd_attach(const control::AttachRequest& req) {
    if (req.cgroup.empty()) throw Error("attach needs a cgroup path");
    auto cg = loader::open_cgroup(req.cgroup);
    // The agent's own sockets must never be decided by a sandbox policy.
    if (auto mine = loader::current_cgroup_path()) {
        std::error_code ec;
        auto own = std::filesystem::weakly_canonical(*mine, ec).string();
        if (own == cg.path || own.rfind(cg.path + "/", 0) == 0)
            throw Error("refusing to attach " + cg.path + ": redird itself runs in it (" + own +
                        "); attach a cgroup that holds only the sandbox");
    }
    if (auto* a = sandboxes_->find(cg.id))
        throw Error(cg.path + " is already attached (policy " + a->policy +
                    "); detach it first or load a new policy with `redirctl policy load`");
    std::string name = req.policy_name;
    // A file given with attach is loaded (or replaced) under its own name.
    if (!req.policy_text.empty()) name = cmd_policy_load({req.policy_text, req.source_name, ""}).policy;
    const auto* policy = policies_->find(name);
    if (!policy) throw Error("no policy named \"" + name + "\" is loaded; load it with `redirctl policy load FILE`");
    // Listeners first: the kernel redirects there as soon as the entry exists.
    enforce::RedirectTarget target;
    if (req.netns && !req.netns->empty()) target = resolve_redirect_target(*req.netns, req.redirect_via.value_or(""));
    else if (req.redirect_via) throw Error("--redirect-via needs --netns (the sandbox's network namespace)");
    serve_target(target);
    try {
        sandboxes_->attach(cg, policy_ref(*policy), target);
    } catch (...) {
        unserve_target(target);
        throw;
    }
    control::AttachReply r{cg.path, cg.id, name, {}};
    if (target.own_netns()) {
        // "v4,v6" as --redirect-via takes them; one of them when the namespace has one family.
        for (auto* a : {&target.addr4, &target.addr6})
            if (!addr_is_zero(*a)) r.redirect_via = (r.redirect_via ? *r.redirect_via + "," : "") + addr_to_string(*a);
        r.redirect_device = target.device;
    }
    if (auto procs = capable_processes(cg.path); !procs.empty()) r.warnings.push_back(capable_warning(cg.path, procs));
    return r;
}

control::DetachReply Agent::cmd_detach(const control::DetachRequest& req) {
    if (req.cgroup.empty()) throw Error("detach needs a cgroup path");
    uint64_t id = 0;
    std::string path = req.cgroup;
    try {
        auto cg = loader::open_cgroup(req.cgroup);
        id = cg.id;
        path = cg.path;
    } catch (const std::exception&) {
        // The cgroup may already be gone; match the recorded path.
    }
    enforce::RedirectTarget target;
    for (auto& sb : sandboxes_->all())
        if ((id && sb.cgroup_id == id) || sb.cgroup_path == path) target = sb.target;
    auto detached = sandboxes_->detach(id, path);
    if (!detached) throw Error(path + " is not attached");
    unserve_target(target);
    return {path};
}

control::PolicyLoadReply Agent::cmd_policy_load(const control::PolicyLoadRequest& req) {
    if (req.policy_text.empty()) throw Error("policy load needs the policy file's content");
    StoredPolicy sp{req.name, req.policy_text, req.source_name.empty() ? std::string("policy.json") : req.source_name};
    // Compile under a fresh id first: a rejected file changes nothing.
    ActivePolicy ap = policies_->install(sp);  // --name (if given) overrides the file's own name
    ap.stored.name = ap.info.name;
    const std::string pname = ap.info.name;
    const uint32_t new_id = ap.id;
    std::optional<ActivePolicy> previous;
    if (const auto* p = policies_->find(pname)) previous = *p;
    {
        // All or nothing: a failure leaves the old policy stored, loaded and enforced.
        enforce::Undo undo;
        undo.push([&] { dp_->delete_policy(new_id); });
        store_->save_policy(ap.stored);
        undo.push([&] { previous ? store_->save_policy(previous->stored) : store_->delete_policy(pname); });
        sandboxes_->reload(policy_ref(ap), previous ? policy_ref(*previous) : enforce::PolicyRef{pname});
        undo.commit();
    }
    policies_->put(pname, std::move(ap));
    if (previous && previous->id) dp_->delete_policy(previous->id);
    const auto& p = *policies_->find(pname);
    control::PolicyLoadReply reply{pname, new_id, sandboxes_->users(pname), p.info.lpm_entries, p.info.portsets,
                                   p.info.pending_hosts};
    if (!req.keep_established) revoke_for(pname, reply);
    return reply;
}

void Agent::revoke_for(const std::string& name, control::PolicyLoadReply& reply) {
    std::vector<RevokeTarget> targets;
    std::map<uint64_t, std::string> paths;
    for (auto& a : sandboxes_->all()) {
        if (a.policy != name) continue;
        targets.push_back({a.cgroup_id, a.cgroup_path, a.attach_val()});
        paths[a.cgroup_id] = a.cgroup_path;
    }
    RevokeMaps maps{dp_->map_fd("policy_lpm"), dp_->map_fd("portsets"), dp_->map_fd("dns_allow"),
                    dp_->map_fd("sk_state")};
    auto rep = revoke_established(maps, dp_->config(), targets);
    size_t reset = 0;
    for (const auto& r : rep.revoked) {
        reset += r.error == 0;
        JsonOut a;
        a.begin()
            .num("ts_ms", now_ms())
            .str("event", "revoked")
            .num("cgroup_id", r.cgroup_id)
            .str("cgroup", paths[r.cgroup_id])
            .str("policy", name)
            .str("proto", r.proto)
            .str("dst", r.dst);
        if (r.error) a.str("error", std::strerror(r.error));
        audit_->write(a.end().take());
    }
    for (const auto& n : rep.notes) spdlog::warn("policy {}: established connections not examined: {}", name, n);
    if (!rep.unsupported.empty()) {
        spdlog::warn("policy {}: established connections were not examined: {}", name, rep.unsupported);
        reply.revocation_unsupported = rep.unsupported;
    }
    reply.revoked = reset;
    reply.kept = rep.kept;
}

control::PolicyShowReply Agent::cmd_policy_show(const control::PolicyShowRequest& req) {
    const auto* p = policies_->find(req.name);
    if (!p) throw Error("no policy named \"" + req.name + "\"");
    // The control protocol is one line per message: re-serialise compactly.
    rapidjson::Document d;
    d.Parse(p->info.normalized_json.c_str());
    return {req.name, p->id, {JsonOut().value(d).take()}};
}

control::PolicyListReply Agent::cmd_policy_list(const control::PolicyListRequest&) {
    control::PolicyListReply r;
    for (auto& [n, p] : policies_->all()) r.policies.push_back({n, p.id, sandboxes_->users(n)});
    return r;
}

control::PolicyDeleteReply Agent::cmd_policy_delete(const control::PolicyDeleteRequest& req) {
    const std::string& name = req.name;
    const auto* p = policies_->find(name);
    if (!p) throw Error("no policy named \"" + name + "\"");
    for (auto& a : sandboxes_->all())
        if (a.policy == name)
            throw Error("policy \"" + name + "\" is attached to " + a.cgroup_path +
                        "; detach it first (`redirctl detach --cgroup " + a.cgroup_path + "`)");
    uint32_t id = p->id;
    store_->delete_policy(name);
    policies_->erase(name);
    dp_->delete_policy(id);
    return {name};
}

control::EventsReply Agent::cmd_events(const control::EventsRequest& req, const std::shared_ptr<ControlConn>& conn) {
    return serve_events(*audit_, req, conn);
}

void Agent::on_event(const redir_event& e) {
    // Repeated identical events of one sandbox (a connect() loop to a denied
    // address) are counted and summarised, not written one by one. The pid
    // is not part of the key: a fork loop must not evade the limit.
    std::string key = std::string(kind_name(e.kind)) + " " + verdict_name(e.verdict) + " " + reason_name(e.reason);
    if (e.kind == REDIR_EV_SOCKET)
        key += " family " + std::to_string(e.family) + " type " + std::to_string(e.sock_type);
    else
        key += std::string(e.proto == REDIR_PROTO_UDP ? " udp " : " tcp ") + addr_to_string(e.addr) + " port " +
               std::to_string(e.port);
    if (!audit_->admit(e.cgroup_id, key)) return;
    const std::string policy = policies_->name_of(e.policy_id);
    JsonOut j;
    j.begin()
        .num("ts_ms", now_ms())
        .str("event", kind_name(e.kind))
        .str("verdict", verdict_name(e.verdict))
        .str("reason", reason_name(e.reason))
        .num("pid", e.pid)
        .str("comm", std::string(e.comm, strnlen(e.comm, sizeof(e.comm))))
        .num("cgroup_id", e.cgroup_id)
        .str("policy", policy);
    if (e.kind == REDIR_EV_SOCKET) {
        j.str("family", loader::socket_family_name(e.family))
            .num("type", e.sock_type)
            .num("protocol", e.sock_protocol);
    } else if (e.kind == REDIR_EV_SETSOCKOPT) {
        j.str("family", loader::socket_family_name(e.family)).num("level", e.proto).num("option", e.sock_protocol);
    } else {
        // The guard drops any protocol; the socket hooks see only TCP and UDP.
        j.str("protocol", e.proto == REDIR_PROTO_UDP   ? "udp"
                          : e.proto == REDIR_PROTO_TCP ? "tcp"
                                                       : "ip-" + std::to_string(e.proto))
            .str("family", e.family == AF_INET6 ? "ipv6" : "ipv4")
            .str("dst", addr_to_string(e.addr))
            .num("port", e.port);
    }
    j.end();
    audit_->write(j.take());
}

void Agent::flush_usage() {
    for (auto& sb : sandboxes_->all()) usage_->label(sb.cgroup_id, sb.cgroup_path);
    try {
        usage_->flush();
    } catch (const std::exception& e) {
        // Counting goes on in memory; the next second tries again.
        spdlog::error("usage ledger: {}; retrying every second", e.what());
    }
}

control::UsageReply Agent::cmd_usage(const control::UsageRequest& req) {
    std::optional<uint64_t> only;
    std::string only_path;
    if (!req.cgroup.empty()) {
        only_path = req.cgroup;
        try {
            auto cg = loader::open_cgroup(req.cgroup);
            only = cg.id;
            only_path = cg.path;
        } catch (const std::exception&) {
            // A sandbox removed since: match the path the ledger recorded.
        }
    }
    for (auto& sb : sandboxes_->all()) usage_->label(sb.cgroup_id, sb.cgroup_path);
    control::UsageReply r;
    for (auto& row : usage_->rows()) {
        if (!req.cgroup.empty() && !(only && row.cgroup_id == *only) && row.cgroup != only_path) continue;
        control::UsageEntry e;
        e.cgroup = row.cgroup;
        e.cgroup_id = row.cgroup_id;
        e.route = row.route;
        e.attached = sandboxes_->find(row.cgroup_id) != nullptr;
        e.requests = row.counters.requests;
        e.input_tokens = row.counters.input_tokens;
        e.output_tokens = row.counters.output_tokens;
        e.requests_without_usage = row.counters.requests_without_usage;
        for (auto& [status, n] : row.counters.errors) e.errors.push_back({static_cast<uint64_t>(status), n});
        e.last_request_ms = static_cast<uint64_t>(std::max<int64_t>(row.counters.last_request_ms, 0));
        r.usage.push_back(std::move(e));
    }
    return r;
}

}  // namespace redir::agent
