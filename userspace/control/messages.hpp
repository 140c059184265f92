#pragma once
// Every request and reply of the control API (INTERFACE.md; additions in
// docs/interface-extensions.md), each listing its JSON fields once, in wire
// order. A request names its command (kName) and its reply type (Reply).
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "control/fields.hpp"

namespace redir::control {

// Bases of the requests that carry nothing, or only a name.
struct NoFields {
    template <class S, class F> static void fields(S&, F&) {}
};
struct Named {
    std::string name;
    template <class S, class F> static void fields(S& s, F& f) { f("name", s.name); }
};

// ---- replies shared by several commands -------------------------------------

// {"ok":false,...}: a refused request or a command that failed.
struct ErrorReply {
    std::string error;                                // one sentence
    std::optional<std::vector<std::string>> errors;  // every located error of a rejected policy
    std::string code;                                 // ErrorCode name when the request itself was refused
    std::string field;                                // the field at fault, when one is
    template <class S, class F> static void fields(S& s, F& f) {
        f("error", s.error);
        f("errors", s.errors);
        f("code", s.code, Need::optional);
        f("field", s.field, Need::optional);
    }
};

struct ProviderView {  // credentials masked by the agent
    std::string name, type, base_url, ca_file;
    std::map<std::string, std::string> credentials;
    template <class S, class F> static void fields(S& s, F& f) {
        f("name", s.name);
        f("type", s.type);
        f("base_url", s.base_url);
        f("ca_file", s.ca_file);
        f("credentials", s.credentials);
    }
};

struct ProviderReply {
    ProviderView provider;
    template <class S, class F> static void fields(S& s, F& f) { f("provider", s.provider); }
};

// One inference route (provider + model) a policy's "inference.route" names.
struct InferenceView {
    std::string route, provider, model;
    uint64_t version = 0;
    template <class S, class F> static void fields(S& s, F& f) {
        f("route", s.route);
        f("provider", s.provider);
        f("model", s.model);
        f("version", s.version);
    }
};

struct InferenceReply {
    InferenceView inference;
    template <class S, class F> static void fields(S& s, F& f) { f("inference", s.inference); }
};

// ---- status -------------------------------------------------------------------

struct AgentInfo {
    uint64_t pid = 0;
    std::string state_dir, run_dir, bpffs, inference_vip;
    uint64_t relay_port = 0, terminator_port = 0, plain_http_port = 0;
    std::string dns_upstream;
    bool packet_socket_refusal = false;
    std::string lsm_cgroup;
    uint64_t uptime_s = 0;
    template <class S, class F> static void fields(S& s, F& f) {
        f("pid", s.pid);
        f("state_dir", s.state_dir);
        f("run_dir", s.run_dir);
        f("bpffs", s.bpffs);
        f("inference_vip", s.inference_vip);
        f("relay_port", s.relay_port);
        f("terminator_port", s.terminator_port);
        f("plain_http_port", s.plain_http_port);
        f("dns_upstream", s.dns_upstream);
        f("packet_socket_refusal", s.packet_socket_refusal);
        f("lsm_cgroup", s.lsm_cgroup);
        f("uptime_s", s.uptime_s);
    }
};

// One kernel feature check (also `redirctl doctor --json`, one per line).
struct KernelCheck {
    std::string name;
    bool ok = false;
    bool required = true;
    std::string detail;
    template <class S, class F> static void fields(S& s, F& f) {
        f("name", s.name);
        f("ok", s.ok);
        f("required", s.required);
        f("detail", s.detail);
    }
};

// A process of a sandbox holding capabilities able to undo its enforcement.
struct CapableProcess {
    uint64_t pid = 0;
    std::string comm;
    std::vector<std::string> caps;
    template <class S, class F> static void fields(S& s, F& f) {
        f("pid", s.pid);
        f("comm", s.comm);
        f("caps", s.caps);
    }
};

// The node-side guard of a sandbox in its own network namespace, as the
// kernel has it (absent: the sandbox shares the agent's namespace).
struct GuardStatus {
    std::string interface;  // empty: the interface is gone
    uint64_t ifindex = 0;
    std::string hook;       // "tcx", or "tc" (clsact, kernels before 6.6)
    bool active = false;
    std::string problem;    // why not active
    template <class S, class F> static void fields(S& s, F& f) {
        f("interface", s.interface);
        f("ifindex", s.ifindex);
        f("hook", s.hook);
        f("active", s.active, Need::required);
        f("problem", s.problem);
    }
};

struct AttachmentStatus {
    std::string cgroup;
    uint64_t cgroup_id = 0;
    std::string policy;
    uint64_t policy_id = 0, programs = 0, dns_port = 0;
    std::vector<CapableProcess> capable;
    std::optional<std::vector<std::string>> host_rules;     // absent when the policy is not loaded
    std::optional<std::vector<std::string>> pending_hosts;  // likewise
    std::optional<GuardStatus> guard;
    template <class S, class F> static void fields(S& s, F& f) {
        f("cgroup", s.cgroup);
        f("cgroup_id", s.cgroup_id);
        f("policy", s.policy);
        f("policy_id", s.policy_id);
        f("programs", s.programs);
        f("dns_port", s.dns_port);
        f("capable", s.capable);
        f("host_rules", s.host_rules);
        f("pending_hosts", s.pending_hosts);
        f("guard", s.guard);
    }
};

struct Counters {
    uint64_t allow = 0, deny = 0, redirect = 0, socket_deny = 0, sockopt_deny = 0, events_dropped = 0,
             audit_records = 0;
    template <class S, class F> static void fields(S& s, F& f) {
        f("allow", s.allow);
        f("deny", s.deny);
        f("redirect", s.redirect);
        f("socket_deny", s.socket_deny);
        f("sockopt_deny", s.sockopt_deny);
        f("events_dropped", s.events_dropped);
        f("audit_records", s.audit_records);
    }
};

struct StatusReply {
    AgentInfo agent;
    std::vector<KernelCheck> kernel;
    std::vector<AttachmentStatus> attachments;
    std::vector<uint64_t> orphans;  // cgroup ids of pinned links with no recorded attachment
    Counters counters;
    template <class S, class F> static void fields(S& s, F& f) {
        f("agent", s.agent);
        f("kernel", s.kernel);
        f("attachments", s.attachments);
        f("orphans", s.orphans);
        f("counters", s.counters);
    }
};

struct StatusRequest : NoFields {
    static constexpr std::string_view kName = "status";
    using Reply = StatusReply;
};

// ---- attach / detach ----------------------------------------------------------

struct AttachReply {
    std::string cgroup;
    uint64_t cgroup_id = 0;
    std::string policy;
    std::vector<std::string> warnings;
    // A sandbox in its own network namespace: where its redirects land.
    std::optional<std::string> redirect_via, redirect_device;
    template <class S, class F> static void fields(S& s, F& f) {
        f("cgroup", s.cgroup);
        f("cgroup_id", s.cgroup_id);
        f("policy", s.policy);
        f("warnings", s.warnings);
        f("redirect_via", s.redirect_via);
        f("redirect_device", s.redirect_device);
    }
};

// Either a loaded policy's name or a policy file's text (loaded under its own name first).
struct AttachRequest {
    static constexpr std::string_view kName = "attach";
    using Reply = AttachReply;
    std::string cgroup;
    std::string policy_name;
    std::string policy_text;
    std::string source_name;  // the file's name, for located errors
    // `run --netns`: the sandbox's network namespace (a path the agent opens)
    // and the address its redirects go to (the agent's end of the veth).
    std::optional<std::string> netns, redirect_via;
    template <class S, class F> static void fields(S& s, F& f) {
        f("cgroup", s.cgroup);
        f("netns", s.netns);
        f("redirect_via", s.redirect_via);
        f("policy_name", s.policy_name, Need::optional);
        f("policy_text", s.policy_text, Need::optional);
        f("source_name", s.source_name, Need::optional);
    }
};

struct DetachReply {
    std::string cgroup;
    template <class S, class F> static void fields(S& s, F& f) { f("cgroup", s.cgroup); }
};

struct DetachRequest {
    static constexpr std::string_view kName = "detach";
    using Reply = DetachReply;
    std::string cgroup;
    template <class S, class F> static void fields(S& s, F& f) { f("cgroup", s.cgroup); }
};

// ---- policies -----------------------------------------------------------------

struct PolicyLoadReply {
    std::string policy;
    uint64_t policy_id = 0, attachments = 0, lpm_entries = 0, portsets = 0;
    std::vector<std::string> host_rules;
    // Established connections (absent with keep_established): why they were
    // not examined, how many the new policy refuses were reset, how many it allows.
    std::string revocation_unsupported;
    std::optional<uint64_t> revoked, kept;
    template <class S, class F> static void fields(S& s, F& f) {
        f("policy", s.policy);
        f("policy_id", s.policy_id);
        f("attachments", s.attachments);
        f("lpm_entries", s.lpm_entries);
        f("portsets", s.portsets);
        f("host_rules", s.host_rules);
        f("revocation_unsupported", s.revocation_unsupported, Need::optional);
        f("revoked", s.revoked);
        f("kept", s.kept);
    }
};

struct PolicyLoadRequest {
    static constexpr std::string_view kName = "policy.load";
    using Reply = PolicyLoadReply;
    std::string policy_text;
    std::string source_name;  // default "policy.json"
    std::string name;               // overrides the file's "name"
    bool keep_established = false;  // true: connections the new policy refuses stay open
    template <class S, class F> static void fields(S& s, F& f) {
        f("policy_text", s.policy_text);
        f("source_name", s.source_name, Need::optional);
        f("name", s.name, Need::optional);
        f("keep_established", s.keep_established, Need::optional);
    }
};

struct PolicyShowReply {
    std::string policy;
    uint64_t policy_id = 0;
    RawJson normalized;
    template <class S, class F> static void fields(S& s, F& f) {
        f("policy", s.policy);
        f("policy_id", s.policy_id);
        f("normalized", s.normalized);
    }
};

struct PolicyShowRequest : Named {
    static constexpr std::string_view kName = "policy.show";
    using Reply = PolicyShowReply;
};

struct PolicySummary {
    std::string name;
    uint64_t policy_id = 0, attachments = 0;
    template <class S, class F> static void fields(S& s, F& f) {
        f("name", s.name);
        f("policy_id", s.policy_id);
        f("attachments", s.attachments);
    }
};

struct PolicyListReply {
    std::vector<PolicySummary> policies;
    template <class S, class F> static void fields(S& s, F& f) { f("policies", s.policies); }
};

struct PolicyListRequest : NoFields {
    static constexpr std::string_view kName = "policy.list";
    using Reply = PolicyListReply;
};

struct PolicyDeleteReply {
    std::string policy;
    template <class S, class F> static void fields(S& s, F& f) { f("policy", s.policy); }
};

struct PolicyDeleteRequest : Named {
    static constexpr std::string_view kName = "policy.delete";
    using Reply = PolicyDeleteReply;
};

// ---- events -------------------------------------------------------------------

// With follow, each later audit record follows as one more line on the connection.
struct EventsReply {
    std::vector<RawJson> events;
    template <class S, class F> static void fields(S& s, F& f) { f("events", s.events); }
};

struct EventsRequest {
    static constexpr std::string_view kName = "events";
    using Reply = EventsReply;
    uint64_t count = 100;
    bool follow = false;
    template <class S, class F> static void fields(S& s, F& f) {
        f("count", s.count, Need::optional);
        f("follow", s.follow, Need::optional);
    }
};

// ---- providers ----------------------------------------------------------------

struct ProviderCreateRequest {
    static constexpr std::string_view kName = "provider.create";
    using Reply = ProviderReply;
    std::string name, type, base_url, ca_file;
    std::map<std::string, std::string> credentials;
    template <class S, class F> static void fields(S& s, F& f) {
        f("name", s.name);
        f("type", s.type);
        f("base_url", s.base_url, Need::optional);
        f("ca_file", s.ca_file, Need::optional);
        f("credentials", s.credentials, Need::optional);
    }
};

struct ProviderGetRequest : Named {
    static constexpr std::string_view kName = "provider.get";
    using Reply = ProviderReply;
};

struct ProviderListReply {
    std::vector<ProviderView> providers;
    template <class S, class F> static void fields(S& s, F& f) { f("providers", s.providers); }
};

struct ProviderListRequest : NoFields {
    static constexpr std::string_view kName = "provider.list";
    using Reply = ProviderListReply;
};

// Changes only what is given.
struct ProviderUpdateRequest {
    static constexpr std::string_view kName = "provider.update";
    using Reply = ProviderReply;
    std::string name;
    std::optional<std::string> base_url, ca_file;
    std::map<std::string, std::string> credentials;  // merged: the same key replaces
    std::vector<std::string> remove_credentials;
    template <class S, class F> static void fields(S& s, F& f) {
        f("name", s.name);
        f("base_url", s.base_url);
        f("ca_file", s.ca_file);
        f("credentials", s.credentials, Need::optional);
        f("remove_credentials", s.remove_credentials, Need::optional);
    }
};

struct ProviderDeleteReply {
    std::string provider;
    template <class S, class F> static void fields(S& s, F& f) { f("provider", s.provider); }
};

struct ProviderDeleteRequest : Named {
    static constexpr std::string_view kName = "provider.delete";
    using Reply = ProviderDeleteReply;
};

// ---- inference ----------------------------------------------------------------

// "route" absent or empty: the route named "default".
struct InferenceSetRequest {
    static constexpr std::string_view kName = "inference.set";
    using Reply = InferenceReply;
    std::string route, provider, model;
    template <class S, class F> static void fields(S& s, F& f) {
        f("route", s.route, Need::optional);
        f("provider", s.provider);
        f("model", s.model);
    }
};

struct InferenceGetRequest {
    static constexpr std::string_view kName = "inference.get";
    using Reply = InferenceReply;
    std::string route;
    template <class S, class F> static void fields(S& s, F& f) { f("route", s.route, Need::optional); }
};

struct InferenceUpdateRequest {
    static constexpr std::string_view kName = "inference.update";
    using Reply = InferenceReply;
    std::string route;
    std::optional<std::string> provider, model;
    template <class S, class F> static void fields(S& s, F& f) {
        f("route", s.route, Need::optional);
        f("provider", s.provider);
        f("model", s.model);
    }
};

// A route and who uses it ("policy P (sandboxes /a, /b)"): deleting it is refused while any.
struct InferenceRouteUse {
    InferenceView route;  // its fields, flat beside "users"
    std::vector<std::string> users;
    template <class S, class F> static void fields(S& s, F& f) {
        InferenceView::fields(s.route, f);
        f("users", s.users);
    }
};

struct InferenceListReply {
    std::vector<InferenceRouteUse> routes;  // by name
    template <class S, class F> static void fields(S& s, F& f) { f("routes", s.routes); }
};

struct InferenceListRequest : NoFields {
    static constexpr std::string_view kName = "inference.list";
    using Reply = InferenceListReply;
};

// Refused while a loaded policy names the route; the reply is the route deleted.
struct InferenceDeleteRequest {
    static constexpr std::string_view kName = "inference.delete";
    using Reply = InferenceReply;
    std::string route;
    template <class S, class F> static void fields(S& s, F& f) { f("route", s.route); }
};

// ---- usage --------------------------------------------------------------------

struct UsageErrors {
    uint64_t status = 0, requests = 0;
    template <class S, class F> static void fields(S& s, F& f) {
        f("status", s.status);
        f("requests", s.requests);
    }
};

// Inference usage of one sandbox (attached cgroup) on one route.
struct UsageEntry {
    std::string cgroup;  // path as last known; "" if unknown
    uint64_t cgroup_id = 0;
    std::string route;
    bool attached = false;  // attached now
    uint64_t requests = 0, input_tokens = 0, output_tokens = 0;
    uint64_t requests_without_usage = 0;  // answers that carried no usage: tokens unknown
    std::vector<UsageErrors> errors;      // by HTTP status (>= 400)
    uint64_t last_request_ms = 0;         // wall clock, ms since the epoch; 0: never
    template <class S, class F> static void fields(S& s, F& f) {
        f("cgroup", s.cgroup);
        f("cgroup_id", s.cgroup_id);
        f("route", s.route);
        f("attached", s.attached);
        f("requests", s.requests);
        f("input_tokens", s.input_tokens);
        f("output_tokens", s.output_tokens);
        f("requests_without_usage", s.requests_without_usage);
        f("errors", s.errors);
        f("last_request_ms", s.last_request_ms);
    }
};

struct UsageReply {
    std::vector<UsageEntry> usage;
    template <class S, class F> static void fields(S& s, F& f) { f("usage", s.usage); }
};

// Every sandbox the ledger knows, or only CGROUP (a path).
struct UsageRequest {
    static constexpr std::string_view kName = "usage";
    using Reply = UsageReply;
    std::string cgroup;
    template <class S, class F> static void fields(S& s, F& f) { f("cgroup", s.cgroup, Need::optional); }
};

// ---- ca -----------------------------------------------------------------------

struct CaExportReply {
    std::string pem;
    template <class S, class F> static void fields(S& s, F& f) { f("pem", s.pem); }
};

struct CaExportRequest : NoFields {
    static constexpr std::string_view kName = "ca.export";
    using Reply = CaExportReply;
};

}  // namespace redir::control
