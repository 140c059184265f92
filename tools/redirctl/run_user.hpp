#pragma once
// Who the command under `redirctl run` runs as, and the switch to that user.
#include <sys/types.h>

#include <optional>
#include <string>

namespace redir::ctl {

struct RunUser {
    uid_t uid = 65534;         // host uid the command's credentials map to
    gid_t gid = 65534;
    bool ns_root = false;      // root of a fresh user namespace (uid/gid 0 inside, uid/gid above outside)
    std::string name;          // USER/LOGNAME inside
    std::optional<std::string> home;  // an existing home the user owns, else none
};

// Resolves --user SPEC ("" = default: the sudo caller from SUDO_UID/SUDO_GID, else
// nobody). "root" (or uid 0) means root of a private user namespace mapped to
// the default user. Throws Failure with one sentence on an unknown user/group,
// a group that would hand out root's group rights, or — under sudo — any user
// or group other than the caller's, nobody's or root-of-a-user-namespace.
RunUser resolve_run_user(const std::string& spec, const char* sudo_uid, const char* sudo_gid);

// Child side, after it is in the sandbox cgroup and before exec: drops to U
// with no capability in the host user namespace and no_new_privs, and gives it
// a private cgroup namespace (the sandbox is its "/"). For ns_root, NEED_MAPS
// is called after unshare(CLONE_NEWUSER) and must return once the parent has
// written uid_map/gid_map. Returns "" or what failed, as one sentence.
template <typename NeedMaps>
std::string become_run_user(const RunUser& u, NeedMaps need_maps);

// The two halves become_run_user is built from (exposed for the template).
std::string drop_to_unprivileged(const RunUser& u);
std::string enter_user_namespace_prepare();
std::string enter_user_namespace_finish();

template <typename NeedMaps>
std::string become_run_user(const RunUser& u, NeedMaps need_maps) {
    if (!u.ns_root) return drop_to_unprivileged(u);
    if (auto e = enter_user_namespace_prepare(); !e.empty()) return e;
    if (auto e = need_maps(); !e.empty()) return e;
    return enter_user_namespace_finish();
}

}  // namespace redir::ctl
