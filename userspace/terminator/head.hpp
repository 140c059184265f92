#pragma once
// A parsed request header → the routing facts decide_route() reads.
// Shared by the gateway and the HTTP fuzz target, so the fuzzer exercises the
// very bytes → decision path the gateway runs.
#include <boost/beast/core/string.hpp>

#include "terminator/flat_fields.hpp"
#include "terminator/request.hpp"

namespace redir::terminator {

// One pass over the fields: the first Transfer-Encoding and Expect values
// (what basic_fields' operator[] and find gave), how many of each there are.
inline RequestHead head_of(const RequestParser& req) {
    namespace http = boost::beast::http;
    RequestHead h;
    h.method = req.method_string();
    h.target = req.target();
    h.version = req.version();
    for (const auto& f : req.fields()) {
        switch (f.name()) {
            case http::field::transfer_encoding:
                if (h.transfer_encoding_count++ == 0) h.transfer_encoding = f.value();
                break;
            case http::field::host:
                ++h.host_count;
                break;
            case http::field::expect:
                if (!h.has_expect) {
                    h.has_expect = true;
                    h.expect = f.value();
                }
                break;
            case http::field::unknown:
                if (boost::beast::iequals(f.name_string(), "anthropic-version")) h.anthropic_client = true;
                break;
            default:
                break;
        }
    }
    return h;
}

}  // namespace redir::terminator
