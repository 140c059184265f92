#include "terminator/flat_fields.hpp"

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/rfc7230.hpp>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>

namespace redir::terminator {

namespace http = boost::beast::http;
using boost::beast::error_code;

namespace {

// What basic_fields trims off a value (the parser has trimmed it already:
// kept so the two hold the same bytes whatever a parser lets through).
std::string_view trim_ows(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
}

}  // namespace

void FlatFields::add(field f, std::string_view name, std::string_view value) {
    value = trim_ows(value);
    // The parsers' header limits are 32-bit: a longer name or value cannot come.
    constexpr std::size_t kMax = std::numeric_limits<std::uint32_t>::max();
    if (name.size() > kMax || value.size() > kMax) throw std::length_error("header field too large");
    void* p = arena_->allocate(sizeof(Field) + name.size() + value.size(), alignof(Field));
    auto* e = ::new (p) Field;
    e->f_ = f;
    e->name_len_ = static_cast<std::uint32_t>(name.size());
    e->value_len_ = static_cast<std::uint32_t>(value.size());
    char* bytes = reinterpret_cast<char*>(e + 1);
    if (!name.empty()) std::memcpy(bytes, name.data(), name.size());
    if (!value.empty()) std::memcpy(bytes + name.size(), value.data(), value.size());
    (tail_ ? tail_->next_ : head_) = e;
    tail_ = e;
    ++size_;
}

std::string_view FlatFields::keep(std::string_view s) {
    if (s.empty()) return {};
    char* p = static_cast<char*>(arena_->allocate(s.size(), 1));
    std::memcpy(p, s.data(), s.size());
    return {p, s.size()};
}

const FlatFields::Field* FlatFields::find(field f) const {
    for (const Field* e = head_; e; e = e->next_)
        if (e->f_ == f) return e;
    return nullptr;
}

const FlatFields::Field* FlatFields::find(std::string_view name) const {
    const field f = http::string_to_field(name);
    if (f != field::unknown) return find(f);
    for (const Field* e = head_; e; e = e->next_)
        if (e->f_ == field::unknown && boost::beast::iequals(e->name_string(), name)) return e;
    return nullptr;
}

std::size_t FlatFields::count(field f) const {
    std::size_t n = 0;
    for (const Field* e = head_; e; e = e->next_) n += e->f_ == f;
    return n;
}

std::size_t FlatFields::count(std::string_view name) const {
    const field f = http::string_to_field(name);
    if (f != field::unknown) return count(f);
    std::size_t n = 0;
    for (const Field* e = head_; e; e = e->next_)
        n += e->f_ == field::unknown && boost::beast::iequals(e->name_string(), name);
    return n;
}

std::string_view FlatFields::operator[](field f) const {
    const Field* e = find(f);
    return e ? e->value() : std::string_view{};
}

bool FlatFields::keep_alive(unsigned version) const {
    const Field* c = find(field::connection);
    const auto v = c ? c->value() : std::string_view{};
    if (version < 11) return c && http::token_list{v}.exists("keep-alive");
    return !c || !http::token_list{v}.exists("close");
}

// ---- RequestParser: what http::request_parser<http::string_body> does ----

void RequestParser::on_request_impl(http::verb method, sv method_str, sv target, int version, error_code& ec) {
    method_ = method;
    // A known method is exactly its canonical string (string_to_verb matched it).
    method_string_ = method != http::verb::unknown ? std::string_view(http::to_string(method))
                                                   : fields_.keep(method_str);
    target_ = fields_.keep(target);
    version_ = static_cast<unsigned>(version);
    ec = {};
}

void RequestParser::on_field_impl(http::field name, sv name_string, sv value, error_code& ec) {
    fields_.add(name, name_string, value);
    ec = {};
}

void RequestParser::on_header_impl(error_code& ec) { ec = {}; }

void RequestParser::on_body_init_impl(const boost::optional<std::uint64_t>& content_length, error_code& ec) {
    ec = {};
    if (!content_length) return;
    if (*content_length > body_.max_size()) {
        ec = http::error::buffer_overflow;
        return;
    }
    body_.reserve(static_cast<std::size_t>(*content_length));
}

std::size_t RequestParser::on_body_impl(sv body, error_code& ec) {
    if (body.size() > body_.max_size() - body_.size()) {
        ec = http::error::buffer_overflow;
        return 0;
    }
    body_.append(body.data(), body.size());
    ec = {};
    return body.size();
}

void RequestParser::on_chunk_header_impl(std::uint64_t, sv, error_code& ec) { ec = {}; }

std::size_t RequestParser::on_chunk_body_impl(std::uint64_t, sv body, error_code& ec) {
    return on_body_impl(body, ec);
}

void RequestParser::on_finish_impl(error_code& ec) { ec = {}; }

// ---- ResponseParser: what http::response_parser<http::buffer_body> does ----

void ResponseParser::on_response_impl(int code, sv reason, int version, error_code& ec) {
    status_ = code;
    reason_ = fields_.keep(reason);
    version_ = static_cast<unsigned>(version);
    ec = {};
}

void ResponseParser::on_field_impl(http::field name, sv name_string, sv value, error_code& ec) {
    fields_.add(name, name_string, value);
    ec = {};
}

void ResponseParser::on_header_impl(error_code& ec) { ec = {}; }

void ResponseParser::on_body_init_impl(const boost::optional<std::uint64_t>&, error_code& ec) { ec = {}; }

std::size_t ResponseParser::take(std::string_view body, error_code& ec) {
    if (!piece_.data) {
        ec = http::error::need_buffer;
        return 0;
    }
    const std::size_t n = std::min(piece_.size, body.size());
    if (n != 0) std::memcpy(piece_.data, body.data(), n);
    piece_.data += n;
    piece_.size -= n;
    if (n == body.size())
        ec = {};
    else
        ec = http::error::need_buffer;
    return n;
}

std::size_t ResponseParser::on_body_impl(sv body, error_code& ec) { return take(body, ec); }

void ResponseParser::on_chunk_header_impl(std::uint64_t, sv, error_code& ec) { ec = {}; }

std::size_t ResponseParser::on_chunk_body_impl(std::uint64_t, sv body, error_code& ec) { return take(body, ec); }

void ResponseParser::on_finish_impl(error_code& ec) { ec = {}; }

}  // namespace redir::terminator
