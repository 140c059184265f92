// redirctl: the command line client of redird's control API.

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>
#include <cstring>
#include <rapidjson/document.h>
#include <rapidjson/prettywriter.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <string>

#include "agent/policy_engine.hpp"
#include "common/atomic_file.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "loader/cgroup.hpp"
#include "loader/features.hpp"
#include "client.hpp"
#include "run.hpp"
#include "run_seccomp.hpp"

namespace {

using redir::ctl::Client;
using redir::ctl::Failure;
using redir::ctl::json_escape;
using redir::ctl::report_error;

std::string pretty(const rapidjson::Value& v) {
    rapidjson::StringBuffer sb;
    rapidjson::PrettyWriter<rapidjson::StringBuffer> w(sb);
    v.Accept(w);
    return sb.GetString();
}

std::string compact(const rapidjson::Value& v) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    v.Accept(w);
    return sb.GetString();
}

// The status lines saying which socket kinds attached sandboxes are refused
// on this kernel, and why not where they are not (from the kernel checks).
void print_socket_families(const rapidjson::Value& status) {
    if (!status.HasMember("kernel") || !status["kernel"].IsArray()) return;
    for (auto& k : status["kernel"].GetArray()) {
        std::string name = k["name"].GetString();
        if (name != "socket_inet" && name != "socket_other_families") continue;
        std::cout << (k["ok"].GetBool() ? "sockets: " : "sockets (limited): ") << k["detail"].GetString() << "\n";
    }
}

// The status lines for an attachment's processes that hold capabilities
// able to undo its enforcement.
void print_capable(const rapidjson::Value& at) {
    if (!at.HasMember("capable") || !at["capable"].IsArray()) return;
    for (auto& p : at["capable"].GetArray()) {
        std::string caps;
        for (auto& c : p["caps"].GetArray()) caps += (caps.empty() ? "" : ",") + std::string(c.GetString());
        std::cout << "    WARNING: pid " << p["pid"].GetUint64() << " (" << p["comm"].GetString() << ") holds " << caps
                  << " in the host user namespace: it can undo this sandbox's enforcement\n";
    }
}

std::string read_policy_file(const std::string& path) {
    try {
        return redir::read_file(path);
    } catch (const std::exception& e) {
        throw Failure{std::string(e.what()) + "; check the path and permissions"};
    }
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
    std::string inf_provider, inf_model;
    auto* inf_set = inference->add_subcommand("set", "set provider and model");
    inf_set->add_option("--provider", inf_provider, "provider name")->required();
    inf_set->add_option("--model", inf_model, "model the provider is asked for")->required();
    auto* inf_get = inference->add_subcommand("get", "show provider, model and version");
    inf_get->add_flag("--json", json, "machine-readable output");
    auto* inf_update = inference->add_subcommand("update", "change only what is given");
    inf_update->add_option("--provider", inf_provider, "provider name");
    inf_update->add_option("--model", inf_model, "model");

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
                if (json) {
                    std::cout << "{\"name\":" << json_escape(c.name) << ",\"ok\":" << (c.ok ? "true" : "false")
                              << ",\"required\":" << (c.required ? "true" : "false")
                              << ",\"detail\":" << json_escape(c.detail) << "}\n";
                } else {
                    std::cout << (c.ok ? "ok      " : (c.required ? "MISSING " : "limited ")) << c.name << ": "
                              << c.detail << "\n";
                }
                if (c.required && !c.ok) rc = 1;
            }
            return rc;
        }
        if (*p_validate) {
            std::string text = read_policy_file(file);
            auto errs = redir::agent::validate_policy_text(text, file);
            for (auto& e : errs) std::cerr << e << "\n";
            if (errs.empty()) std::cout << file << ": valid\n";
            return errs.empty() ? 0 : 1;
        }
        if (*attach) {
            std::string req = "{\"cmd\":\"attach\",\"cgroup\":" + json_escape(cgroup);
            // A path that exists is a file; anything else names a loaded policy.
            if (std::filesystem::is_regular_file(policy_arg)) {
                req += ",\"policy_text\":" + json_escape(read_policy_file(policy_arg)) +
                       ",\"source_name\":" + json_escape(policy_arg);
            } else if (policy_arg.find('/') != std::string::npos || policy_arg.ends_with(".json")) {
                throw Failure{"policy file " + policy_arg + " does not exist"};
            } else {
                req += ",\"policy_name\":" + json_escape(policy_arg);
            }
            auto d = client.call(req + "}");
            if (!d["ok"].GetBool()) return report_error(d);
            std::cout << "attached " << d["cgroup"].GetString() << " (cgroup id " << d["cgroup_id"].GetUint64()
                      << ") with policy " << d["policy"].GetString() << "\n";
            if (d.HasMember("warnings"))
                for (auto& w : d["warnings"].GetArray()) std::cerr << "redirctl: warning: " << w.GetString() << "\n";
            return 0;
        }
        if (*detach) {
            auto d = client.call("{\"cmd\":\"detach\",\"cgroup\":" + json_escape(cgroup) + "}");
            if (!d["ok"].GetBool()) return report_error(d);
            std::cout << "detached " << d["cgroup"].GetString() << "\n";
            return 0;
        }
        if (*status) {
            auto d = client.call("{\"cmd\":\"status\"}");
            if (!d["ok"].GetBool()) return report_error(d);
            if (json) {
                std::cout << compact(d) << "\n";
                return 0;
            }
            auto& a = d["agent"];
            std::cout << "agent: pid " << a["pid"].GetUint64() << ", up " << a["uptime_s"].GetUint64() << "s, state "
                      << a["state_dir"].GetString() << ", bpffs " << a["bpffs"].GetString() << "\n";
            std::cout << "attachments:\n";
            if (d["attachments"].Empty()) std::cout << "  (none)\n";
            for (auto& at : d["attachments"].GetArray()) {
                std::cout << "  " << at["cgroup"].GetString() << "  policy " << at["policy"].GetString() << " (id "
                          << at["policy_id"].GetUint64() << "), " << at["programs"].GetUint64() << " programs";
                if (at.HasMember("host_rules") && !at["host_rules"].Empty())
                    std::cout << ", " << at["host_rules"].Size() << " host rules (DNS port " << at["dns_port"].GetUint64()
                              << ")";
                std::cout << "\n";
                print_capable(at);
            }
            print_socket_families(d);
            auto& c = d["counters"];
            std::cout << "counters: allow " << c["allow"].GetUint64() << ", deny " << c["deny"].GetUint64()
                      << ", redirect " << c["redirect"].GetUint64() << ", socket denied "
                      << c["socket_deny"].GetUint64() << ", setsockopt denied " << c["sockopt_deny"].GetUint64()
                      << ", events dropped " << c["events_dropped"].GetUint64()
                      << "\n";
            return 0;
        }
        if (*p_load) {
            std::string req = "{\"cmd\":\"policy.load\",\"policy_text\":" + json_escape(read_policy_file(file)) +
                              ",\"source_name\":" + json_escape(file);
            if (!name.empty()) req += ",\"name\":" + json_escape(name);
            if (keep_established) req += ",\"keep_established\":true";
            auto d = client.call(req + "}");
            if (!d["ok"].GetBool()) return report_error(d);
            if (json) {
                std::cout << compact(d) << "\n";
                return 0;
            }
            std::cout << "loaded policy " << d["policy"].GetString() << " (id " << d["policy_id"].GetUint64()
                      << "), in force on " << d["attachments"].GetUint64() << " attachment(s)";
            if (d.HasMember("revoked") && d["revoked"].IsUint64())
                std::cout << "; " << d["revoked"].GetUint64() << " connection(s) it no longer allows reset";
            if (d.HasMember("revocation_unsupported") && d["revocation_unsupported"].IsString())
                std::cout << "; established connections NOT examined: " << d["revocation_unsupported"].GetString();
            std::cout << "\n";
            return 0;
        }
        if (*p_show) {
            auto d = client.call("{\"cmd\":\"policy.show\",\"name\":" + json_escape(name) + "}");
            if (!d["ok"].GetBool()) return report_error(d);
            std::cout << pretty(d["normalized"]) << "\n";
            return 0;
        }
        if (*p_list) {
            auto d = client.call("{\"cmd\":\"policy.list\"}");
            if (!d["ok"].GetBool()) return report_error(d);
            if (json) {
                std::cout << compact(d["policies"]) << "\n";
                return 0;
            }
            for (auto& p : d["policies"].GetArray())
                std::cout << p["name"].GetString() << "\tid " << p["policy_id"].GetUint64() << "\tattached "
                          << p["attachments"].GetUint64() << "\n";
            return 0;
        }
        if (*p_delete) {
            auto d = client.call("{\"cmd\":\"policy.delete\",\"name\":" + json_escape(name) + "}");
            if (!d["ok"].GetBool()) return report_error(d);
            std::cout << "deleted policy " << name << "\n";
            return 0;
        }
        auto usual_env = [](const std::string& type) -> std::string {
            if (type == "openai" || type == "openai-compatible") return "OPENAI_API_KEY";
            if (type == "anthropic") return "ANTHROPIC_API_KEY";
            if (type == "nvidia") return "NVIDIA_API_KEY";
            return "";
        };
        auto creds_json = [&](const std::string& type) {
            std::string out = "{";
            auto add = [&](const std::string& k, const std::string& v) {
                if (out.size() > 1) out += ",";
                out += json_escape(k) + ":" + json_escape(v);
            };
            if (pv_from_existing) {
                std::string var = usual_env(type);
                if (var.empty()) throw Failure{"--from-existing has no usual variable for provider type " + type};
                const char* v = std::getenv(var.c_str());
                if (!v || !*v) throw Failure{"--from-existing: " + var + " is not set in this environment"};
                add(var, v);
            }
            for (auto& c : pv_creds) {
                auto eq = c.find('=');
                if (eq == std::string::npos || eq == 0)
                    throw Failure{"--credential " + c.substr(0, c.find('=')) + " must be KEY=VALUE"};
                add(c.substr(0, eq), c.substr(eq + 1));
            }
            return out + "}";
        };
        auto print_provider = [&](const rapidjson::Value& p) {
            if (json) {
                std::cout << compact(p) << "\n";
                return;
            }
            std::cout << p["name"].GetString() << "\ttype " << p["type"].GetString() << "\tbase-url "
                      << p["base_url"].GetString();
            if (*p["ca_file"].GetString()) std::cout << "\tca-file " << p["ca_file"].GetString();
            for (auto& m : p["credentials"].GetObject())
                std::cout << "\t" << m.name.GetString() << "=" << m.value.GetString();
            std::cout << "\n";
        };
        if (*pv_create) {
            std::string req = "{\"cmd\":\"provider.create\",\"name\":" + json_escape(pv_name) +
                              ",\"type\":" + json_escape(pv_type) + ",\"base_url\":" + json_escape(pv_base) +
                              ",\"ca_file\":" + json_escape(pv_ca) + ",\"credentials\":" + creds_json(pv_type) + "}";
            auto d = client.call(req);
            if (!d["ok"].GetBool()) return report_error(d);
            print_provider(d["provider"]);
            return 0;
        }
        if (*pv_get) {
            auto d = client.call("{\"cmd\":\"provider.get\",\"name\":" + json_escape(pv_name) + "}");
            if (!d["ok"].GetBool()) return report_error(d);
            print_provider(d["provider"]);
            return 0;
        }
        if (*pv_list) {
            auto d = client.call("{\"cmd\":\"provider.list\"}");
            if (!d["ok"].GetBool()) return report_error(d);
            if (json) {
                std::cout << compact(d["providers"]) << "\n";
                return 0;
            }
            for (auto& p : d["providers"].GetArray()) print_provider(p);
            return 0;
        }
        if (*pv_update) {
            std::string type;
            if (pv_from_existing) {
                auto g = client.call("{\"cmd\":\"provider.get\",\"name\":" + json_escape(pv_name) + "}");
                if (!g["ok"].GetBool()) return report_error(g);
                type = g["provider"]["type"].GetString();
                client = Client(socket_path);
            }
            std::string req = "{\"cmd\":\"provider.update\",\"name\":" + json_escape(pv_name) +
                              ",\"credentials\":" + creds_json(type);
            if (!pv_base.empty()) req += ",\"base_url\":" + json_escape(pv_base);
            if (!pv_ca.empty()) req += ",\"ca_file\":" + json_escape(pv_ca);
            req += ",\"remove_credentials\":[";
            for (size_t i = 0; i < pv_remove.size(); i++) req += (i ? "," : "") + json_escape(pv_remove[i]);
            auto d = client.call(req + "]}");
            if (!d["ok"].GetBool()) return report_error(d);
            print_provider(d["provider"]);
            return 0;
        }
        if (*pv_delete) {
            auto d = client.call("{\"cmd\":\"provider.delete\",\"name\":" + json_escape(pv_name) + "}");
            if (!d["ok"].GetBool()) return report_error(d);
            std::cout << "deleted provider " << pv_name << "\n";
            return 0;
        }
        auto print_inference = [&](const rapidjson::Document& d) {
            if (!d["ok"].GetBool()) return report_error(d);
            auto& i = d["inference"];
            if (json)
                std::cout << compact(i) << "\n";
            else
                std::cout << "provider " << i["provider"].GetString() << "\tmodel " << i["model"].GetString()
                          << "\tversion " << i["version"].GetUint64() << "\n";
            return 0;
        };
        if (*inf_set)
            return print_inference(client.call("{\"cmd\":\"inference.set\",\"provider\":" + json_escape(inf_provider) +
                                               ",\"model\":" + json_escape(inf_model) + "}"));
        if (*inf_get) return print_inference(client.call("{\"cmd\":\"inference.get\"}"));
        if (*inf_update) {
            if (inf_provider.empty() && inf_model.empty()) throw Failure{"inference update needs --provider or --model"};
            std::string req = "{\"cmd\":\"inference.update\"";
            if (!inf_provider.empty()) req += ",\"provider\":" + json_escape(inf_provider);
            if (!inf_model.empty()) req += ",\"model\":" + json_escape(inf_model);
            return print_inference(client.call(req + "}"));
        }
        if (*ca_export) {
            auto d = client.call("{\"cmd\":\"ca.export\"}");
            if (!d["ok"].GetBool()) return report_error(d);
            std::string pem = d["pem"].GetString();
            if (ca_out.empty()) {
                std::cout << pem;
            } else {
                redir::write_file_atomic(ca_out, pem, 0644);
            }
            return 0;
        }
        if (*run) {
            run_opts.socket_path = socket_path;
            return redir::ctl::run_sandboxed(run_opts);
        }
        if (*events) {
            client.connect();
            client.send("{\"cmd\":\"events\",\"count\":" + std::to_string(count) +
                        ",\"follow\":" + (follow ? "true" : "false") + "}");
            auto first = client.read_line();
            if (!first) throw Failure{"redird closed the connection without answering"};
            rapidjson::Document d;
            d.Parse(first->c_str());
            if (d.HasParseError() || !d.IsObject()) throw Failure{"redird sent a malformed answer"};
            if (!d["ok"].GetBool()) return report_error(d);
            for (auto& e : d["events"].GetArray()) std::cout << compact(e) << "\n";
            std::cout.flush();
            while (follow) {
                auto l = client.read_line();
                if (!l) break;
                std::cout << *l << std::endl;
            }
            return 0;
        }
    } catch (const Failure& f) {
        std::cerr << "redirctl: " << f.message << "\n";
        return 1;
    } catch (const std::exception& e) {
        std::cerr << "redirctl: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
