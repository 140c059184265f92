// redirctl: the command line client of redird's control API.

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <cstring>
#include <ctime>
#include <map>
#include <rapidjson/document.h>
#include <string>
#include <vector>

#include "policy/engine.hpp"
#include "common/atomic_file.hpp"
#include "common/error.hpp"
#include "common/json_out.hpp"
#include "common/fd.hpp"
#include "loader/cgroup.hpp"
#include "loader/features.hpp"
#include "client.hpp"
#include "run.hpp"
#include "run_seccomp.hpp"

namespace {

namespace control = redir::control;
using redir::ctl::Client;
using redir::ctl::Failure;
using redir::ctl::Refused;

// The status lines saying which socket kinds attached sandboxes are refused
// on this kernel, and why not where they are not (from the kernel checks).
void print_socket_families(const control::StatusReply& status) {
    for (auto& k : status.kernel) {
        if (k.name != "socket_inet" && k.name != "socket_other_families") continue;
        std::cout << (k.ok ? "sockets: " : "sockets (limited): ") << k.detail << "\n";
    }
}

// The status lines for an attachment's processes that hold capabilities
// able to undo its enforcement.
void print_capable(const control::AttachmentStatus& at) {
    for (auto& p : at.capable) {
        std::string caps;
        for (auto& c : p.caps) caps += (caps.empty() ? "" : ",") + c;
        std::cout << "    WARNING: pid " << p.pid << " (" << p.comm << ") holds " << caps
                  << " in the host user namespace: it can undo this sandbox's enforcement\n";
    }
}

// The status line of an attachment's node-side guard; loud when the kernel
// no longer runs it (packets that bypass the socket hooks then go unjudged).
void print_guard(const control::AttachmentStatus& at) {
    if (!at.guard) return;
    auto& g = *at.guard;
    std::string where = (g.interface.empty() ? "interface" : g.interface) + " (ifindex " + std::to_string(g.ifindex) + ")";
    if (g.active)
        std::cout << "    guard: active on " << where << ", " << g.hook << "\n";
    else
        std::cout << "    guard: NOT ACTIVE on " << where << ": " << g.problem
                  << "; packets from this sandbox's link are not judged: detach and attach it again\n";
}

void print_status(const control::StatusReply& d) {
    auto& a = d.agent;
    std::cout << "agent: pid " << a.pid << ", up " << a.uptime_s << "s, state " << a.state_dir << ", bpffs "
              << a.bpffs << "\n";
    std::cout << "attachments:\n";
    if (d.attachments.empty()) std::cout << "  (none)\n";
    for (auto& at : d.attachments) {
        std::cout << "  " << at.cgroup << "  policy " << at.policy << " (id " << at.policy_id << "), " << at.programs
                  << " programs";
        if (at.host_rules && !at.host_rules->empty())
            std::cout << ", " << at.host_rules->size() << " host rules (DNS port " << at.dns_port << ")";
        std::cout << "\n";
        print_guard(at);
        print_capable(at);
    }
    print_socket_families(d);
    auto& c = d.counters;
    std::cout << "counters: allow " << c.allow << ", deny " << c.deny << ", redirect " << c.redirect
              << ", socket denied " << c.socket_deny << ", setsockopt denied " << c.sockopt_deny
              << ", events dropped " << c.events_dropped << "\n";
}

void print_provider(const control::ProviderView& p, bool json) {
    if (json) {
        std::cout << control::encode_object(p) << "\n";
        return;
    }
    std::cout << p.name << "\ttype " << p.type << "\tbase-url " << p.base_url;
    if (!p.ca_file.empty()) std::cout << "\tca-file " << p.ca_file;
    for (auto& [k, v] : p.credentials) std::cout << "\t" << k << "=" << v;
    std::cout << "\n";
}

// A list: one JSON array with --json, else LINE for each item.
template <class T, class Line>
void print_list(const std::vector<T>& items, bool json, Line line) {
    if (json)
        std::cout << control::encode_array(items) << "\n";
    else
        for (auto& i : items) line(i);
}

void print_route(const control::InferenceView& i) {
    std::cout << "route " << i.route << "\tprovider " << i.provider << "\tmodel " << i.model << "\tversion " << i.version
              << "\n";
}

void print_inference(const control::InferenceReply& r, bool json) {
    if (json)
        std::cout << control::encode_object(r.inference) << "\n";
    else
        print_route(r.inference);
}

// `usage`, one line per sandbox and route.
void print_usage_entry(const control::UsageEntry& e) {
    std::cout << (e.cgroup.empty() ? "cgroup id " + std::to_string(e.cgroup_id) : e.cgroup)
              << (e.attached ? "" : " (detached)") << "\troute " << e.route << "\trequests " << e.requests
              << "\tinput_tokens " << e.input_tokens << "\toutput_tokens " << e.output_tokens;
    if (e.requests_without_usage) std::cout << "\twithout_usage " << e.requests_without_usage;
    if (!e.errors.empty()) {
        std::cout << "\terrors ";
        for (std::size_t i = 0; i < e.errors.size(); ++i)
            std::cout << (i ? "," : "") << e.errors[i].status << ":" << e.errors[i].requests;
    }
    if (e.last_request_ms) {
        std::time_t t = static_cast<std::time_t>(e.last_request_ms / 1000);
        char when[32];
        std::tm tm{};
        ::gmtime_r(&t, &tm);
        std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
        std::cout << "\tlast " << when;
    }
    std::cout << "\n";
}

std::string usual_env(const std::string& type) {
    if (type == "openai" || type == "openai-compatible") return "OPENAI_API_KEY";
    if (type == "anthropic") return "ANTHROPIC_API_KEY";
    if (type == "nvidia") return "NVIDIA_API_KEY";
    return "";
}

// The credentials of `provider create/update`: --from-existing (the usual
// variable of provider TYPE) and every --credential KEY=VALUE.
std::map<std::string, std::string> credentials_from(bool from_existing, const std::string& type,
                                                    const std::vector<std::string>& given) {
    std::map<std::string, std::string> out;
    if (from_existing) {
        std::string var = usual_env(type);
        if (var.empty()) throw Failure{"--from-existing has no usual variable for provider type " + type};
        const char* v = std::getenv(var.c_str());
        if (!v || !*v) throw Failure{"--from-existing: " + var + " is not set in this environment"};
        out[var] = v;
    }
    for (auto& c : given) {
        auto eq = c.find('=');
        if (eq == std::string::npos || eq == 0)
            throw Failure{"--credential " + c.substr(0, c.find('=')) + " must be KEY=VALUE"};
        out[c.substr(0, eq)] = c.substr(eq + 1);
    }
    return out;
}

// `events`: the recent records, then (with follow) every new one as it comes.
int print_events(Client& client, const control::EventsRequest& req) {
    client.connect();
    client.send(control::encode_request(req));
    auto first = client.read_line();
    if (!first) throw Failure{"redird closed the connection without answering"};
    auto a = Client::decode<control::EventsReply>(*first);
    if (!a) return redir::ctl::report_error(a.error);
    for (auto& e : a->events) std::cout << e.text << "\n";
    std::cout.flush();
    while (req.follow) {
        auto l = client.read_line();
        if (!l) break;
        std::cout << *l << std::endl;
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"redirctl: control the redir node agent (redird)."};
    app.require_subcommand(1);
    std::string socket_path = std::getenv("REDIR_SOCKET") ? std::getenv("REDIR_SOCKET") : "/run/redir/redird.sock";
    app.add_option("--socket", socket_path, "redird control socket (env REDIR_SOCKET)")->capture_default_str();
    bool json = false;

    // attach / detach
    std::string cgroup, policy_arg;
    auto* attach = app.add_subcommand("attach", "enforce a policy on a cgroup v2 (and its descendants)");
    attach->add_option("--cgroup", cgroup, "cgroup v2 directory")->required();
    attach->add_option("--policy", policy_arg, "name of a loaded policy, or a policy FILE")->required();
    std::string netns_path;
    std::vector<std::string> redirect_via;
    auto* netns_opt = attach->add_option("--netns", netns_path,
                                         "the sandbox's own network namespace (/proc/PID/ns/net, /run/netns/NAME): "
                                         "redirects land on redird's address on its side");
    attach->add_option("--redirect-via", redirect_via,
                       "that address (IP, or IP%IFNAME when several interfaces hold it; once per IP version, or "
                       "IPv4,IPv6); default: the namespace's default-route gateways (IPv4 and IPv6)")
        ->needs(netns_opt)
        ->delimiter(',');
    auto* detach = app.add_subcommand("detach", "stop enforcing on a cgroup");
    detach->add_option("--cgroup", cgroup, "cgroup v2 directory")->required();

    auto* status = app.add_subcommand("status", "agent, kernel features, attachments, counters");
    status->add_flag("--json", json, "machine-readable output");

    auto* doctor = app.add_subcommand("doctor", "what this kernel/host supports, and what is missing");
    doctor->add_flag("--json", json, "machine-readable output");

    // policy
    auto* policy = app.add_subcommand("policy", "validate, load, show, list and delete policies");
    policy->require_subcommand(1);
    std::string file, name;
    auto* p_validate = policy->add_subcommand("validate", "check a policy file offline (needs no agent)");
    p_validate->add_option("FILE", file, "policy file")->required();
    auto* p_load = policy->add_subcommand("load", "load a policy; atomically replaces it wherever it is attached");
    p_load->add_option("FILE", file, "policy file")->required();
    p_load->add_option("--name", name, "load under this name instead of the file's \"name\"");
    bool keep_established = false;
    p_load->add_flag("--keep-established", keep_established,
                     "leave established connections alone (default: reset those the new policy no longer allows)");
    p_load->add_flag("--json", json, "machine-readable output");
    auto* p_show = policy->add_subcommand("show", "print a loaded policy, normalised");
    p_show->add_option("NAME", name, "policy name")->required();
    auto* p_list = policy->add_subcommand("list", "list loaded policies");
    p_list->add_flag("--json", json, "machine-readable output");
    auto* p_delete = policy->add_subcommand("delete", "delete a policy (refused while attached)");
    p_delete->add_option("NAME", name, "policy name")->required();

    // events
    bool follow = false;
    size_t count = 100;
    auto* events = app.add_subcommand("events", "audit events (denials, redirects)");
    events->add_flag("--follow,-f", follow, "keep printing new events");
    events->add_option("--count,-n", count, "how many recent events")->capture_default_str();
    events->add_flag("--json", json, "one JSON object per line (the default format too)");

    // provider
    auto* provider = app.add_subcommand("provider", "manage inference providers (credentials never printed back)");
    provider->require_subcommand(1);
    std::string pv_name, pv_type, pv_base, pv_ca;
    std::vector<std::string> pv_creds, pv_remove;
    bool pv_from_existing = false;
    auto* pv_create = provider->add_subcommand("create", "add a provider");
    pv_create->add_option("--name", pv_name, "provider name")->required();
    pv_create->add_option("--type", pv_type, "openai|anthropic|nvidia|openai-compatible|mock")->required();
    pv_create->add_option("--base-url", pv_base, "API base URL (required for openai-compatible)");
    pv_create->add_option("--ca-file", pv_ca, "extra PEM trust anchors for the provider's TLS");
    auto* fe = pv_create->add_flag("--from-existing", pv_from_existing,
                                   "take the key from OPENAI_API_KEY / ANTHROPIC_API_KEY / NVIDIA_API_KEY");
    pv_create->add_option("--credential", pv_creds, "KEY=VALUE (repeatable)")->excludes(fe);
    pv_create->add_flag("--json", json, "machine-readable output");
    auto* pv_get = provider->add_subcommand("get", "show a provider (credentials masked)");
    pv_get->add_option("NAME", pv_name, "provider name")->required();
    pv_get->add_flag("--json", json, "machine-readable output");
    auto* pv_list = provider->add_subcommand("list", "list providers");
    pv_list->add_flag("--json", json, "machine-readable output");
    auto* pv_update = provider->add_subcommand("update", "change only what is given");
    pv_update->add_option("NAME", pv_name, "provider name")->required();
    pv_update->add_option("--base-url", pv_base, "API base URL");
    pv_update->add_option("--ca-file", pv_ca, "extra PEM trust anchors");
    auto* fe2 = pv_update->add_flag("--from-existing", pv_from_existing, "take the key from the usual variable");
    pv_update->add_option("--credential", pv_creds, "KEY=VALUE (repeatable; replaces that key)")->excludes(fe2);
    pv_update->add_option("--remove-credential", pv_remove, "KEY to remove (repeatable)");
    auto* pv_delete = provider->add_subcommand("delete", "delete a provider (refused while referenced)");
    pv_delete->add_option("NAME", pv_name, "provider name")->required();

    // inference
    auto* inference = app.add_subcommand("inference", "which provider and model serve https://inference.local");
    inference->require_subcommand(1);
    std::string inf_provider, inf_model, inf_route;
    const char* route_help = "inference route (what a policy's \"inference\": {\"route\"} names; default \"default\")";
    auto* inf_set = inference->add_subcommand("set", "set a route's provider and model");
    inf_set->add_option("--route", inf_route, route_help);
    inf_set->add_option("--provider", inf_provider, "provider name")->required();
    inf_set->add_option("--model", inf_model, "model the provider is asked for")->required();
    auto* inf_get = inference->add_subcommand("get", "show a route's provider, model and version");
    inf_get->add_option("--route", inf_route, route_help);
    inf_get->add_flag("--json", json, "machine-readable output");
    auto* inf_update = inference->add_subcommand("update", "change only what is given");
    inf_update->add_option("--route", inf_route, route_help);
    inf_update->add_option("--provider", inf_provider, "provider name");
    inf_update->add_option("--model", inf_model, "model");
    auto* inf_list = inference->add_subcommand("list", "every route, with the policies and sandboxes using it");
    inf_list->add_flag("--json", json, "machine-readable output");
    auto* inf_delete = inference->add_subcommand("delete", "delete a route (refused while a policy names it)");
    inf_delete->add_option("--route", inf_route, "route name")->required();

    // usage
    std::string usage_cgroup;
    auto* usage = app.add_subcommand(
        "usage", "inference requests and tokens per sandbox and route (tokens as the provider reported them)");
    usage->add_option("--cgroup", usage_cgroup, "only this sandbox (cgroup path)");
    usage->add_flag("--json", json, "machine-readable output");

    // ca
    auto* ca = app.add_subcommand("ca", "the node's local CA (what sandboxes trust for inference.local)");
    ca->require_subcommand(1);
    std::string ca_out;
    auto* ca_export = ca->add_subcommand("export", "print the CA certificate (PEM)");
    ca_export->add_option("--out", ca_out, "write to FILE instead of stdout");

    // run
    redir::ctl::RunOptions run_opts;
    auto* run = app.add_subcommand(
        "run",
        "run CMD in a transient sandbox cgroup with what tools need for inference.local. CMD starts inside the "
        "sandbox (clone3 into the cgroup), as an unprivileged user with no capability and no_new_privs, in "
        "private cgroup and pid namespaces (its own /proc); when it exits, or run gets SIGTERM/SIGHUP (passed on, then SIGKILL to all "
        "after 3 s), every process left in the sandbox is killed before it is detached and removed. Exit code: "
        "CMD's (128+signal when killed); 125 when run could not start it, 126/127 when it cannot be executed.");
    run->add_option("--policy", run_opts.policy, "policy NAME or FILE (default: inference only, everything else denied)");
    run->add_option("--user", run_opts.user,
                    "USER[:GROUP] to run CMD as (default: the sudo caller from SUDO_UID/SUDO_GID, else nobody; "
                    "no supplementary groups). \"root\" is root of a private user namespace, mapped to the "
                    "default user outside");
    run->add_flag("--netns", run_opts.netns,
                  "CMD gets its own network namespace, joined to this one by a veth pair; allowed egress is "
                  "forwarded and masqueraded; all of it is removed when run ends");
    run->add_option("--netns-pool", run_opts.netns_pool,
                    "IPv4 prefix the --netns subnets (/30 each) come from (default: $REDIR_NETNS_POOL, else 10.250.0.0/16)");
    run->add_option("--netns-pool6", run_opts.netns_pool6,
                    "IPv6 prefix (/48../63) the --netns /64s come from, numbered like the IPv4 subnet, or \"none\" "
                    "for no IPv6 (default: $REDIR_NETNS_POOL6, else fd72:6564:6972::/48)");
    run->add_option("CMD", run_opts.command, "command and arguments (after --)")->required();
    run->prefix_command(false);

    CLI11_PARSE(app, argc, argv);

    try {
        Client client(socket_path);
        if (*doctor) {
            auto checks = redir::loader::check_kernel_features("/sys/fs/bpf/redir");
            checks.push_back(redir::ctl::run_sandbox_check());
            int rc = 0;
            for (auto& c : checks) {
                if (json)
                    std::cout << control::encode_object(control::KernelCheck{c.name, c.ok, c.required, c.detail})
                              << "\n";
                else
                    std::cout << (c.ok ? "ok      " : (c.required ? "MISSING " : "limited ")) << c.name << ": "
                              << c.detail << "\n";
                if (c.required && !c.ok) rc = 1;
            }
            return rc;
        }
        if (*p_validate) {
            std::string text = redir::ctl::read_policy_file(file);
            auto errs = redir::policy::validate_policy_text(text, file);
            for (auto& e : errs) std::cerr << e << "\n";
            if (errs.empty()) std::cout << file << ": valid\n";
            return errs.empty() ? 0 : 1;
        }
        if (*attach) {
            auto req = redir::ctl::attach_request(cgroup, policy_arg);
            if (!netns_path.empty()) req.netns = netns_path;
            // One field on the wire: "IP[%IF][,IP[%IF]]".
            for (auto& v : redirect_via) req.redirect_via = req.redirect_via ? *req.redirect_via + "," + v : v;
            auto r = client.expect(req);
            std::cout << "attached " << r.cgroup << " (cgroup id " << r.cgroup_id << ") with policy " << r.policy;
            if (r.redirect_via) std::cout << ", redirected via " << *r.redirect_via << " (" << r.redirect_device.value_or("") << ")";
            std::cout << "\n";
            for (auto& w : r.warnings) std::cerr << "redirctl: warning: " << w << "\n";
            return 0;
        }
        if (*detach) {
            std::cout << "detached " << client.expect(control::DetachRequest{cgroup}).cgroup << "\n";
            return 0;
        }
        if (*status) {
            auto r = client.expect(control::StatusRequest{});
            if (json)
                std::cout << control::encode_reply(r) << "\n";
            else
                print_status(r);
            return 0;
        }
        if (*p_load) {
            auto r = client.expect(
                control::PolicyLoadRequest{redir::ctl::read_policy_file(file), file, name, keep_established});
            if (json) {
                std::cout << control::encode_reply(r) << "\n";
                return 0;
            }
            std::cout << "loaded policy " << r.policy << " (id " << r.policy_id << "), in force on " << r.attachments
                      << " attachment(s)";
            if (r.revoked) std::cout << "; " << *r.revoked << " connection(s) it no longer allows reset";
            if (!r.revocation_unsupported.empty())
                std::cout << "; established connections NOT examined: " << r.revocation_unsupported;
            std::cout << "\n";
            return 0;
        }
        if (*p_show) {
            rapidjson::Document d;
            d.Parse(client.expect(control::PolicyShowRequest{name}).normalized.text.c_str());
            std::cout << redir::PrettyJsonOut().value(d).take() << "\n";
            return 0;
        }
        if (*p_list) {
            print_list(client.expect(control::PolicyListRequest{}).policies, json, [](const control::PolicySummary& p) {
                std::cout << p.name << "\tid " << p.policy_id << "\tattached " << p.attachments << "\n";
            });
            return 0;
        }
        if (*p_delete) {
            client.expect(control::PolicyDeleteRequest{name});
            std::cout << "deleted policy " << name << "\n";
            return 0;
        }
        if (*pv_create) {
            auto creds = credentials_from(pv_from_existing, pv_type, pv_creds);
            auto r = client.expect(control::ProviderCreateRequest{pv_name, pv_type, pv_base, pv_ca, creds});
            print_provider(r.provider, json);
            return 0;
        }
        if (*pv_get) {
            print_provider(client.expect(control::ProviderGetRequest{pv_name}).provider, json);
            return 0;
        }
        if (*pv_list) {
            print_list(client.expect(control::ProviderListRequest{}).providers, json,
                       [](const control::ProviderView& p) { print_provider(p, false); });
            return 0;
        }
        if (*pv_update) {
            control::ProviderUpdateRequest req;
            req.name = pv_name;
            // --from-existing takes the variable the provider's type uses.
            std::string type =
                pv_from_existing ? client.expect(control::ProviderGetRequest{pv_name}).provider.type : "";
            req.credentials = credentials_from(pv_from_existing, type, pv_creds);
            if (!pv_base.empty()) req.base_url = pv_base;
            if (!pv_ca.empty()) req.ca_file = pv_ca;
            req.remove_credentials = pv_remove;
            print_provider(client.expect(req).provider, json);
            return 0;
        }
        if (*pv_delete) {
            client.expect(control::ProviderDeleteRequest{pv_name});
            std::cout << "deleted provider " << pv_name << "\n";
            return 0;
        }
        if (*inf_set)
            print_inference(client.expect(control::InferenceSetRequest{inf_route, inf_provider, inf_model}), json);
        if (*inf_get) print_inference(client.expect(control::InferenceGetRequest{inf_route}), json);
        if (*inf_list) {
            auto routes = client.expect(control::InferenceListRequest{}).routes;
            print_list(routes, json, [](const control::InferenceRouteUse& r) {
                print_route(r.route);
                for (const auto& u : r.users) std::cout << "    used by " << u << "\n";
            });
        }
        if (*inf_delete) {
            client.expect(control::InferenceDeleteRequest{inf_route});
            std::cout << "deleted inference route " << inf_route << "\n";
        }
        if (*inf_update) {
            if (inf_provider.empty() && inf_model.empty()) throw Failure{"inference update needs --provider or --model"};
            control::InferenceUpdateRequest req;
            req.route = inf_route;
            if (!inf_provider.empty()) req.provider = inf_provider;
            if (!inf_model.empty()) req.model = inf_model;
            print_inference(client.expect(req), json);
        }
        if (*usage) {
            // The agent resolves the path in its own working directory.
            if (!usage_cgroup.empty()) usage_cgroup = std::filesystem::absolute(usage_cgroup).string();
            auto r = client.expect(control::UsageRequest{usage_cgroup});
            if (r.usage.empty() && !json) std::cout << "(no inference requests recorded)\n";
            print_list(r.usage, json, print_usage_entry);
            return 0;
        }
        if (*ca_export) {
            std::string pem = client.expect(control::CaExportRequest{}).pem;
            if (ca_out.empty())
                std::cout << pem;
            else
                redir::write_file_atomic(ca_out, pem, 0644);
            return 0;
        }
        if (*run) {
            run_opts.socket_path = socket_path;
            return redir::ctl::run_sandboxed(run_opts);
        }
        if (*events) return print_events(client, control::EventsRequest{count, follow});
    } catch (const Refused&) {
        return 1;
    } catch (const Failure& f) {
        std::cerr << "redirctl: " << f.message << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "redirctl: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
