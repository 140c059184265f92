#pragma once
// Test helpers: every field of any message filled with a value that is hard
// to carry (quotes, newline, control bytes, non-ASCII), and the list of a
// message's fields, both driven by the message's own field list.
#include <string>
#include <vector>

#include "control/protocol.hpp"

namespace redir::control::testing {

// Fills every field it visits; strings carry what JSON must escape.
class Filler {
public:
    void operator()(std::string_view k, std::string& v, Need = Need::required) { v = tricky(k); }
    template <class T>
    void operator()(std::string_view k, std::optional<T>& v, Need = Need::optional) {
        v.emplace();
        (*this)(k, *v);
    }
    void operator()(std::string_view, uint64_t& v, Need = Need::required) { v = 18446744073709551615ull; }
    void operator()(std::string_view, bool& v, Need = Need::required) { v = true; }
    void operator()(std::string_view, RawJson& v, Need = Need::required) { v.text = R"({"k":[1,"x\n"],"n":null})"; }
    void operator()(std::string_view k, std::map<std::string, std::string>& m, Need = Need::required) {
        m = {{"KEY", tricky(k)}, {"K\"2", "v"}};
    }
    template <class T>
    void operator()(std::string_view k, std::vector<T>& v, Need = Need::required) {
        v.assign(2, T{});
        for (auto& e : v) fill_element(k, e);
    }
    template <HasFields T>
    void operator()(std::string_view, T& v, Need = Need::required) { T::fields(v, *this); }

    static std::string tricky(std::string_view k) {
        return std::string(k) + " \"quoted\" back\\slash\nnew line\ttab\x01\x1f caf\xc3\xa9";
    }

private:
    void fill_element(std::string_view k, std::string& e) { e = tricky(k); }
    void fill_element(std::string_view, uint64_t& e) { e = 7; }
    void fill_element(std::string_view, RawJson& e) { e.text = R"({"event":"connect","port":443})"; }
    template <HasFields T>
    void fill_element(std::string_view, T& e) { T::fields(e, *this); }
};

template <class T>
T filled() {
    T v{};
    Filler f;
    T::fields(v, f);
    return v;
}

// One field of a message, as its list names it.
struct FieldInfo {
    std::string name;
    Need need;
};

class Lister {
public:
    template <class V>
    void operator()(std::string_view k, V&, Need n = Need::required) {
        out.push_back({std::string(k), n});
    }
    template <class V>
    void operator()(std::string_view k, std::optional<V>&, Need = Need::optional) {
        out.push_back({std::string(k), Need::optional});
    }
    std::vector<FieldInfo> out;
};

template <class T>
std::vector<FieldInfo> fields_of() {
    T v{};
    Lister l;
    T::fields(v, l);
    return l.out;
}

// Calls F(tag) for every command of the table, T = the request type.
template <class F, size_t... I>
void for_each_command_impl(F&& f, std::index_sequence<I...>) {
    (f(std::type_identity<std::variant_alternative_t<I, Request>>{}), ...);
}
template <class F>
void for_each_command(F&& f) {
    for_each_command_impl(f, std::make_index_sequence<std::variant_size_v<Request>>());
}

}  // namespace redir::control::testing
