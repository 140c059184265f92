// The agent's state files and the common JSON state writer: round trips,
// file modes, the pretty layout people read, and no temp files left behind.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "agent/state_store.hpp"
#include "common/atomic_file.hpp"
#include "common/json_out.hpp"
#include "common/json_state.hpp"

namespace fs = std::filesystem;
using namespace redir;

namespace {

// A private directory for one test, removed with everything in it.
struct TempDir {
    std::string path = fs::temp_directory_path() / ("redir-state-" + std::to_string(::getpid()) + "-" +
                                                    ::testing::UnitTest::GetInstance()->current_test_info()->name());
    TempDir() { fs::create_directories(path); }
    ~TempDir() { fs::remove_all(path); }
};

unsigned mode_of(const std::string& p) {
    struct stat st {};
    EXPECT_EQ(::stat(p.c_str(), &st), 0) << p;
    return st.st_mode & 07777;
}

// Files whose names start with '.' are the atomic writer's temp files.
size_t hidden_files(const std::string& d) {
    size_t n = 0;
    for (auto& e : fs::recursive_directory_iterator(d)) n += e.path().filename().string()[0] == '.';
    return n;
}

class StateStoreTest : public ::testing::Test {
protected:
    TempDir tmp_;
    std::string dir_ = tmp_.path;
};

TEST_F(StateStoreTest, PoliciesAttachmentsAndNextIdSurviveAReopen) {
    {
        agent::StateStore s(dir_);
        s.save_policy({"web", "{\"name\": \"web\",\n \"q\": \"\\\"x\\u0000\"}", "web.json"});
        s.save_attachments({{"/sys/fs/cgroup/a \"b\"", 42, "web"}, {"/c", 18446744073709551615ull, "web"}});
        s.save_next_policy_id(7);
    }
    agent::StateStore s(dir_);
    auto ps = s.load_policies();
    ASSERT_EQ(ps.size(), 1u);
    EXPECT_EQ(ps["web"].source, "{\"name\": \"web\",\n \"q\": \"\\\"x\\u0000\"}");
    EXPECT_EQ(ps["web"].source_name, "web.json");
    auto as = s.load_attachments();
    ASSERT_EQ(as.size(), 2u);
    EXPECT_EQ(as[0].cgroup_path, "/sys/fs/cgroup/a \"b\"");
    EXPECT_EQ(as[0].cgroup_id, 42u);
    EXPECT_EQ(as[1].cgroup_id, 18446744073709551615ull);
    EXPECT_EQ(s.load_next_policy_id(), 7u);
    EXPECT_EQ(mode_of(dir_ + "/policies/web.json"), 0600u);
    EXPECT_EQ(mode_of(dir_ + "/attachments.json"), 0600u);
    EXPECT_EQ(mode_of(dir_ + "/agent.json"), 0600u);
    EXPECT_EQ(hidden_files(dir_), 0u);
}

TEST_F(StateStoreTest, JsonStateWriterReplacesPrettyJsonAtTheGivenModeAndCreatesItsDirectory) {
    std::string path = dir_ + "/sub/deeper/state.json";
    write_json_state(path, [](PrettyJsonOut& j) { j.begin().num("version", 1).str("k", "v1").end(); }, 0640);
    EXPECT_EQ(read_file(path), "{\n    \"version\": 1,\n    \"k\": \"v1\"\n}");
    EXPECT_EQ(mode_of(path), 0640u);
    EXPECT_EQ(mode_of(dir_ + "/sub"), 0700u);
    write_json_state(path, [](PrettyJsonOut& j) { j.begin().str("k", "v2").end(); });
    EXPECT_EQ(read_file(path), "{\n    \"k\": \"v2\"\n}");
    EXPECT_EQ(mode_of(path), 0600u);
    EXPECT_EQ(hidden_files(dir_), 0u);
}

TEST(JsonOut, EscapesEveryStringAndKeepsCompactLayout) {
    EXPECT_EQ(json_quote("a\"b\\c\n\x01"), "\"a\\\"b\\\\c\\n\\u0001\"");
    EXPECT_EQ(json_quote(std::string_view("x\0y", 3)), "\"x\\u0000y\"");
    JsonOut j;
    j.begin().str("k\"", "v").num("n", 3).boolean("b", false).begin_array("a").num(1).str("s").end_array();
    j.raw("r", "{\"x\":1}").end();
    EXPECT_EQ(j.take(), "{\"k\\\"\":\"v\",\"n\":3,\"b\":false,\"a\":[1,\"s\"],\"r\":{\"x\":1}}");
}

}  // namespace
