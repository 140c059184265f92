#pragma once
// The sandbox's request and the provider's answer parsed into flat fields:
// Beast's basic_parser (its framing rules, limits and smuggling checks stay
// exactly Beast's) with the fields kept as they came, in wire order, in a
// list carved from the request's arena, instead of a basic_fields (per field
// an element copied, an rbtree insert, a table lookup, and all of it torn
// down again). The gateway reads a handful of fields by name and relays the
// rest in order: a linear look over a few dozen fields is all it needs.
#include <boost/beast/core/string_type.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/verb.hpp>
#include <boost/optional/optional.hpp>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory_resource>
#include <string>
#include <string_view>

namespace redir::terminator {

// A message's header fields in wire order (duplicates kept, each where it
// came). Names and values are copied into ARENA, which must outlive this and
// is never given anything back one by one: a monotonic arena reset whole at
// the end of the request (RequestArena).
class FlatFields {
public:
    using field = boost::beast::http::field;

    // One field: its name and value bytes follow it in the arena.
    class Field {
    public:
        field name() const { return f_; }
        std::string_view name_string() const { return {bytes(), name_len_}; }
        std::string_view value() const { return {bytes() + name_len_, value_len_}; }

    private:
        friend class FlatFields;
        const char* bytes() const { return reinterpret_cast<const char*>(this + 1); }
        Field* next_ = nullptr;
        std::uint32_t name_len_ = 0;
        std::uint32_t value_len_ = 0;
        field f_ = field::unknown;
    };

    // Every field, or with a name given only the fields of that name (a
    // known name: unknown names are looked up with the string overloads).
    class iterator {
    public:
        using iterator_category = std::forward_iterator_tag;
        using value_type = Field;
        using difference_type = std::ptrdiff_t;
        using pointer = const Field*;
        using reference = const Field&;
        iterator() = default;
        reference operator*() const { return *p_; }
        pointer operator->() const { return p_; }
        iterator& operator++() {
            p_ = p_->next_;
            skip();
            return *this;
        }
        iterator operator++(int) {
            auto old = *this;
            ++*this;
            return old;
        }
        friend bool operator==(const iterator& a, const iterator& b) { return a.p_ == b.p_; }

    private:
        friend class FlatFields;
        iterator(const Field* p, field only) : p_(p), only_(only) { skip(); }
        void skip() {
            if (only_ != field::unknown)
                while (p_ && p_->f_ != only_) p_ = p_->next_;
        }
        const Field* p_ = nullptr;
        field only_ = field::unknown;
    };
    struct Range {
        iterator first, last;
        iterator begin() const { return first; }
        iterator end() const { return last; }
    };

    explicit FlatFields(std::pmr::memory_resource* arena) : arena_(arena) {}
    FlatFields(const FlatFields&) = delete;
    FlatFields& operator=(const FlatFields&) = delete;

    // Appends a field, NAME and VALUE copied (VALUE without the optional
    // whitespace at its ends, as basic_fields keeps it).
    void add(field f, std::string_view name, std::string_view value);
    // S copied into the arena (the start line's strings).
    std::string_view keep(std::string_view s);

    iterator begin() const { return {head_, field::unknown}; }
    iterator end() const { return {}; }
    std::size_t size() const { return size_; }
    bool empty() const { return size_ == 0; }

    // The first field named F / NAME (case-insensitive), or null.
    const Field* find(field f) const;
    const Field* find(std::string_view name) const;
    std::size_t count(field f) const;
    std::size_t count(std::string_view name) const;
    // The first value of F, or "" (basic_fields' operator[]).
    std::string_view operator[](field f) const;
    // The fields named F in wire order (F known, not field::unknown).
    Range equal_range(field f) const { return {{head_, f}, {}}; }

    // http::message::keep_alive() of a message of VERSION with these fields:
    // the first Connection field's tokens decide (close on 1.1, keep-alive
    // on 1.0), none is 1.1's keep-alive and 1.0's close.
    bool keep_alive(unsigned version) const;

private:
    std::pmr::memory_resource* arena_;
    Field* head_ = nullptr;
    Field* tail_ = nullptr;
    std::size_t size_ = 0;
};

// The sandbox's request: request line and flat fields (in the arena), the
// body read into a string (the connection lends its reused one, see
// BodyBuffer), as http::request_parser<http::string_body> reads it.
class RequestParser final : public boost::beast::http::basic_parser<true> {
    using sv = boost::beast::string_view;
    using error_code = boost::beast::error_code;

public:
    explicit RequestParser(std::pmr::memory_resource* arena) : fields_(arena) {}

    // Valid once the header is parsed.
    boost::beast::http::verb method() const { return method_; }
    std::string_view method_string() const { return method_string_; }
    std::string_view target() const { return target_; }
    unsigned version() const { return version_; }
    const FlatFields& fields() const { return fields_; }
    // http::message::keep_alive() of the request (see FlatFields::keep_alive).
    bool header_keep_alive() const { return fields_.keep_alive(version_); }

    std::string& body() { return body_; }
    const std::string& body() const { return body_; }

private:
    void on_request_impl(boost::beast::http::verb method, sv method_str, sv target, int version,
                         error_code& ec) override;
    void on_response_impl(int, sv, int, error_code&) override {}
    void on_field_impl(boost::beast::http::field name, sv name_string, sv value, error_code& ec) override;
    void on_header_impl(error_code& ec) override;
    void on_body_init_impl(const boost::optional<std::uint64_t>& content_length, error_code& ec) override;
    std::size_t on_body_impl(sv body, error_code& ec) override;
    void on_chunk_header_impl(std::uint64_t size, sv extensions, error_code& ec) override;
    std::size_t on_chunk_body_impl(std::uint64_t remain, sv body, error_code& ec) override;
    void on_finish_impl(error_code& ec) override;

    FlatFields fields_;
    boost::beast::http::verb method_ = boost::beast::http::verb::unknown;
    std::string_view method_string_;
    std::string_view target_;
    unsigned version_ = 11;
    std::string body_;
};

// The provider's answer: status line and flat fields (in the arena), the
// body copied into the piece body() points at, as http::buffer_body reads
// it: the caller points it at its buffer (data, size) before each put; the
// parser advances data and shrinks size by what it copied, and stops with
// http::error::need_buffer when the piece is full (or none was given).
class ResponseParser final : public boost::beast::http::basic_parser<false> {
    using sv = boost::beast::string_view;
    using error_code = boost::beast::error_code;

public:
    struct Piece {
        char* data = nullptr;
        std::size_t size = 0;
    };
    explicit ResponseParser(std::pmr::memory_resource* arena) : fields_(arena) {}

    // Valid once the header is parsed.
    int result_int() const { return status_; }
    boost::beast::http::status result() const { return boost::beast::http::int_to_status(status_); }
    // As sent; none: the code's standard phrase (http::response::reason()).
    std::string_view reason() const {
        return reason_.empty() ? std::string_view(boost::beast::http::obsolete_reason(
                                     static_cast<boost::beast::http::status>(status_)))
                               : reason_;
    }
    unsigned version() const { return version_; }
    const FlatFields& fields() const { return fields_; }

    Piece& body() { return piece_; }

private:
    void on_request_impl(boost::beast::http::verb, sv, sv, int, error_code&) override {}
    void on_response_impl(int code, sv reason, int version, error_code& ec) override;
    void on_field_impl(boost::beast::http::field name, sv name_string, sv value, error_code& ec) override;
    void on_header_impl(error_code& ec) override;
    void on_body_init_impl(const boost::optional<std::uint64_t>& content_length, error_code& ec) override;
    std::size_t on_body_impl(sv body, error_code& ec) override;
    void on_chunk_header_impl(std::uint64_t size, sv extensions, error_code& ec) override;
    std::size_t on_chunk_body_impl(std::uint64_t remain, sv body, error_code& ec) override;
    void on_finish_impl(error_code& ec) override;
    std::size_t take(std::string_view body, error_code& ec);

    FlatFields fields_;
    int status_ = 0;
    std::string_view reason_;
    unsigned version_ = 11;
    Piece piece_;
};

}  // namespace redir::terminator
