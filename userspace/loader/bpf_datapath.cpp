// The libbpf Datapath: skeleton load, pinned maps and links, map access.
#include "loader/bpf_datapath.hpp"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/magic.h>
#include <net/if.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cstdarg>
#include <cstddef>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/atomic_file.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "loader/features.hpp"
#include "guard.skel.h"
#include "redir.skel.h"

namespace fs = std::filesystem;

namespace redir::loader {
namespace {

bool is_bpffs(const std::string& path) {
    struct statfs s {};
    return ::statfs(path.c_str(), &s) == 0 && s.f_type == BPF_FS_MAGIC;
}

struct ProgRef {
    const char* name;
    bpf_program* prog;
};

// Kernels before 6.0 lack the task and ancestor-cgroup helpers in sockopt
// programs; there the variant whose events name only the cgroup is loaded.
bool sockopt_has_task_helpers() {
    for (auto h : {BPF_FUNC_get_current_pid_tgid, BPF_FUNC_get_current_comm, BPF_FUNC_get_current_ancestor_cgroup_id})
        if (libbpf_probe_bpf_helper(BPF_PROG_TYPE_CGROUP_SOCKOPT, h, nullptr) != 1) return false;
    return true;
}

bpf_program* setsockopt_program(redir_bpf* s) {
    return bpf_program__autoload(s->progs.redir_setsockopt) ? s->progs.redir_setsockopt
                                                            : s->progs.redir_setsockopt_basic;
}

std::vector<ProgRef> programs(redir_bpf* s, bool with_lsm) {
    std::vector<ProgRef> v = {
        {"connect4", s->progs.redir_connect4},       {"connect6", s->progs.redir_connect6},
        {"sendmsg4", s->progs.redir_sendmsg4},       {"sendmsg6", s->progs.redir_sendmsg6},
        {"recvmsg4", s->progs.redir_recvmsg4},       {"recvmsg6", s->progs.redir_recvmsg6},
        {"getpeername4", s->progs.redir_getpeername4}, {"getpeername6", s->progs.redir_getpeername6},
        {"sockops", s->progs.redir_sockops},         {"sock_create", s->progs.redir_sock_create},
        {"setsockopt", setsockopt_program(s)},
    };
    if (with_lsm) v.push_back({"lsm_socket_create", s->progs.redir_lsm_socket_create});
    return v;
}

int libbpf_print(enum libbpf_print_level level, const char* fmt, va_list args) {
    if (level == LIBBPF_DEBUG) return 0;
    return vfprintf(stderr, fmt, args);
}

// Calls FN with every key of the hash map FD.
template <typename Key, typename Fn>
void for_each_key(int fd, Fn fn) {
    Key cur{}, next{};
    Key* prev = nullptr;
    while (bpf_map_get_next_key(fd, prev, &next) == 0) {
        fn(next);
        cur = next;
        prev = &cur;
    }
}

std::string errno_text(int err) { return std::strerror(err < 0 ? -err : err); }

// The guard's pin among a cgroup's links (on clsact: kGuardTcHandle instead).
constexpr const char* kGuardPin = "guard";
constexpr int kBpfTcxIngress = 46;  // enum bpf_attach_type BPF_TCX_INGRESS

// REDIR_GUARD_HOOK=tc: the clsact fallback even where tcx exists, so the path
// kernels before 6.6 take is exercised on this one (tests, not operators).
bool guard_prefers_clsact() {
    const char* v = std::getenv("REDIR_GUARD_HOOK");
    return v && std::string(v) == "tc";
}

std::string interface_name(uint32_t ifindex) {
    char name[IF_NAMESIZE] = {};
    return ::if_indextoname(ifindex, name) ? name : "";
}

// The interface a pinned tcx link is attached to; 0 once the interface is gone.
// (The packaged UAPI header predates the link info's tcx member: same place
// as every link type's first member.)
std::optional<uint32_t> tcx_link_ifindex(int link_fd) {
    bpf_link_info info{};
    uint32_t len = sizeof(info);
    if (bpf_obj_get_info_by_fd(link_fd, &info, &len)) return std::nullopt;
    uint32_t ifindex = 0;
    std::memcpy(&ifindex, reinterpret_cast<const char*>(&info) + offsetof(bpf_link_info, raw_tracepoint), sizeof(ifindex));
    return ifindex;
}

}  // namespace

void ensure_bpffs(const std::string& dir) {
    // Pins must live on a bpffs; /sys/fs/bpf is the conventional mount.
    fs::path p(dir);
    std::string root = "/sys/fs/bpf";
    if (dir.rfind(root, 0) == 0 && !is_bpffs(root)) {
        std::error_code ec;
        fs::create_directories(root, ec);
        if (::mount("bpf", root.c_str(), "bpf", 0, "mode=0700") != 0)
            throw sys_error("bpffs is not mounted at " + root + " and mounting it failed");
    }
    make_dirs(dir, 0700);
    if (!is_bpffs(dir))
        throw Error(dir + " is not on a bpf filesystem; mount one (mount -t bpf bpf /sys/fs/bpf) or pass --bpffs");
}

BpfDatapath::BpfDatapath(DatapathOptions opts) : opts_(std::move(opts)) {}

BpfDatapath::~BpfDatapath() {
    if (rb_) ring_buffer__free(rb_);
    // Destroying the skeleton closes our fds; pinned maps and links stay.
    if (guard_) guard_bpf__destroy(guard_);
    if (skel_) redir_bpf__destroy(skel_);
}

std::unique_ptr<Datapath> Datapath::open(const DatapathOptions& opts) { return BpfDatapath::open(opts); }

std::unique_ptr<BpfDatapath> BpfDatapath::open(const DatapathOptions& opts) {
    ensure_bpffs(opts.bpffs_dir);
    std::string maps_dir = opts.bpffs_dir + "/maps";
    make_dirs(maps_dir, 0700);
    make_dirs(opts.bpffs_dir + "/links", 0700);

    std::unique_ptr<BpfDatapath> dp(new BpfDatapath(opts));
    // The per-cgroup LSM program is loaded exactly when the kernel accepts the
    // program type; then any failure to load it is a real error (a verifier
    // rejection must not quietly turn packet-socket refusal off).
    dp->lsm_probe_ = probe_lsm_cgroup();
    dp->lsm_ = dp->lsm_probe_.state == LsmCgroup::enforced;
    libbpf_set_print(libbpf_print);
    LIBBPF_OPTS(bpf_object_open_opts, oo, .pin_root_path = maps_dir.c_str());
    dp->skel_ = redir_bpf__open_opts(&oo);
    if (!dp->skel_) throw sys_error("cannot open the embedded BPF object");
    if (!dp->lsm_) bpf_program__set_autoload(dp->skel_->progs.redir_lsm_socket_create, false);
    bool rich_sockopt = sockopt_has_task_helpers();
    bpf_program__set_autoload(dp->skel_->progs.redir_setsockopt, rich_sockopt);
    bpf_program__set_autoload(dp->skel_->progs.redir_setsockopt_basic, !rich_sockopt);
    if (int err = redir_bpf__load(dp->skel_)) {
        redir_bpf__destroy(dp->skel_);
        dp->skel_ = nullptr;
        std::string lsm_note = dp->lsm_ ? " (this kernel accepts lsm_cgroup programs, so the socket_create LSM program "
                                          "was loaded too: if the log above names it, the program is at fault)"
                                        : "";
        throw Error("loading the BPF programs failed: " + errno_text(err) + lsm_note +
                    " (run `redirctl doctor`; if maps under " + maps_dir +
                    " come from an incompatible version, remove them after detaching every sandbox)");
    }
    // Second, so it adopts the maps the cgroup programs just created or reused.
    LIBBPF_OPTS(bpf_object_open_opts, go, .pin_root_path = maps_dir.c_str());
    dp->guard_ = guard_bpf__open_opts(&go);
    if (!dp->guard_) throw sys_error("cannot open the embedded guard BPF object");
    if (int err = guard_bpf__load(dp->guard_)) {
        guard_bpf__destroy(dp->guard_);
        dp->guard_ = nullptr;
        throw Error("loading the node-side guard program failed: " + errno_text(err) +
                    " (run `redirctl doctor`; maps under " + maps_dir + " may come from an incompatible version)");
    }
    return dp;
}

void BpfDatapath::set_config(const redir_config& cfg) {
    uint32_t zero = 0;
    if (bpf_map__update_elem(skel_->maps.cfg_map, &zero, sizeof(zero), &cfg, sizeof(cfg), BPF_ANY))
        throw sys_error("cannot write the datapath configuration map");
}

redir_config BpfDatapath::config() const {
    uint32_t zero = 0;
    redir_config cfg{};
    bpf_map__lookup_elem(skel_->maps.cfg_map, &zero, sizeof(zero), &cfg, sizeof(cfg), 0);
    return cfg;
}

std::string BpfDatapath::link_dir(uint64_t cgroup_id) const {
    return opts_.bpffs_dir + "/links/" + std::to_string(cgroup_id);
}

void BpfDatapath::attach_missing(const Cgroup& cg, std::vector<std::string>& created) {
    std::string dir = link_dir(cg.id);
    make_dirs(dir, 0700);
    for (auto& p : programs(skel_, lsm_)) {
        std::string pin = dir + "/" + p.name;
        if (fs::exists(pin)) continue;
        bpf_link* link = bpf_program__attach_cgroup(p.prog, cg.fd.get());
        if (!link) throw sys_error(std::string("cannot attach ") + p.name + " to " + cg.path);
        int perr = bpf_link__pin(link, pin.c_str());
        bpf_link__destroy(link);  // the pin keeps it alive
        if (perr) throw Error("cannot pin link " + pin + ": " + errno_text(perr));
        created.push_back(pin);
    }
}

void BpfDatapath::attach(const Cgroup& cg, const redir_attach_val& val) {
    redir_attach_key k{cg.id};
    if (bpf_map__update_elem(skel_->maps.attach_map, &k, sizeof(k), &val, sizeof(val), BPF_NOEXIST)) {
        if (errno == EEXIST) throw Error(cg.path + " is already attached; detach it first");
        throw sys_error("cannot add attachment entry for " + cg.path);
    }
    std::vector<std::string> created;
    try {
        attach_missing(cg, created);
    } catch (...) {
        for (auto& pin : created) ::unlink(pin.c_str());
        std::error_code ec;
        fs::remove(link_dir(cg.id), ec);
        bpf_map__delete_elem(skel_->maps.attach_map, &k, sizeof(k), 0);
        throw;
    }
}

void BpfDatapath::adopt(const Cgroup& cg, const redir_attach_val& val) {
    set_attachment(cg.id, val);
    std::string dir = link_dir(cg.id);
    for (auto& p : programs(skel_, lsm_)) {
        std::string pin = dir + "/" + p.name;
        if (!fs::exists(pin)) continue;
        bpf_link* link = bpf_link__open(pin.c_str());
        if (!link) throw sys_error("cannot open pinned link " + pin);
        // Atomic swap of the program behind the link: the old program keeps
        // running until the new one is in place.
        int err = bpf_link__update_program(link, p.prog);
        bpf_link__destroy(link);
        if (err) throw Error("cannot update pinned link " + pin + ": " + errno_text(err));
    }
    std::vector<std::string> created;
    attach_missing(cg, created);
    // A guard whose interface went while no agent ran (the container's veth
    // deleted) cannot be put back: the sandbox keeps its socket hooks and
    // guard_state() reports the guard inactive (status, the agent's log).
    if (val.guard_ifindex && !interface_name(val.guard_ifindex).empty()) {
        std::string pin = dir + "/" + kGuardPin;
        if (bpf_link* link = bpf_link__open(pin.c_str())) {
            int err = bpf_link__update_program(link, guard_->progs.redir_guard);
            bpf_link__destroy(link);
            if (err == -ENOLINK) return;  // its interface went a moment ago
            if (err) throw Error("cannot update pinned guard link " + pin + ": " + errno_text(err));
        } else {
            attach_guard(cg.id, val.guard_ifindex);  // a clsact filter (replaced), or a link lost
        }
    }
}

void BpfDatapath::attach_guard(uint64_t cgroup_id, uint32_t ifindex) {
    int gfd = bpf_map__fd(guard_->maps.guard_map);
    redir_guard_val g{};
    if (bpf_map_lookup_elem(gfd, &ifindex, &g) == 0 && g.cgroup_id != cgroup_id)
        throw Error("interface " + std::to_string(ifindex) + " already guards the sandbox of cgroup id " +
                    std::to_string(g.cgroup_id) + "; give each sandbox a link of its own (its own veth)");
    bool added = g.cgroup_id != cgroup_id;
    g.cgroup_id = cgroup_id;
    if (bpf_map_update_elem(gfd, &ifindex, &g, BPF_ANY))
        throw sys_error("cannot write the guard entry of interface " + std::to_string(ifindex));
    std::string dir = link_dir(cgroup_id);
    make_dirs(dir, 0700);
    std::string pin = dir + "/" + kGuardPin;
    if (fs::exists(pin)) return;
    try {
        attach_guard_program(ifindex, pin);
    } catch (...) {
        if (added) bpf_map_delete_elem(gfd, &ifindex);
        throw;
    }
}

void BpfDatapath::attach_guard_program(uint32_t ifindex, const std::string& pin) {
    bpf_program* prog = guard_->progs.redir_guard;
    // tcx (6.6) by number: the packaged libbpf and UAPI headers predate it.
    int fd = -1;
    errno = EOPNOTSUPP;
    if (!guard_prefers_clsact())
        fd = bpf_link_create(bpf_program__fd(prog), static_cast<int>(ifindex),
                             static_cast<bpf_attach_type>(kBpfTcxIngress), nullptr);
    if (fd >= 0) {
        int perr = bpf_obj_pin(fd, pin.c_str()) ? -errno : 0;
        ::close(fd);  // the pin keeps it alive; without one the link goes with the fd
        if (perr) throw Error("cannot pin guard link " + pin + ": " + errno_text(perr));
        return;
    }
    int tcx_err = errno;
    // Before tcx (6.6): clsact ingress, our filter replaced in place if there.
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = static_cast<int>(ifindex), .attach_point = BPF_TC_INGRESS);
    int err = bpf_tc_hook_create(&hook);
    if (err && err != -EEXIST)
        throw Error("cannot attach the guard to interface " + std::to_string(ifindex) + ": tcx: " +
                    errno_text(tcx_err) + ", clsact: " + errno_text(err) + " (is the interface gone?)");
    LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = bpf_program__fd(prog), .flags = BPF_TC_F_REPLACE,
                .handle = kGuardTcHandle, .priority = kGuardTcPriority);
    if ((err = bpf_tc_attach(&hook, &opts)))
        throw Error("cannot attach the guard to interface " + std::to_string(ifindex) + ": tcx: " +
                    errno_text(tcx_err) + ", tc filter: " + errno_text(err));
}

std::optional<GuardState> BpfDatapath::guard_state(uint64_t cgroup_id) const {
    auto v = attachment(cgroup_id);
    if (!v || !v->guard_ifindex) return std::nullopt;
    GuardState g;
    g.ifindex = v->guard_ifindex;
    g.interface = interface_name(g.ifindex);
    redir_guard_val entry{};
    bool entry_ok = bpf_map_lookup_elem(bpf_map__fd(guard_->maps.guard_map), &g.ifindex, &entry) == 0 &&
                    entry.cgroup_id == cgroup_id;
    std::string pin = link_dir(cgroup_id) + "/" + kGuardPin;
    std::error_code ec;
    if (fs::exists(pin, ec)) {
        g.hook = "tcx";
        UniqueFd link(bpf_obj_get(pin.c_str()));
        auto on = link ? tcx_link_ifindex(link.get()) : std::nullopt;
        if (!on)
            g.problem = "its pinned link " + pin + " cannot be read";
        else if (*on == 0)
            g.problem = "its interface is gone (the link was detached with it)";
        else if (*on != g.ifindex)
            g.problem = "its link sits on interface " + std::to_string(*on) + ", not on the sandbox's";
    } else {
        g.hook = "tc";
        LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = static_cast<int>(g.ifindex), .attach_point = BPF_TC_INGRESS);
        LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kGuardTcHandle, .priority = kGuardTcPriority);
        bpf_prog_info mine{};
        uint32_t len = sizeof(mine);
        bpf_obj_get_info_by_fd(bpf_program__fd(guard_->progs.redir_guard), &mine, &len);
        if (g.interface.empty())
            g.problem = "its interface is gone";
        else if (bpf_tc_query(&hook, &opts) != 0)
            g.problem = "no guard filter on the interface's clsact ingress";
        else if (opts.prog_id != mine.id)
            g.problem = "the filter there runs another program (id " + std::to_string(opts.prog_id) + ")";
    }
    if (g.problem.empty() && g.interface.empty()) g.problem = "its interface is gone";
    if (g.problem.empty() && !entry_ok) g.problem = "the guard map has no entry naming it for its interface";
    g.active = g.problem.empty();
    return g;
}

void BpfDatapath::detach_guard(uint64_t cgroup_id) {
    auto v = attachment(cgroup_id);
    if (!v || !v->guard_ifindex) return;
    uint32_t ifindex = v->guard_ifindex;
    int gfd = bpf_map__fd(guard_->maps.guard_map);
    redir_guard_val g{};
    if (bpf_map_lookup_elem(gfd, &ifindex, &g) == 0 && g.cgroup_id == cgroup_id) bpf_map_delete_elem(gfd, &ifindex);
}

void BpfDatapath::set_attachment(uint64_t cgroup_id, const redir_attach_val& val) {
    redir_attach_key k{cgroup_id};
    if (bpf_map__update_elem(skel_->maps.attach_map, &k, sizeof(k), &val, sizeof(val), BPF_ANY))
        throw sys_error("cannot update attachment entry for cgroup " + std::to_string(cgroup_id));
}

std::optional<redir_attach_val> BpfDatapath::attachment(uint64_t cgroup_id) const {
    redir_attach_key k{cgroup_id};
    redir_attach_val v{};
    if (bpf_map__lookup_elem(skel_->maps.attach_map, &k, sizeof(k), &v, sizeof(v), 0)) return std::nullopt;
    return v;
}

void BpfDatapath::detach(uint64_t cgroup_id) {
    // Links first, entry last: while any program is still attached it must
    // find its entry, otherwise it would deny (fail closed) mid-detach.
    std::string dir = link_dir(cgroup_id);
    std::error_code ec;
    if (auto v = attachment(cgroup_id); v && v->guard_ifindex && !fs::exists(dir + "/" + kGuardPin, ec)) {
        // A clsact filter (kernels without tcx) is not among the pins.
        LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = static_cast<int>(v->guard_ifindex), .attach_point = BPF_TC_INGRESS);
        LIBBPF_OPTS(bpf_tc_opts, opts, .handle = kGuardTcHandle, .priority = kGuardTcPriority);
        bpf_tc_detach(&hook, &opts);
    }
    if (fs::exists(dir, ec)) {
        for (auto& e : fs::directory_iterator(dir)) {
            bpf_link* link = bpf_link__open(e.path().c_str());
            if (link) {
                bpf_link__detach(link);
                bpf_link__destroy(link);
            }
            ::unlink(e.path().c_str());
        }
        fs::remove(dir, ec);
    }
    detach_guard(cgroup_id);
    redir_attach_key k{cgroup_id};
    bpf_map__delete_elem(skel_->maps.attach_map, &k, sizeof(k), 0);
    bpf_map__delete_elem(skel_->maps.event_drops, &cgroup_id, sizeof(cgroup_id), 0);
    delete_dns_allow_for(cgroup_id);
}

std::vector<uint64_t> BpfDatapath::attachment_ids() const {
    std::vector<uint64_t> ids;
    for_each_key<redir_attach_key>(bpf_map__fd(skel_->maps.attach_map),
                                   [&](const redir_attach_key& k) { ids.push_back(k.cgroup_id); });
    return ids;
}

std::vector<PinnedAttachment> BpfDatapath::pinned_attachments() const {
    std::vector<PinnedAttachment> out;
    std::error_code ec;
    for (auto& e : fs::directory_iterator(opts_.bpffs_dir + "/links", ec)) {
        PinnedAttachment pa;
        try {
            pa.cgroup_id = std::stoull(e.path().filename().string());
        } catch (...) {
            continue;
        }
        for (auto& p : fs::directory_iterator(e.path(), ec)) pa.programs.push_back(p.path().filename().string());
        out.push_back(std::move(pa));
    }
    return out;
}

void BpfDatapath::put_lpm(const redir_lpm_key& k, const redir_lpm_val& v) {
    if (bpf_map__update_elem(skel_->maps.policy_lpm, &k, sizeof(k), &v, sizeof(v), BPF_ANY))
        throw sys_error("cannot write policy entry (policy map full? " +
                        std::to_string(REDIR_MAX_POLICY_ENTRIES) + " entries at most)");
}

void BpfDatapath::put_portset(const redir_portset_key& k, const redir_portset& v) {
    if (bpf_map__update_elem(skel_->maps.portsets, &k, sizeof(k), &v, sizeof(v), BPF_ANY))
        throw sys_error("cannot write policy port set");
}

namespace {
// Collects keys first: deleting while iterating a hash restarts iteration.
template <typename Key, typename Pred>
size_t delete_matching(int fd, Pred pred) {
    std::vector<Key> doomed;
    for_each_key<Key>(fd, [&](const Key& k) {
        if (pred(k)) doomed.push_back(k);
    });
    for (auto& k : doomed) bpf_map_delete_elem(fd, &k);
    return doomed.size();
}
}  // namespace

size_t BpfDatapath::delete_policy(uint32_t policy_id) {
    size_t n = delete_matching<redir_lpm_key>(bpf_map__fd(skel_->maps.policy_lpm),
                                             [&](const redir_lpm_key& k) { return k.policy_id == policy_id; });
    n += delete_matching<redir_portset_key>(bpf_map__fd(skel_->maps.portsets),
                                           [&](const redir_portset_key& k) { return k.policy_id == policy_id; });
    return n;
}

std::set<uint32_t> BpfDatapath::policy_ids() const {
    std::set<uint32_t> ids;
    for_each_key<redir_portset_key>(bpf_map__fd(skel_->maps.portsets),
                                    [&](const redir_portset_key& k) { ids.insert(k.policy_id); });
    for_each_key<redir_lpm_key>(bpf_map__fd(skel_->maps.policy_lpm),
                                [&](const redir_lpm_key& k) { ids.insert(k.policy_id); });
    return ids;
}

void BpfDatapath::put_dns_allow(const redir_dns_allow_key& k, const redir_dns_allow_val& v) {
    if (bpf_map__update_elem(skel_->maps.dns_allow, &k, sizeof(k), &v, sizeof(v), BPF_ANY))
        throw sys_error("cannot write DNS admission");
}

void BpfDatapath::delete_dns_allow(const redir_dns_allow_key& k) {
    bpf_map__delete_elem(skel_->maps.dns_allow, &k, sizeof(k), 0);
}

std::vector<DnsAdmission> BpfDatapath::dns_admissions() const {
    std::vector<DnsAdmission> out;
    int fd = bpf_map__fd(skel_->maps.dns_allow);
    for_each_key<redir_dns_allow_key>(fd, [&](const redir_dns_allow_key& k) {
        redir_dns_allow_val v{};
        if (bpf_map_lookup_elem(fd, &k, &v) == 0) out.emplace_back(k, v);
    });
    return out;
}

size_t BpfDatapath::delete_dns_allow_for(uint64_t cgroup_id) {
    return delete_matching<redir_dns_allow_key>(
        bpf_map__fd(skel_->maps.dns_allow), [&](const redir_dns_allow_key& k) { return k.cgroup_id == cgroup_id; });
}

std::optional<redir_origdst_val> BpfDatapath::take_origdst(const redir_tuple_key& k) {
    redir_origdst_val v{};
    if (bpf_map_lookup_and_delete_elem(bpf_map__fd(skel_->maps.origdst_map), &k, &v) == 0) return v;
    // LRU hash gained lookup_and_delete late; fall back to two calls.
    if (bpf_map__lookup_elem(skel_->maps.origdst_map, &k, sizeof(k), &v, sizeof(v), 0) != 0) return std::nullopt;
    bpf_map__delete_elem(skel_->maps.origdst_map, &k, sizeof(k), 0);
    return v;
}

uint64_t BpfDatapath::event_drops(uint64_t cgroup_id) const {
    uint64_t n = 0;
    bpf_map__lookup_elem(skel_->maps.event_drops, &cgroup_id, sizeof(cgroup_id), &n, sizeof(n), 0);
    return n;
}

std::array<uint64_t, REDIR_CNT_MAX> BpfDatapath::counters() const {
    std::array<uint64_t, REDIR_CNT_MAX> out{};
    int ncpu = libbpf_num_possible_cpus();
    std::vector<uint64_t> per(ncpu > 0 ? ncpu : 1);
    for (uint32_t i = 0; i < REDIR_CNT_MAX; i++) {
        if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.counters), &i, per.data()) != 0) continue;
        for (auto c : per) out[i] += c;
    }
    return out;
}

void BpfDatapath::open_events(std::function<void(const redir_event&)> handler) {
    on_event_ = std::move(handler);
    rb_ = ring_buffer__new(
        bpf_map__fd(skel_->maps.events),
        [](void* ctx, void* data, size_t len) -> int {
            auto* self = static_cast<BpfDatapath*>(ctx);
            if (len >= sizeof(redir_event) && self->on_event_) {
                redir_event e;
                std::memcpy(&e, data, sizeof(e));
                self->on_event_(e);
            }
            return 0;
        },
        this, nullptr);
    if (!rb_) throw sys_error("cannot open the event ring buffer");
}

int BpfDatapath::events_poll_fd() const { return rb_ ? ring_buffer__epoll_fd(rb_) : -1; }

int BpfDatapath::consume_events() { return rb_ ? ring_buffer__consume(rb_) : 0; }

int BpfDatapath::map_fd(const char* name) const {
    bpf_map* m = bpf_object__find_map_by_name(skel_->obj, name);
    return m ? bpf_map__fd(m) : -1;
}

}  // namespace redir::loader
