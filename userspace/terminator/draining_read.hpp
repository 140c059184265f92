#pragma once
// A socket read that tells Asio's reactor when it emptied the socket, so the
// next read waits for epoll instead of first trying recv(2) and getting
// EAGAIN.
//
// Asio starts every read with a "speculative" recv(2), skipped only while the
// descriptor is marked exhausted; its own receive operation marks it so only
// at the end of the stream. A keep-alive request started ~1.9 reads that
// found nothing (the provider's answer, read right after the request went
// out; the sandbox's next request; the watch on the sandbox during the call):
// ~0.4 us each, about 2% of a request.
//
// The kernel says when a read emptied the socket: with TCP_INQ set,
// recvmsg(2) returns the bytes still queued as a control message, and
// reports 1 when none are but a FIN is, so the end of the stream still gets
// read (a FIN that came with the last bytes raises no edge of its own:
// "short read means empty" would wait for it forever). When the count is 0,
// anything that arrives later raises a new epoll edge, which Asio turns back
// into a speculative attempt (perform_io sets try_speculative_): marking the
// read exhausted loses no byte and no wake-up, it only skips the recv(2) that
// would have found nothing. Without the control message (TCP_INQ refused)
// the read behaves exactly as Asio's.
//
// The mechanism: reads given a DrainingBuffer instantiate Asio's receive
// operation with this file's specialisation of its perform step
// (reactive_socket_recv_op_base), Asio's own but for recvmsg and the queue
// count. Written against Boost 1.81's reactor; the build fails if the names
// it uses change.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <boost/asio/buffer.hpp>
#include <boost/asio/detail/reactive_socket_recv_op.hpp>
#include <boost/asio/detail/socket_ops.hpp>
#include <boost/asio/detail/socket_option.hpp>
#include <boost/asio/error.hpp>
#include <cerrno>
#include <cstring>

namespace redir::terminator {

// One buffer for a read from a TCP socket that has TCP_INQ set.
struct DrainingBuffer : boost::asio::mutable_buffer {
    DrainingBuffer() = default;
    explicit DrainingBuffer(boost::asio::mutable_buffer b) : boost::asio::mutable_buffer(b) {}
};

// Set on a connected TCP socket (a failure only costs the saving).
using QueueHint = boost::asio::detail::socket_option::boolean<IPPROTO_TCP, TCP_INQ>;

namespace detail {

enum class Recv { WouldBlock, Got, Drained };

// One non-blocking recvmsg(2) into B: Drained when it read something and
// the kernel says nothing (not even a FIN) is left behind it. EC and N as
// Asio's non_blocking_recv1 sets them (end of stream: eof, 0 bytes).
inline Recv recv_counting_queue(int fd, boost::asio::mutable_buffer b, int flags, boost::system::error_code& ec,
                                std::size_t& n) {
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    for (;;) {
        iovec iov{b.data(), b.size()};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        const ssize_t r = ::recvmsg(fd, &msg, flags | MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return Recv::WouldBlock;
            ec.assign(errno, boost::asio::error::get_system_category());
            n = 0;
            return Recv::Got;
        }
        if (r == 0) {
            ec = boost::asio::error::eof;
            n = 0;
            return Recv::Drained;  // as Asio: nothing more will come
        }
        n = static_cast<std::size_t>(r);
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_TCP && c->cmsg_type == TCP_CM_INQ && c->cmsg_len >= CMSG_LEN(sizeof(int))) {
                int left = 0;
                std::memcpy(&left, CMSG_DATA(c), sizeof left);
                return left == 0 ? Recv::Drained : Recv::Got;
            }
        }
        return Recv::Got;  // no count: as Asio, try again next time
    }
}

}  // namespace detail
}  // namespace redir::terminator

namespace boost::asio::detail {

template <>
class reactive_socket_recv_op_base<redir::terminator::DrainingBuffer> : public reactor_op {
public:
    reactive_socket_recv_op_base(const boost::system::error_code& success_ec, socket_type socket,
                                 socket_ops::state_type /*state*/, const redir::terminator::DrainingBuffer& buffer,
                                 socket_base::message_flags flags, func_type complete_func)
        : reactor_op(success_ec, &reactive_socket_recv_op_base::do_perform, complete_func),
          socket_(socket),
          buffer_(buffer),
          flags_(flags) {}

    static status do_perform(reactor_op* base) {
        using redir::terminator::detail::Recv;
        auto* o = static_cast<reactive_socket_recv_op_base*>(base);
        switch (redir::terminator::detail::recv_counting_queue(o->socket_, o->buffer_, o->flags_, o->ec_,
                                                                o->bytes_transferred_)) {
        case Recv::WouldBlock:
            return not_done;
        case Recv::Drained:
            return done_and_exhausted;
        case Recv::Got:
            break;
        }
        return done;
    }

private:
    socket_type socket_;
    redir::terminator::DrainingBuffer buffer_;
    socket_base::message_flags flags_;
};

}  // namespace boost::asio::detail
