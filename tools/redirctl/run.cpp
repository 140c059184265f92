// `redirctl run`: a transient sandbox around one command, from before its
// first instruction until nothing in it is left.
#include "run.hpp"

#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <optional>

#include "client.hpp"
#include "common/atomic_file.hpp"
#include "common/error.hpp"
#include "common/fd.hpp"
#include "loader/cgroup.hpp"
#include "run_landlock.hpp"
#include "run_netns.hpp"
#include "run_seccomp.hpp"
#include "run_user.hpp"
#include "sandbox_reaper.hpp"

namespace redir::ctl {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kRunFailed = 125;                  // run's own failure, before the command started
constexpr auto kGrace = std::chrono::seconds(3);  // after SIGTERM/SIGHUP to run, before SIGKILL to all
constexpr auto kKillTimeout = std::chrono::seconds(10);

// REDIR_RUN_FALLBACKS=clone3,cgroup.kill makes run take the paths older
// kernels need even where the new ones exist, so tests cover both.
struct Fallbacks {
    bool no_clone3 = false;
    bool no_cgroup_kill = false;
};

Fallbacks fallbacks_from_env() {
    Fallbacks f;
    if (const char* v = std::getenv("REDIR_RUN_FALLBACKS")) {
        std::string s = v;
        f.no_clone3 = s.find("clone3") != std::string::npos;
        f.no_cgroup_kill = s.find("cgroup.kill") != std::string::npos;
    }
    return f;
}

// Files the command reads: the local CA alone, a bundle of the system roots
// plus the local CA, and a private home when the user has none of its own.
// World-readable (the command is not root); the directory is run's own.
struct RunFiles {
    std::string dir, ca_file, bundle, home;
    ~RunFiles() {
        std::error_code ec;
        if (!dir.empty()) std::filesystem::remove_all(dir, ec);
    }
};

void write_run_files(RunFiles& f, Client& client, const RunUser& user) {
    char tmpl[] = "/tmp/redir-run-XXXXXX";
    if (!::mkdtemp(tmpl)) throw Failure{std::string("cannot create a directory in /tmp for the CA bundle: ") +
                                        std::strerror(errno)};
    f.dir = tmpl;
    ::chmod(f.dir.c_str(), 0755);
    f.ca_file = f.dir + "/inference-ca.pem";
    f.bundle = f.dir + "/ca-bundle.pem";
    auto ca = client.call(control::CaExportRequest{});
    if (!ca) throw Failure{"cannot fetch the local CA from redird for the sandbox's CA bundle"};
    std::string pem = ca->pem;
    std::string roots;
    try {
        roots = redir::read_file("/etc/ssl/certs/ca-certificates.crt");
    } catch (...) {
        // No system roots: the bundle still lets tools reach inference.local.
    }
    redir::write_file_atomic(f.ca_file, pem, 0644);
    redir::write_file_atomic(f.bundle, roots + (roots.empty() || roots.back() == '\n' ? "" : "\n") + pem, 0644);
    if (user.home) {
        f.home = *user.home;
    } else {
        f.home = f.dir + "/home";
        if (::mkdir(f.home.c_str(), 0700) != 0 || ::chown(f.home.c_str(), user.uid, user.gid) != 0)
            throw Failure{"cannot create a home directory for the sandboxed user in " + f.dir + ": " +
                          std::strerror(errno)};
    }
}

void set_sandbox_env(const RunFiles& f, const RunUser& user, const std::string& cgroup) {
    ::setenv("SSL_CERT_FILE", f.bundle.c_str(), 1);
    ::setenv("REQUESTS_CA_BUNDLE", f.bundle.c_str(), 1);
    ::setenv("CURL_CA_BUNDLE", f.bundle.c_str(), 1);
    ::setenv("GIT_SSL_CAINFO", f.bundle.c_str(), 1);
    ::setenv("NODE_EXTRA_CA_CERTS", f.ca_file.c_str(), 1);
    ::setenv("DENO_CERT", f.ca_file.c_str(), 1);
    ::setenv("OPENAI_BASE_URL", "https://inference.local/v1", 1);
    ::setenv("ANTHROPIC_BASE_URL", "https://inference.local", 1);
    // The SDKs insist on a key; the terminator drops it and adds the real one.
    ::setenv("OPENAI_API_KEY", "redir-placeholder", 1);
    ::setenv("ANTHROPIC_API_KEY", "redir-placeholder", 1);
    ::setenv("HOME", f.home.c_str(), 1);
    ::setenv("USER", user.name.c_str(), 1);
    ::setenv("LOGNAME", user.name.c_str(), 1);
    ::setenv("REDIR_SANDBOX", cgroup.c_str(), 1);
    // Their sockets are hidden (hide_session_sockets); do not point at them.
    for (const char* v : {"XDG_RUNTIME_DIR", "DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY"}) ::unsetenv(v);
    // sudo's record of the caller means nothing inside.
    ::unsetenv("SUDO_UID");
    ::unsetenv("SUDO_GID");
    ::unsetenv("SUDO_USER");
    ::unsetenv("SUDO_COMMAND");
}

// ---- the child, between clone and exec --------------------------------------
// It speaks to the parent over a socketpair: 'U' = "write my uid/gid maps",
// answered by 'G'; 'E' + text = it failed and exits; end of stream = exec'd.

struct ChildPlan {
    std::string cgroup;      // absolute path of the sandbox cgroup
    std::string cgroup_rel;  // as /proc/self/cgroup names it ("/redir-run-…")
    bool entered = false;    // placed by clone3(CLONE_INTO_CGROUP)
    RunUser user;
    const RunFiles* files = nullptr;
    const std::vector<std::string>* command = nullptr;
    int netns_fd = -1;       // --netns: joined before anything else
};

[[noreturn]] void child_fail(int chan, const std::string& msg, int code = kRunFailed) {
    std::string m = "E" + msg;
    [[maybe_unused]] auto n = ::write(chan, m.data(), m.size());
    ::_exit(code);
}

std::string own_cgroup() {
    std::ifstream in("/proc/self/cgroup");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("0::", 0) == 0) return line.substr(3);
    return "";
}

// The fallback for kernels without CLONE_INTO_CGROUP: the child moves itself,
// and a failed move ends it before anything of the command runs.
void enter_cgroup(int chan, const ChildPlan& p) {
    redir::UniqueFd fd(::open((p.cgroup + "/cgroup.procs").c_str(), O_WRONLY | O_CLOEXEC));
    if (!fd || ::write(fd.get(), "0", 1) != 1)
        child_fail(chan, "cannot move the command into sandbox cgroup " + p.cgroup + ": " + std::strerror(errno) +
                             "; nothing was run");
}

constexpr int kForwarded[] = {SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2, SIGWINCH};

void reset_signals() {
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    for (int s : kForwarded) ::signal(s, SIG_DFL);
    ::signal(SIGCHLD, SIG_DFL);
    ::signal(SIGPIPE, SIG_DFL);
}

// Directories of per-user session sockets: the user's systemd instance and
// session bus (`systemd-run --user` starts a process outside the sandbox),
// X11 and ICE (keystrokes into the user's terminals). The command shares the
// default user's uid, so file permissions do not keep it out: in the
// sandbox's mount namespace they are empty (locked) tmpfs.
constexpr const char* kSessionSocketDirs[] = {"/run/user", "/var/run/user", "/tmp/.X11-unix", "/tmp/.ICE-unix"};

std::string hide_session_sockets() {
    for (const char* dir : kSessionSocketDirs) {
        struct stat st {};
        if (::lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
        if (::mount("tmpfs", dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755,size=16k") != 0)
            return std::string("cannot hide the session sockets in ") + dir + ": " + std::strerror(errno);
    }
    return "";
}

// The sandbox's own pid namespace gets its own /proc: the command can name
// (ptrace, signal, open /proc/PID/mem) only processes of its sandbox, not
// same-uid processes outside it (the sudo caller's shell, another sandbox).
std::string private_proc() {
    if (::getpid() != 1) return "the sandbox did not get a pid namespace of its own";
    // Its own SysV IPC / POSIX message queues too: shared memory and queues of
    // same-uid processes outside are out of reach.
    if (::unshare(CLONE_NEWNS | CLONE_NEWIPC) != 0)
        return std::string("cannot give the sandbox mount and IPC namespaces: ") + std::strerror(errno);
    // A fresh session keyring: the one inherited from root would let the
    // command use (possess) whatever keys root's session holds.
    if (::syscall(SYS_keyctl, 1 /* KEYCTL_JOIN_SESSION_KEYRING */, nullptr) < 0)
        return std::string("cannot give the sandbox its own session keyring: ") + std::strerror(errno);
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
        return std::string("cannot make the sandbox's mounts private: ") + std::strerror(errno);
    if (::mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr) != 0)
        return std::string("cannot mount the sandbox's own /proc: ") + std::strerror(errno);
    return hide_session_sockets();
}

[[noreturn]] void exec_command(int chan, const ChildPlan& p) {
    reset_signals();
    set_sandbox_env(*p.files, p.user, p.cgroup);
    std::vector<char*> argv;
    for (auto& a : *p.command) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    int e = errno;
    child_fail(chan, "cannot run " + p.command->front() + " as uid " + std::to_string(::getuid()) + ": " +
                         std::strerror(e),
               e == ENOENT ? 127 : 126);
}

// Pid 1 of the sandbox: passes run's signals to the command, reaps orphans,
// and exits with the command's status (128+N when signal N killed it). Its
// exit makes the kernel kill everything else in the pid namespace.
sigset_t init_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    for (int s : kForwarded) sigaddset(&set, s);
    return set;
}

[[noreturn]] void init_loop(pid_t command) {
    sigset_t set = init_signals();
    for (;;) {
        int status = 0;
        pid_t r;
        while ((r = ::waitpid(-1, &status, WNOHANG)) > 0)
            if (r == command) ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        siginfo_t si{};
        int sig = ::sigwaitinfo(&set, &si);
        if (sig <= 0 || sig == SIGCHLD) continue;
        // A terminal's ^C / ^\ already reached the command (same process group).
        if (si.si_code == SI_KERNEL && (sig == SIGINT || sig == SIGQUIT)) continue;
        ::kill(command, sig);
    }
}

// Pid 1 never execs, so run's own descriptors (the connection to redird —
// accepted as run's, outside the sandbox —, the signalfd, the cgroup) would
// stay open in the sandbox: close every close-on-exec descriptor now, which
// changes nothing for the command, as exec would close them anyway.
void close_run_descriptors(int keep) {
    std::vector<int> fds;
    std::error_code ec;
    for (auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
        int fd = std::atoi(e.path().filename().c_str());
        if (fd > 2 && fd != keep) fds.push_back(fd);
    }
    for (int fd : fds) {
        int flags = ::fcntl(fd, F_GETFD);
        if (flags >= 0 && (flags & FD_CLOEXEC)) ::close(fd);
    }
}

[[noreturn]] void child_main(int chan, const ChildPlan& p) {
    // Still root of the host here; the descriptor is close-on-exec, closed next.
    if (p.netns_fd >= 0 && ::setns(p.netns_fd, CLONE_NEWNET) != 0)
        child_fail(chan, std::string("cannot enter the sandbox's network namespace: ") + std::strerror(errno) +
                             "; nothing was run");
    close_run_descriptors(chan);
    if (!p.entered) enter_cgroup(chan, p);
    // Checked either way: the command never runs anywhere but in the sandbox.
    if (std::string now = own_cgroup(); now != p.cgroup_rel)
        child_fail(chan, "the command is in cgroup " + now + " instead of sandbox " + p.cgroup_rel + "; nothing was run");
    if (auto err = private_proc(); !err.empty()) child_fail(chan, err + "; nothing was run");
    auto need_maps = [&]() -> std::string {
        char c = 'U';
        if (::write(chan, &c, 1) != 1 || ::read(chan, &c, 1) != 1 || c != 'G')
            return "redirctl did not map the user namespace for --user root";
        return "";
    };
    if (auto err = become_run_user(p.user, need_maps); !err.empty())
        child_fail(chan, err + "; nothing was run (the sandbox never runs a command with host privileges)");
    if (auto err = install_run_seccomp(); !err.empty()) child_fail(chan, err + "; nothing was run");
    // Best effort: older kernels cannot scope; doctor says so (run_sandbox).
    scope_to_sandbox();
    // If run dies, the sandbox dies with it. Set after the credential switch,
    // which clears it; run's end of CHAN tells whether run is already gone.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    pollfd pfd{chan, POLLRDHUP, 0};
    if (::poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLRDHUP))) ::_exit(kRunFailed);
    // Blocked before the fork so none is lost or acted on by default; the command unblocks.
    sigset_t set = init_signals();
    ::sigprocmask(SIG_BLOCK, &set, nullptr);
    pid_t command = ::fork();
    if (command < 0) child_fail(chan, std::string("cannot start the command: ") + std::strerror(errno));
    if (command == 0) exec_command(chan, p);
    ::close(chan);  // the command's copy closes at exec: run then sees end of stream
    init_loop(command);
}

// clone3(CLONE_INTO_CGROUP) starts the child inside the sandbox, so not one
// instruction of it runs outside; fork() + a checked move where the kernel
// (before 5.7) or the caller's REDIR_RUN_FALLBACKS says otherwise. Either way
// the child is pid 1 of a new pid namespace.
pid_t spawn(int cgroup_fd, bool use_clone3, bool& entered) {
    if (use_clone3) {
        clone_args args{};
        args.flags = CLONE_INTO_CGROUP | CLONE_NEWPID;
        args.exit_signal = SIGCHLD;
        args.cgroup = static_cast<uint64_t>(cgroup_fd);
        entered = true;
        long pid = ::syscall(SYS_clone3, &args, sizeof(args));
        if (pid >= 0) return static_cast<pid_t>(pid);
    }
    entered = false;
    // Our next child is pid 1 of a new namespace; run itself stays where it is.
    if (::unshare(CLONE_NEWPID) != 0) return -1;
    return ::fork();
}

// ---- the parent --------------------------------------------------------------

void write_id_maps(pid_t child, const RunUser& u) {
    auto put = [&](const char* file, unsigned id) {
        std::string path = "/proc/" + std::to_string(child) + "/" + file;
        std::string line = "0 " + std::to_string(id) + " 1\n";
        redir::UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
        return fd && ::write(fd.get(), line.data(), line.size()) == static_cast<ssize_t>(line.size());
    };
    if (!put("uid_map", u.uid) || !put("gid_map", u.gid))
        throw Failure{"cannot map root of the command's user namespace to uid " + std::to_string(u.uid) + ": " +
                      std::strerror(errno)};
}

// Serves the child's requests until it has exec'd (end of stream); returns
// its error text, empty when the command started.
std::string await_exec(int chan, pid_t child, const RunUser& user) {
    std::string err;
    char c;
    for (;;) {
        ssize_t n = ::read(chan, &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return err;
        if (c == 'U') {
            try {
                write_id_maps(child, user);
                c = 'G';
            } catch (const Failure& f) {
                err = f.message;
                c = 'N';
            }
            [[maybe_unused]] auto w = ::write(chan, &c, 1);
        } else if (c == 'E') {
            char buf[4096];
            while ((n = ::read(chan, buf, sizeof(buf))) > 0) err.append(buf, static_cast<size_t>(n));
            return err;
        }
    }
}

int exit_code(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 1;
}

// Waits for the command. SIGTERM/SIGHUP (and SIGINT/SIGQUIT sent to run by
// kill) are passed to the command; if it has not exited KGRACE later, the
// whole sandbox is killed. A terminal's ^C reaches the command by itself and
// is left to it. Returns the command's exit code.
int supervise(pid_t child, int sigfd, const std::string& cgroup, bool use_cgroup_kill) {
    std::optional<Clock::time_point> kill_at;
    for (;;) {
        int status = 0;
        pid_t r = ::waitpid(child, &status, WNOHANG);
        if (r == child) return exit_code(status);
        int timeout = -1;
        if (kill_at) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(*kill_at - Clock::now()).count();
            if (left <= 0) {
                kill_subtree(cgroup, kKillTimeout, use_cgroup_kill);
                kill_at = Clock::now() + kKillTimeout;  // keep reaping; do not loop on kill
                continue;
            }
            timeout = static_cast<int>(left);
        }
        pollfd pfd{sigfd, POLLIN, 0};
        if (::poll(&pfd, 1, timeout) <= 0) continue;
        signalfd_siginfo si{};
        if (::read(sigfd, &si, sizeof(si)) != sizeof(si)) continue;
        int sig = static_cast<int>(si.ssi_signo);
        if (sig == SIGCHLD) continue;
        bool from_tty = si.ssi_code == SI_KERNEL && (sig == SIGINT || sig == SIGQUIT);
        if (from_tty) continue;
        if (kill_at) {
            kill_at = Clock::now();  // a second signal: no more grace
        } else {
            ::kill(child, sig);
            kill_at = Clock::now() + kGrace;
        }
    }
}

// Kills what is left, then detaches and removes the sandbox — only once it
// is empty: a process still inside must stay enforced.
void end_sandbox(Client& client, const std::string& cgroup, bool use_cgroup_kill) {
    if (!kill_subtree(cgroup, kKillTimeout, use_cgroup_kill)) {
        std::cerr << "redirctl: processes in sandbox " << cgroup << " survived SIGKILL for "
                  << kKillTimeout.count() << " s; it stays attached (enforced) — detach it with "
                  << "`redirctl detach --cgroup " << cgroup << "` once its cgroup.procs is empty\n";
        return;
    }
    try {
        if (auto d = client.call(control::DetachRequest{cgroup}); !d) report_error(d.error);
    } catch (const Failure& f) {
        std::cerr << "redirctl: " << f.message << "\n";
    }
    if (!remove_subtree(cgroup))
        std::cerr << "redirctl: cannot remove sandbox cgroup " << cgroup << ": " << std::strerror(errno) << "\n";
}

// What a SIGKILLed run could not do: detach and remove its (empty) sandbox.
// Best effort: a failure leaves it as it was — attached, enforced, empty.
void sweep_abandoned(Client& client, const std::string& mount) {
    for (auto& cg : abandoned_run_sandboxes(mount)) {
        try {
            if (client.call(control::DetachRequest{cg})) remove_subtree(cg);
        } catch (const Failure&) {
            return;  // the agent is unreachable: the attach below will say so
        }
    }
}

std::unique_ptr<RunNetns> make_run_netns(const RunOptions& opts) {
    try {
        return std::make_unique<RunNetns>(netns_pool(opts.netns_pool), netns_pool6(opts.netns_pool6));
    } catch (const redir::Error& e) {
        throw Failure{std::string("cannot set up the sandbox's network namespace: ") + e.what()};
    }
}

}  // namespace

int run_sandboxed(const RunOptions& opts) {
    RunUser user = resolve_run_user(opts.user, std::getenv("SUDO_UID"), std::getenv("SUDO_GID"));
    Fallbacks fb = fallbacks_from_env();
    auto mnt = redir::loader::find_cgroup2_mount();
    if (!mnt) throw Failure{"no cgroup v2 hierarchy is mounted; redir sandboxes are cgroup v2 directories"};
    std::string rel = "/redir-run-" + std::to_string(::getpid());
    std::string cg = *mnt + rel;
    Client client(opts.socket_path);
    sweep_abandoned(client, *mnt);
    // Root-owned and 0755: the command can neither leave it nor create cgroups in it.
    if (::mkdir(cg.c_str(), 0755) != 0)
        throw Failure{"cannot create sandbox cgroup " + cg + ": " + std::strerror(errno)};

    control::Answer<control::AttachReply> d;
    // Declared before the sandbox's end so it outlives the detach; gone by
    // itself (the kernel's doing) if run is SIGKILLed.
    std::unique_ptr<RunNetns> net;
    try {
        if (opts.netns) net = make_run_netns(opts);
        auto req = attach_request(cg, opts.policy);
        if (net) {
            // Its redirects land on the agent's end of the veth, not on its own loopback.
            req.netns = net->path();
            req.redirect_via = net->redirect_via();
        }
        d = client.call(req);
    } catch (...) {
        ::rmdir(cg.c_str());
        throw;
    }
    if (!d) {
        ::rmdir(cg.c_str());
        return report_error(d.error);
    }

    RunFiles files;
    int rc = kRunFailed;
    try {
        write_run_files(files, client, user);
        // Blocked before the child exists, so no signal is lost; the child unblocks.
        sigset_t mask;
        sigemptyset(&mask);
        for (int s : {SIGCHLD, SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&mask, s);
        ::sigprocmask(SIG_BLOCK, &mask, nullptr);
        redir::UniqueFd sigfd(::signalfd(-1, &mask, SFD_CLOEXEC));
        redir::UniqueFd cgfd(::open(cg.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
        int sv[2];
        if (!sigfd || !cgfd || ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
            throw Failure{std::string("cannot prepare to start the command: ") + std::strerror(errno)};
        redir::UniqueFd mine(sv[0]), theirs(sv[1]);

        ChildPlan plan{cg, rel, false, user, &files, &opts.command, net ? net->fd() : -1};
        pid_t pid = spawn(cgfd.get(), !fb.no_clone3, plan.entered);
        if (pid < 0) throw Failure{std::string("cannot start the command: ") + std::strerror(errno)};
        if (pid == 0) {
            mine.reset();
            child_main(theirs.get(), plan);
        }
        theirs.reset();
        std::string err = await_exec(mine.get(), pid, user);
        if (!err.empty()) std::cerr << "redirctl: " << err << "\n";
        rc = supervise(pid, sigfd.get(), cg, !fb.no_cgroup_kill);
    } catch (...) {
        end_sandbox(client, cg, !fb.no_cgroup_kill);
        throw;
    }
    end_sandbox(client, cg, !fb.no_cgroup_kill);
    return rc;
}

}  // namespace redir::ctl
