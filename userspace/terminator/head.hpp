#pragma once
// A parsed Beast request header → the routing facts decide_route() reads.
// Shared by the gateway and the HTTP fuzz target, so the fuzzer exercises the
// very bytes → decision path the gateway runs.
#include <boost/beast/http/message.hpp>

#include "terminator/request.hpp"

namespace redir::terminator {

template <class Fields>
RequestHead head_of(const boost::beast::http::request_header<Fields>& req) {
    namespace http = boost::beast::http;
    RequestHead h;
    h.method = req.method_string();
    h.target = req.target();
    h.version = req.version();
    h.transfer_encoding_count = req.count(http::field::transfer_encoding);
    if (h.transfer_encoding_count) h.transfer_encoding = req[http::field::transfer_encoding];
    h.host_count = req.count(http::field::host);
    if (auto e = req.find(http::field::expect); e != req.end()) {
        h.has_expect = true;
        h.expect = e->value();
    }
    h.anthropic_client = req.count("anthropic-version") > 0;
    return h;
}

}  // namespace redir::terminator
