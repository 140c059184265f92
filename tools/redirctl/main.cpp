// redirctl: the command line client of redird's control API.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

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
#include "loader/features.hpp"

namespace {

using redir::Error;

struct Failure {
    std::string message;
};

class Client {
public:
    explicit Client(std::string path) : path_(std::move(path)) {}

    void connect() {
        fd_ = redir::UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        if (path_.size() >= sizeof(sa.sun_path)) throw Failure{"socket path " + path_ + " is too long"};
        std::strcpy(sa.sun_path, path_.c_str());
        if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0)
            throw Failure{"cannot reach redird at " + path_ + ": " + std::strerror(errno) +
                          "; is the agent running? (start it with `redird`, or pass --socket / REDIR_SOCKET)"};
    }

    void send(const std::string& line) {
        std::string l = line + "\n";
        const char* p = l.data();
        size_t left = l.size();
        while (left) {
            ssize_t n = ::write(fd_.get(), p, left);
            if (n < 0) {
                if (errno == EINTR) continue;
                throw Failure{"lost the connection to redird at " + path_ + ": " + std::strerror(errno)};
            }
            p += n;
            left -= static_cast<size_t>(n);
        }
    }

    // Next line from the agent; empty optional at end of stream.
    std::optional<std::string> read_line() {
        for (;;) {
            auto nl = buf_.find('\n');
            if (nl != std::string::npos) {
                std::string line = buf_.substr(0, nl);
                buf_.erase(0, nl + 1);
                return line;
            }
            char tmp[65536];
            ssize_t n = ::read(fd_.get(), tmp, sizeof(tmp));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return std::nullopt;
            buf_.append(tmp, static_cast<size_t>(n));
        }
    }

    rapidjson::Document call(const std::string& req) {
        connect();
        send(req);
        auto line = read_line();
        if (!line) throw Failure{"redird at " + path_ + " closed the connection without answering"};
        rapidjson::Document d;
        d.Parse(line->c_str());
        if (d.HasParseError() || !d.IsObject()) throw Failure{"redird sent a malformed answer"};
        return d;
    }

private:
    std::string path_;
    redir::UniqueFd fd_;
    std::string buf_;
};

std::string json_escape(const std::string& s) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    w.String(s.c_str(), static_cast<rapidjson::SizeType>(s.size()));
    return sb.GetString();
}

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

// Prints the agent's error(s) and returns the exit code.
int report_error(const rapidjson::Document& d) {
    if (d.HasMember("errors") && d["errors"].IsArray() && d["errors"].Size() > 0) {
        for (auto& e : d["errors"].GetArray()) std::cerr << e.GetString() << "\n";
    } else {
        std::cerr << "redirctl: " << (d.HasMember("error") ? d["error"].GetString() : "request failed") << "\n";
    }
    return 1;
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

    CLI11_PARSE(app, argc, argv);

    try {
        Client client(socket_path);
        if (*doctor) {
            auto checks = redir::loader::check_kernel_features("/sys/fs/bpf/redir");
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
                if (at.HasMember("pending_hosts") && !at["pending_hosts"].Empty())
                    std::cout << ", " << at["pending_hosts"].Size() << " host rules pending (DNS responder)";
                std::cout << "\n";
            }
            auto& c = d["counters"];
            std::cout << "counters: allow " << c["allow"].GetUint64() << ", deny " << c["deny"].GetUint64()
                      << ", redirect " << c["redirect"].GetUint64() << ", socket denied "
                      << c["socket_deny"].GetUint64() << ", events dropped " << c["events_dropped"].GetUint64()
                      << "\n";
            return 0;
        }
        if (*p_load) {
            std::string req = "{\"cmd\":\"policy.load\",\"policy_text\":" + json_escape(read_policy_file(file)) +
                              ",\"source_name\":" + json_escape(file);
            if (!name.empty()) req += ",\"name\":" + json_escape(name);
            auto d = client.call(req + "}");
            if (!d["ok"].GetBool()) return report_error(d);
            if (json) {
                std::cout << compact(d) << "\n";
                return 0;
            }
            std::cout << "loaded policy " << d["policy"].GetString() << " (id " << d["policy_id"].GetUint64()
                      << "), in force on " << d["attachments"].GetUint64() << " attachment(s)\n";
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
