#pragma once
// The server side of the command table: one handler slot per command, filled
// by the agent; a request line is decoded, handed to its slot, and the typed
// reply encoded. There is no chain of names to keep in step with the table.
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "control/protocol.hpp"

namespace redir::control {

// The client end of a control connection, for handlers that answer with
// more than one line (events --follow).
class Connection {
public:
    virtual ~Connection() = default;
    // Queues one line to the client; false once the client is gone.
    virtual bool send(std::string line) = 0;
    virtual bool alive() const = 0;
};

class Dispatcher {
public:
    using Conn = std::shared_ptr<Connection>;

    Dispatcher() : slots_(command_names().size()) {}

    // Serves command REQ with H, called as H(const REQ&) or H(const REQ&, const Conn&),
    // returning REQ::Reply. A command that fails throws; the caller of dispatch
    // turns that into an error reply.
    template <class Req, class H>
    void on(H h) {
        slots_[Request(std::in_place_type<Req>).index()] = [h = std::move(h)](const Request& r, const Conn& c) {
            const Req& req = std::get<Req>(r);
            if constexpr (std::is_invocable_v<H&, const Req&, const Conn&>)
                return encode_reply<typename Req::Reply>(h(req, c));
            else
                return encode_reply<typename Req::Reply>(h(req));
        };
    }

    // Serves each command with a member function of O: Reply (O::*)(const Req&)
    // or Reply (O::*)(const Req&, const Conn&); the request type names the command.
    template <class O, class... M>
    void on_members(O* o, M... m) {
        (on_member(o, m), ...);
    }

    // The answer line to request LINE. A request that is not well formed gets
    // the typed error (ProtocolError never escapes); a handler's exception does.
    std::string dispatch(std::string_view line, const Conn& conn) const;

    // Commands of the table no handler serves (empty once the agent is wired).
    std::vector<std::string_view> unserved() const;

private:
    template <class O, class Reply, class Req>
    void on_member(O* o, Reply (O::*m)(const Req&)) {
        static_assert(std::is_same_v<Reply, typename Req::Reply>, "a handler returns its request's Reply");
        on<Req>([o, m](const Req& r) { return (o->*m)(r); });
    }
    template <class O, class Reply, class Req>
    void on_member(O* o, Reply (O::*m)(const Req&, const Conn&)) {
        static_assert(std::is_same_v<Reply, typename Req::Reply>, "a handler returns its request's Reply");
        on<Req>([o, m](const Req& r, const Conn& c) { return (o->*m)(r, c); });
    }

    using Slot = std::function<std::string(const Request&, const Conn&)>;
    std::vector<Slot> slots_;  // indexed like Request's alternatives
};

}  // namespace redir::control
