// DrainingBuffer (terminator/draining_read.hpp): a read the kernel says
// emptied the socket skips the next read's recvmsg(2) until epoll reports
// new bytes, and nothing that arrives is ever left unread: bytes that came
// while no read was pending, a FIN that came with the last bytes, a read
// that filled its buffer. Counted by interposing recvmsg(2) in this binary
// (its own, for that reason); TCP on 127.0.0.1.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <atomic>
#include <chrono>
#include <optional>
#include <string>

#include "terminator/draining_read.hpp"

namespace {
std::atomic<int> g_counted_fd{-1};
std::atomic<int> g_recvmsg_calls{0};
}  // namespace

// Every recvmsg(2) this binary makes on the watched descriptor is counted.
extern "C" ssize_t recvmsg(int fd, struct msghdr* msg, int flags) {
    using Fn = ssize_t (*)(int, struct msghdr*, int);
    static Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "recvmsg"));
    if (fd == g_counted_fd.load()) g_recvmsg_calls.fetch_add(1);
    return real(fd, msg, flags);
}

namespace redir::terminator {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using namespace std::chrono_literals;

// The socket under test (Asio, on IO) and its peer (a plain descriptor the
// test writes to), connected over 127.0.0.1.
struct Pair {
    asio::io_context io{1};
    asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
    tcp::socket socket{io};
    int peer = -1;

    explicit Pair(bool queue_hint) {
        tcp::acceptor acc(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
        tcp::socket client(io);
        client.connect(acc.local_endpoint());
        acc.accept(socket);
        peer = client.release();
        if (queue_hint) socket.set_option(QueueHint(true));
        socket.non_blocking(true);
        g_counted_fd = socket.native_handle();
        g_recvmsg_calls = 0;
    }
    ~Pair() {
        g_counted_fd = -1;
        if (peer >= 0) ::close(peer);
    }
    void send(const std::string& s) { ASSERT_EQ(::send(peer, s.data(), s.size(), 0), ssize_t(s.size())); }

    // One read into a buffer of SIZE; the result once it completes.
    struct Result {
        error_code ec;
        std::string data;
    };
    std::optional<Result> result;
    char buf[4096];
    void start_read(std::size_t size = sizeof buf) {
        result.reset();
        socket.async_read_some(DrainingBuffer(asio::buffer(buf, size)), [this](error_code ec, std::size_t n) {
            result = Result{ec, std::string(buf, n)};
        });
    }
    // Runs IO until the read completes (or a generous bound passes).
    bool finish() {
        const auto deadline = std::chrono::steady_clock::now() + 10s;
        while (!result && std::chrono::steady_clock::now() < deadline) io.run_one_for(50ms);
        return result.has_value();
    }
    // Every ready handler and one look at epoll, without waiting.
    void settle() {
        for (int i = 0; i < 3; ++i) io.poll();
        io.restart();
    }
};

TEST(DrainingReadTest, ReadThatEmptiedTheSocketSkipsTheNextEmptyRecvmsg) {
    Pair p(true);
    p.send("request one");
    p.start_read();
    ASSERT_TRUE(p.finish());
    EXPECT_EQ(p.result->data, "request one");
    EXPECT_EQ(g_recvmsg_calls.load(), 1);

    // Nothing has arrived: starting the next read and letting the loop turn
    // makes no system call on the socket (Asio's own read would try once).
    p.start_read();
    p.settle();
    EXPECT_FALSE(p.result);
    EXPECT_EQ(g_recvmsg_calls.load(), 1);

    // What arrives later completes it, with one call.
    p.send("request two");
    ASSERT_TRUE(p.finish());
    EXPECT_EQ(p.result->data, "request two");
    EXPECT_EQ(g_recvmsg_calls.load(), 2);
}

TEST(DrainingReadTest, WithoutTheQueueHintEveryReadTriesFirstAsAsioDoes) {
    Pair p(false);
    p.send("request one");
    p.start_read();
    ASSERT_TRUE(p.finish());
    EXPECT_EQ(g_recvmsg_calls.load(), 1);
    p.start_read();
    p.settle();
    EXPECT_FALSE(p.result);
    EXPECT_EQ(g_recvmsg_calls.load(), 2);  // the speculative attempt that found nothing
    p.send("request two");
    ASSERT_TRUE(p.finish());
    EXPECT_EQ(p.result->data, "request two");
}

TEST(DrainingReadTest, BytesThatArriveWhileNoReadIsPendingAreReadNext) {
    Pair p(true);
    p.send("first");
    p.start_read();
    ASSERT_TRUE(p.finish());
    // The socket was drained; new bytes arrive and the loop sees their edge
    // with no read waiting for it.
    p.send("second");
    p.settle();
    p.start_read();
    ASSERT_TRUE(p.finish()) << "bytes whose edge was seen with no read pending were never read";
    EXPECT_EQ(p.result->data, "second");
}

TEST(DrainingReadTest, FinThatCameWithTheLastBytesIsReportedAsTheEnd) {
    Pair p(true);
    // The read waits first, so the bytes and the FIN reach it as one edge.
    p.start_read();
    p.settle();
    ASSERT_FALSE(p.result);
    p.send("last words");
    ASSERT_EQ(::shutdown(p.peer, SHUT_WR), 0);
    ASSERT_TRUE(p.finish());
    EXPECT_EQ(p.result->data, "last words");
    // No new edge will come for the FIN: the read must not wait for one.
    p.start_read();
    ASSERT_TRUE(p.finish()) << "the end of the stream that came with the last bytes was never reported";
    EXPECT_EQ(p.result->ec, asio::error::eof);
}

TEST(DrainingReadTest, ReadThatFilledItsBufferLeavesTheRestToTheNextRead) {
    Pair p(true);
    p.send("0123456789");
    p.start_read(4);
    ASSERT_TRUE(p.finish());
    EXPECT_EQ(p.result->data, "0123");
    p.settle();  // the edge of those bytes is spent
    p.start_read(4);
    ASSERT_TRUE(p.finish()) << "bytes left behind a full read were never read";
    EXPECT_EQ(p.result->data, "4567");
    p.start_read();
    ASSERT_TRUE(p.finish());
    EXPECT_EQ(p.result->data, "89");
}

TEST(DrainingReadTest, ResetAfterADrainingReadFailsTheNextRead) {
    Pair p(true);
    p.send("hello");
    p.start_read();
    ASSERT_TRUE(p.finish());
    p.start_read();
    p.settle();
    linger l{1, 0};  // close with a reset
    ASSERT_EQ(::setsockopt(p.peer, SOL_SOCKET, SO_LINGER, &l, sizeof l), 0);
    ::close(p.peer);
    p.peer = -1;
    ASSERT_TRUE(p.finish()) << "a reset after a draining read was never reported";
    EXPECT_EQ(p.result->ec, asio::error::connection_reset);
}

}  // namespace
}  // namespace redir::terminator
