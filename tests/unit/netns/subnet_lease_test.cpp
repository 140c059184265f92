// Subnet leases: distinct for concurrent holders, free again when a holder
// ends — including when it is SIGKILLed.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <set>

#include "common/error.hpp"
#include "netns/subnet_lease.hpp"

namespace redir::netns {
namespace {

// Each test's lock directory: a fresh path, removed with everything in it.
struct LeaseTest : ::testing::Test {
    std::string dir_ = std::filesystem::temp_directory_path() /
                       ("redir-lease-test-" + std::to_string(::getpid()) + "-" +
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    ~LeaseTest() override { std::filesystem::remove_all(dir_); }
};

TEST_F(LeaseTest, AddressesOfASlot) {
    auto l = SubnetLease::acquire("192.0.2.0/24", dir_);
    EXPECT_EQ(l.slot(), 0u);
    EXPECT_EQ(l.subnet(), "192.0.2.0/30");
    EXPECT_EQ(l.host_addr(), "192.0.2.1");
    EXPECT_EQ(l.sandbox_addr(), "192.0.2.2");
    auto m = SubnetLease::acquire("192.0.2.0/24", dir_);
    EXPECT_EQ(m.subnet(), "192.0.2.4/30");
}

TEST(Subnet6, TheSlotNumbersTheSlash64) {
    auto s = subnet6_of("fd72:6564:6972::/48", 0);
    EXPECT_EQ(s.subnet, "fd72:6564:6972::/64");
    EXPECT_EQ(s.host_addr, "fd72:6564:6972::1");
    EXPECT_EQ(s.sandbox_addr, "fd72:6564:6972::2");
    EXPECT_EQ(subnet6_of("fd72:6564:6972::/48", 0x1234).sandbox_addr, "fd72:6564:6972:1234::2");
    EXPECT_EQ(subnet6_of("fd00:1:2:300::/56", 5).subnet, "fd00:1:2:305::/64");
}

TEST(Subnet6, RefusesWhatCannotHoldTheSlot) {
    EXPECT_THROW(subnet6_of("fd00:1:2:300::/56", 256), Error);  // a /56 has 256 /64s
    EXPECT_THROW(subnet6_of("10.0.0.0/8", 0), Error);
    EXPECT_THROW(subnet6_of("fd00::/64", 0), Error);  // no room for a slot
    EXPECT_THROW(subnet6_of("fd00::/32", 0), Error);  // longer than /48 only: a slot fits 16 bits at most
    EXPECT_THROW(subnet6_of("not-a-prefix", 0), Error);
}

TEST_F(LeaseTest, ReleasedSlotIsReused) {
    {
        auto a = SubnetLease::acquire("192.0.2.0/29", dir_);
        EXPECT_EQ(a.slot(), 0u);
    }
    EXPECT_EQ(SubnetLease::acquire("192.0.2.0/29", dir_).slot(), 0u);
}

TEST_F(LeaseTest, ExhaustedPoolSaysSo) {
    auto a = SubnetLease::acquire("192.0.2.0/29", dir_);
    auto b = SubnetLease::acquire("192.0.2.0/29", dir_);
    try {
        SubnetLease::acquire("192.0.2.0/29", dir_);
        FAIL() << "a third /30 from a /29";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("in use"), std::string::npos) << e.what();
    }
}

TEST_F(LeaseTest, BadPoolIsRejected) {
    EXPECT_THROW(SubnetLease::acquire("192.0.2.0/31", dir_), Error);
    EXPECT_THROW(SubnetLease::acquire("2001:db8::/64", dir_), Error);
    EXPECT_THROW(SubnetLease::acquire("not-a-prefix", dir_), Error);
}

// Processes racing for slots: each reports the slot it got, every one distinct.
TEST_F(LeaseTest, ConcurrentHoldersGetDistinctSlots) {
    constexpr int kProcs = 12;
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    int go[2];
    ASSERT_EQ(::pipe(go), 0);
    std::vector<pid_t> kids;
    for (int i = 0; i < kProcs; ++i) {
        pid_t p = ::fork();
        ASSERT_GE(p, 0);
        if (p == 0) {
            ::close(go[1]);
            char c;
            [[maybe_unused]] auto r = ::read(go[0], &c, 1);  // start together
            auto l = SubnetLease::acquire("192.0.2.0/24", dir_);
            uint32_t s = l.slot();
            [[maybe_unused]] auto w = ::write(fds[1], &s, sizeof(s));
            ::pause();  // hold it until killed
            ::_exit(0);
        }
        kids.push_back(p);
    }
    ::close(go[0]);
    ::close(go[1]);  // releases every child at once
    std::set<uint32_t> slots;
    for (int i = 0; i < kProcs; ++i) {
        uint32_t s;
        ASSERT_EQ(::read(fds[0], &s, sizeof(s)), static_cast<ssize_t>(sizeof(s)));
        slots.insert(s);
    }
    EXPECT_EQ(slots.size(), static_cast<size_t>(kProcs));
    // SIGKILL gives a holder no chance to release: the kernel drops its lock.
    for (pid_t p : kids) ::kill(p, SIGKILL);
    for (pid_t p : kids) ::waitpid(p, nullptr, 0);
    EXPECT_EQ(SubnetLease::acquire("192.0.2.0/24", dir_).slot(), 0u);
    ::close(fds[0]);
    ::close(fds[1]);
}

}  // namespace
}  // namespace redir::netns
