// Who `redirctl run` runs a command as: defaults, --user forms, refusals.
#include "run_user.hpp"

#include <gtest/gtest.h>

#include "client.hpp"

using redir::ctl::Failure;
using redir::ctl::resolve_run_user;

namespace {

std::string refusal(const std::string& spec) {
    try {
        resolve_run_user(spec, nullptr, nullptr);
    } catch (const Failure& f) {
        return f.message;
    }
    return "";
}

}  // namespace

TEST(RunUser, DefaultIsNobodyWithoutSudo) {
    auto u = resolve_run_user("", nullptr, nullptr);
    EXPECT_EQ(u.uid, 65534u);
    EXPECT_EQ(u.gid, 65534u);
    EXPECT_FALSE(u.ns_root);
}

TEST(RunUser, DefaultIsTheSudoCaller) {
    auto u = resolve_run_user("", "4242", "4343");
    EXPECT_EQ(u.uid, 4242u);
    EXPECT_EQ(u.gid, 4343u);
    // sudo run by root itself is no caller to fall back to.
    EXPECT_EQ(resolve_run_user("", "0", "0").uid, 65534u);
    EXPECT_EQ(resolve_run_user("", "not-a-number", nullptr).uid, 65534u);
}

TEST(RunUser, RootIsRootOfAUserNamespaceMappedToTheDefault) {
    auto u = resolve_run_user("root", "4242", "4343");
    EXPECT_TRUE(u.ns_root);
    EXPECT_EQ(u.uid, 4242u);
    EXPECT_EQ(u.gid, 4343u);
    EXPECT_EQ(u.name, "root");
    EXPECT_TRUE(resolve_run_user("0", nullptr, nullptr).ns_root);
    EXPECT_EQ(resolve_run_user("0", nullptr, nullptr).uid, 65534u);
}

TEST(RunUser, NumericAndNamedUsersAndGroups) {
    auto u = resolve_run_user("4242:4343", nullptr, nullptr);
    EXPECT_EQ(u.uid, 4242u);
    EXPECT_EQ(u.gid, 4343u);
    EXPECT_FALSE(u.ns_root);
    EXPECT_EQ(resolve_run_user("nobody", nullptr, nullptr).uid, 65534u);
    EXPECT_EQ(resolve_run_user("4242", nullptr, nullptr).gid, 4242u);  // no passwd entry: gid = uid
}

TEST(RunUser, RefusesWhatWouldHandOutPrivilege) {
    EXPECT_NE(refusal("root:root").find("takes no group"), std::string::npos);
    EXPECT_NE(refusal("4242:0").find("gid 0"), std::string::npos);
    EXPECT_NE(refusal("no-such-user-xyz").find("no user named"), std::string::npos);
    EXPECT_NE(refusal("4242:no-such-group-xyz").find("no group named"), std::string::npos);
    EXPECT_NE(refusal("-1").find("no user named"), std::string::npos);
}

TEST(RunUser, UnderSudoOnlyTheCallerNobodyOrNamespaceRoot) {
    auto refused = [](const std::string& spec) {
        try {
            resolve_run_user(spec, "4242", "4343");
        } catch (const Failure& f) {
            return f.message.find("under sudo") != std::string::npos;
        }
        return false;
    };
    EXPECT_FALSE(refused("4242:4343"));
    EXPECT_FALSE(refused("nobody"));
    EXPECT_FALSE(refused("4242:65534"));
    EXPECT_FALSE(refused("root"));
    EXPECT_TRUE(refused("4444"));        // another user
    EXPECT_TRUE(refused("4242:4444"));   // another group (shadow, disk, docker ...)
    EXPECT_FALSE(refused(""));
}
