// The agent's containment checks: capability names, private directories,
// a process's cgroup.
#include "agent/containment.hpp"

#include <gtest/gtest.h>
#include <linux/capability.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "loader/cgroup.hpp"

namespace fs = std::filesystem;
using namespace redir::agent;

namespace {

mode_t mode_of(const fs::path& p) {
    struct stat st {};
    ::lstat(p.c_str(), &st);
    return st.st_mode & 07777;
}

struct TempDir {
    fs::path path;
    TempDir() {
        char t[] = "/tmp/redir-containment-XXXXXX";
        path = ::mkdtemp(t);
    }
    ~TempDir() { fs::remove_all(path); }
};

}  // namespace

TEST(CapNames, NamesOnlyEnforcementBreakingCapabilities) {
    uint64_t mask = (1ULL << CAP_SYS_ADMIN) | (1ULL << CAP_NET_RAW) | (1ULL << CAP_KILL) | (1ULL << 39);
    auto names = cap_names(mask);
    ASSERT_EQ(names.size(), 3u);
    EXPECT_NE(std::find(names.begin(), names.end(), "CAP_SYS_ADMIN"), names.end());
    EXPECT_NE(std::find(names.begin(), names.end(), "CAP_NET_RAW"), names.end());
    EXPECT_NE(std::find(names.begin(), names.end(), "CAP_BPF"), names.end());
    EXPECT_TRUE(cap_names(1ULL << CAP_KILL).empty());
    EXPECT_EQ(enforcement_breaking_caps() & (1ULL << CAP_KILL), 0u);
}

TEST(CapableWarning, NamesCgroupPidCommAndCaps) {
    CapableProcess p{4242, "sh", 1ULL << CAP_NET_ADMIN};
    auto w = capable_warning("/sys/fs/cgroup/x", {p});
    EXPECT_NE(w.find("/sys/fs/cgroup/x"), std::string::npos);
    EXPECT_NE(w.find("pid 4242 (sh) holds CAP_NET_ADMIN"), std::string::npos);
}

TEST(MakePrivateTree, RemovesGroupAndOtherBitsEverywhere) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root: the directory must be owned by root";
    TempDir d;
    fs::create_directories(d.path / "sub");
    std::ofstream(d.path / "sub" / "secret") << "k";
    ::chmod(d.path.c_str(), 0755);
    ::chmod((d.path / "sub").c_str(), 0755);
    ::chmod((d.path / "sub" / "secret").c_str(), 0644);
    EXPECT_TRUE(make_private_tree(d.path, "state dir"));
    EXPECT_EQ(mode_of(d.path), 0700u);
    EXPECT_EQ(mode_of(d.path / "sub"), 0700u);
    EXPECT_EQ(mode_of(d.path / "sub" / "secret"), 0600u);
    EXPECT_FALSE(make_private_tree(d.path, "state dir"));  // nothing left to fix
}

TEST(MakePrivateTree, RefusesADirectoryNotOwnedByRoot) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to chown";
    TempDir d;
    ASSERT_EQ(::chown(d.path.c_str(), 4242, 4242), 0);
    try {
        make_private_tree(d.path, "state dir");
        FAIL() << "a directory owned by uid 4242 was accepted";
    } catch (const std::exception& e) {
        EXPECT_NE(std::string(e.what()).find("owned by uid 4242, not root"), std::string::npos) << e.what();
    }
}

TEST(MakePrivateTree, RefusesASymlink) {
    TempDir d;
    fs::create_directory_symlink(d.path, d.path / "link");
    EXPECT_THROW(make_private_tree(d.path / "link", "run dir"), std::exception);
}

TEST(ProcessCgroup, OwnCgroupMatchesTheLoadersView) {
    auto mine = process_cgroup(::getpid());
    auto loader_view = redir::loader::current_cgroup_path();
    if (!loader_view) GTEST_SKIP() << "no cgroup v2 hierarchy mounted";
    ASSERT_TRUE(mine);
    EXPECT_TRUE(fs::equivalent(*mine, *loader_view)) << *mine << " vs " << *loader_view;
    EXPECT_FALSE(cgroup_lineage_ids(*mine).empty());
    EXPECT_FALSE(process_cgroup(-1));
}
