// Who the command under `redirctl run` runs as, and the switch to that user.
#include "run_user.hpp"

#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>

#include "client.hpp"

namespace redir::ctl {
namespace {

std::optional<unsigned long> number(const std::string& s) {
    unsigned long v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size() || s.empty() || v > 0xfffffffeUL) return std::nullopt;
    return v;
}

// A home the user owns: tools write caches there. Anything else (nobody's
// /nonexistent, root's /root) is left out and run provides a private one.
std::optional<std::string> owned_home(const char* dir, uid_t uid) {
    struct stat st {};
    if (!dir || !*dir || ::stat(dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != uid || uid == 0)
        return std::nullopt;
    return std::string(dir);
}

RunUser nobody() {
    RunUser u;
    if (auto* pw = ::getpwnam("nobody")) {
        u.uid = pw->pw_uid;
        u.gid = pw->pw_gid;
    }
    u.name = "nobody";
    return u;
}

RunUser default_user(const char* sudo_uid, const char* sudo_gid) {
    auto uid = sudo_uid ? number(sudo_uid) : std::nullopt;
    if (!uid || *uid == 0) return nobody();
    RunUser u;
    u.uid = static_cast<uid_t>(*uid);
    auto* pw = ::getpwuid(u.uid);
    auto gid = sudo_gid ? number(sudo_gid) : std::nullopt;
    u.gid = gid ? static_cast<gid_t>(*gid) : (pw ? pw->pw_gid : u.uid);
    u.name = pw ? pw->pw_name : std::to_string(u.uid);
    u.home = owned_home(pw ? pw->pw_dir : nullptr, u.uid);
    return u;
}

gid_t resolve_group(const std::string& g) {
    if (auto n = number(g)) return static_cast<gid_t>(*n);
    if (auto* gr = ::getgrnam(g.c_str())) return gr->gr_gid;
    throw Failure{"--user: no group named \"" + g + "\" on this host; give a group name or a numeric gid"};
}

std::string last_error(const std::string& what) { return what + ": " + std::strerror(errno); }

int last_cap() {
    int n = CAP_LAST_CAP;
    std::ifstream in("/proc/sys/kernel/cap_last_cap");
    in >> n;
    return n;
}

// Every capability set of the calling thread, cleared.
bool clear_capability_sets() {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    return ::syscall(SYS_capset, &hdr, data) == 0;
}

bool holds_no_capability() {
    __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
    __user_cap_data_struct data[2] = {};
    if (::syscall(SYS_capget, &hdr, data) != 0) return false;
    for (auto& d : data)
        if (d.effective || d.permitted || d.inheritable) return false;
    for (int c = 0; c <= last_cap(); c++)
        if (::prctl(PR_CAPBSET_READ, c, 0, 0, 0) > 0) return false;
    return ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_SYS_ADMIN, 0, 0) <= 0;
}

}  // namespace

RunUser resolve_run_user(const std::string& spec, const char* sudo_uid, const char* sudo_gid) {
    RunUser def = default_user(sudo_uid, sudo_gid);
    if (spec.empty()) return def;
    auto colon = spec.find(':');
    std::string user = spec.substr(0, colon);
    std::optional<std::string> group;
    if (colon != std::string::npos) group = spec.substr(colon + 1);

    RunUser u;
    if (auto n = number(user)) {
        u.uid = static_cast<uid_t>(*n);
        auto* pw = ::getpwuid(u.uid);
        u.gid = pw ? pw->pw_gid : u.uid;
        u.name = pw ? pw->pw_name : user;
        u.home = owned_home(pw ? pw->pw_dir : nullptr, u.uid);
    } else if (auto* pw = ::getpwnam(user.c_str())) {
        u.uid = pw->pw_uid;
        u.gid = pw->pw_gid;
        u.name = pw->pw_name;
        u.home = owned_home(pw->pw_dir, u.uid);
    } else {
        throw Failure{"--user: no user named \"" + user + "\" on this host; give a user name or a numeric uid"};
    }
    if (u.uid == 0) {
        // Root only inside a user namespace of its own: uid 0 there is DEF outside.
        if (group) throw Failure{"--user root takes no group: it is root (uid and gid 0) of a private user namespace"};
        def.ns_root = true;
        def.name = "root";
        def.home.reset();
        return def;
    }
    if (group) u.gid = resolve_group(*group);
    if (u.gid == 0)
        throw Failure{"--user " + spec + ": group root (gid 0) would give the sandbox root's group rights; "
                      "name another group with --user USER:GROUP"};
    // A sudo rule that allows `redirctl run` must not become a way to act as
    // another user or group (--user postgres, --user me:shadow).
    RunUser nob = nobody();
    bool from_sudo = def.uid != nob.uid || def.gid != nob.gid;
    if (from_sudo && !((u.uid == def.uid || u.uid == nob.uid) && (u.gid == def.gid || u.gid == nob.gid)))
        throw Failure{"--user " + spec + ": under sudo, run may only use the calling user (uid " +
                      std::to_string(def.uid) + ", gid " + std::to_string(def.gid) +
                      "), nobody, or root of a private user namespace; run it as root without sudo to choose "
                      "another user"};
    return u;
}

std::string drop_to_unprivileged(const RunUser& u) {
    // no_new_privs first: nothing exec'd later (setuid binaries, file caps) regains privilege.
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return last_error("cannot set no_new_privs");
    if (::unshare(CLONE_NEWCGROUP) != 0) return last_error("cannot give the command a private cgroup namespace");
    for (int c = 0; c <= last_cap(); c++)
        if (::prctl(PR_CAPBSET_DROP, c, 0, 0, 0) != 0 && errno != EINVAL)
            return last_error("cannot drop capability " + std::to_string(c) + " from the bounding set");
    if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
        return last_error("cannot clear the ambient capabilities");
    gid_t g = u.gid;
    if (::setgroups(1, &g) != 0) return last_error("cannot set the supplementary groups to " + std::to_string(g));
    if (::setresgid(u.gid, u.gid, u.gid) != 0) return last_error("cannot switch to gid " + std::to_string(u.gid));
    if (::setresuid(u.uid, u.uid, u.uid) != 0) return last_error("cannot switch to uid " + std::to_string(u.uid));
    if (!clear_capability_sets()) return last_error("cannot clear the capability sets");
    // Checked, not assumed: a command that kept any of this could undo the sandbox.
    uid_t r, e, s;
    gid_t rg, eg, sg;
    if (::getresuid(&r, &e, &s) != 0 || r != u.uid || e != u.uid || s != u.uid || ::getresgid(&rg, &eg, &sg) != 0 ||
        rg != u.gid || eg != u.gid || sg != u.gid)
        return "the switch to uid " + std::to_string(u.uid) + " gid " + std::to_string(u.gid) + " did not take effect";
    if (!holds_no_capability()) return "a capability survived the switch to uid " + std::to_string(u.uid);
    return "";
}

std::string enter_user_namespace_prepare() {
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return last_error("cannot set no_new_privs");
    // Root's own supplementary groups (gid 0 ...) must not follow it in.
    if (::setgroups(0, nullptr) != 0) return last_error("cannot clear the supplementary groups");
    if (::unshare(CLONE_NEWUSER) != 0)
        return last_error("cannot create a user namespace for --user root (user.max_user_namespaces?)");
    return "";
}

std::string enter_user_namespace_finish() {
    // Until this switch the credentials are still host uid 0 (unmapped here).
    if (::setresgid(0, 0, 0) != 0) return last_error("cannot become gid 0 of the new user namespace");
    if (::setresuid(0, 0, 0) != 0) return last_error("cannot become uid 0 of the new user namespace");
    if (::unshare(CLONE_NEWCGROUP) != 0) return last_error("cannot give the command a private cgroup namespace");
    std::ifstream in("/proc/self/uid_map");
    unsigned long inside = 1, outside = 0, count = 0;
    in >> inside >> outside >> count;
    if (!in || inside != 0 || outside == 0 || count != 1)
        return "the user namespace for --user root is not mapped to one unprivileged host uid as expected";
    return "";
}

}  // namespace redir::ctl
