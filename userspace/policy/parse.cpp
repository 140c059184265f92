#include "policy/parse.hpp"

#include <rapidjson/error/en.h>
#include <rapidjson/reader.h>

#include <algorithm>
#include <charconv>
#include <map>

#include "common/atomic_file.hpp"
#include "common/error.hpp"
#include "common/json_out.hpp"

namespace redir::policy {

std::string Diagnostic::to_string() const {
    if (line == 0) return file + ": " + message;
    return file + ":" + std::to_string(line) + ":" + std::to_string(col) + ": " + path + ": " + message;
}

std::string ParseResult::error_text() const {
    std::string out;
    for (const auto& e : errors) {
        out += e.to_string();
        out += '\n';
    }
    return out;
}

namespace {

// ---------------------------------------------------------------------------
// JSON with positions. RapidJSON's DOM forgets where values were, so a SAX
// handler builds a small tree instead, and the input stream remembers where
// the token the reader is working on began (the reader fires each event only
// after consuming the value, so the current offset is its end, not its start).

class TrackingStream {
public:
    using Ch = char;
    TrackingStream(const char* begin, const char* end) : begin_(begin), cur_(begin), end_(end) {}

    Ch Peek() const { return cur_ < end_ ? *cur_ : '\0'; }
    Ch Take() {
        if (cur_ >= end_) return '\0';
        char c = *cur_;
        track(c, static_cast<size_t>(cur_ - begin_));
        ++cur_;
        return c;
    }
    size_t Tell() const { return static_cast<size_t>(cur_ - begin_); }
    Ch* PutBegin() { return nullptr; }
    void Put(Ch) {}
    void Flush() {}
    size_t PutEnd(Ch*) { return 0; }

    size_t token_start() const { return token_start_; }

private:
    void track(char c, size_t off) {
        if (in_string_) {
            if (escape_) {
                escape_ = false;
            } else if (c == '\\') {
                escape_ = true;
            } else if (c == '"') {
                in_string_ = false;
            }
            return;
        }
        switch (c) {
        case '"':
            token_start_ = off;
            in_string_ = true;
            boundary_ = false;
            return;
        case '{':
        case '[':
            token_start_ = off;
            boundary_ = true;
            return;
        case ',':
        case ':':
        case ']':
        case '}':
        case ' ':
        case '\t':
        case '\n':
        case '\r':
            boundary_ = true;
            return;
        default:
            if (boundary_) token_start_ = off;
            boundary_ = false;
        }
    }

    const char* begin_;
    const char* cur_;
    const char* end_;
    size_t token_start_ = 0;
    bool in_string_ = false;
    bool escape_ = false;
    bool boundary_ = true;
};

struct JNode {
    enum class T { null, boolean, number, string, array, object };
    T t = T::null;
    size_t off = 0;
    bool b = false;
    std::string s;  // string value, or a number's text exactly as written
    std::vector<JNode> items;           // array elements, or object member values
    std::vector<std::string> keys;      // object member names, parallel to items
    std::vector<size_t> key_offs;
};

const char* kind_name(JNode::T t) {
    switch (t) {
    case JNode::T::null: return "null";
    case JNode::T::boolean: return "a boolean";
    case JNode::T::number: return "a number";
    case JNode::T::string: return "a string";
    case JNode::T::array: return "an array";
    case JNode::T::object: return "an object";
    }
    return "?";
}

bool plain_key(std::string_view k) {
    if (k.empty() || !(std::isalpha(static_cast<unsigned char>(k[0])) || k[0] == '_')) return false;
    return std::all_of(k.begin(), k.end(),
                       [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; });
}

std::string child_path(const std::string& parent, std::string_view key) {
    if (plain_key(key)) return parent.empty() ? std::string(key) : parent + "." + std::string(key);
    return parent + "[" + json_quote(key) + "]";
}

std::string index_path(const std::string& parent, size_t i) { return parent + "[" + std::to_string(i) + "]"; }

std::string shown_path(const std::string& p) { return p.empty() ? "$" : p; }

class Builder {
public:
    explicit Builder(TrackingStream& ts) : ts_(ts) {}

    bool Null() { return add(JNode::T::null), true; }
    bool Bool(bool b) { return add(JNode::T::boolean).b = b, true; }
    bool Int(int) { return false; }  // unreachable with kParseNumbersAsStringsFlag
    bool Uint(unsigned) { return false; }
    bool Int64(int64_t) { return false; }
    bool Uint64(uint64_t) { return false; }
    bool Double(double) { return false; }
    bool RawNumber(const char* s, rapidjson::SizeType n, bool) { return add(JNode::T::number).s.assign(s, n), true; }
    bool String(const char* s, rapidjson::SizeType n, bool) { return add(JNode::T::string).s.assign(s, n), true; }
    bool Key(const char* s, rapidjson::SizeType n, bool) {
        key_.assign(s, n);
        key_off_ = ts_.token_start();
        return true;
    }
    // The iterative reader announces a container before taking its bracket,
    // so the stream is still at the bracket.
    bool StartObject() { return push(add(JNode::T::object, ts_.Tell())); }
    bool EndObject(rapidjson::SizeType) { return pop(), true; }
    bool StartArray() { return push(add(JNode::T::array, ts_.Tell())); }
    bool EndArray(rapidjson::SizeType) { return pop(), true; }

    static constexpr size_t kMaxDepth = 64;
    bool too_deep() const { return too_deep_; }
    JNode& root() { return root_; }
    // Where the reader was when it failed: the innermost open container.
    std::string current_path() const { return paths_.empty() ? std::string() : paths_.back(); }

private:
    JNode& add(JNode::T t) { return add(t, ts_.token_start()); }
    JNode& add(JNode::T t, size_t off) {
        JNode n;
        n.t = t;
        n.off = off;
        if (stack_.empty()) {
            root_ = std::move(n);
            last_path_.clear();
            return root_;
        }
        JNode* p = stack_.back();
        if (p->t == JNode::T::object) {
            p->keys.push_back(key_);
            p->key_offs.push_back(key_off_);
            last_path_ = child_path(paths_.back(), key_);
        } else {
            last_path_ = index_path(paths_.back(), p->items.size());
        }
        p->items.push_back(std::move(n));
        return p->items.back();
    }
    // Containers are only appended to while they are the innermost open one,
    // so pointers to the open ones stay valid.
    // A policy is a few levels deep; refusing absurd nesting keeps the
    // recursive walk (and the tree's destructor) off the edge of the stack.
    bool push(JNode& n) {
        if (stack_.size() >= kMaxDepth) {
            too_deep_ = true;
            return false;
        }
        stack_.push_back(&n);
        paths_.push_back(last_path_);
        return true;
    }
    void pop() {
        stack_.pop_back();
        paths_.pop_back();
    }

    TrackingStream& ts_;
    JNode root_;
    std::vector<JNode*> stack_;
    std::vector<std::string> paths_;
    std::string last_path_;
    std::string key_;
    size_t key_off_ = 0;
    bool too_deep_ = false;
};

// Byte offset -> line and column (columns count code points, as editors do).
class LineIndex {
public:
    explicit LineIndex(std::string_view text) : text_(text) {
        starts_.push_back(0);
        for (size_t i = 0; i < text.size(); ++i) {
            if (text[i] == '\n') starts_.push_back(i + 1);
        }
    }
    std::pair<uint32_t, uint32_t> at(size_t off) const {
        off = std::min(off, text_.size());
        auto it = std::upper_bound(starts_.begin(), starts_.end(), off);
        size_t line = static_cast<size_t>(it - starts_.begin());
        size_t start = starts_[line - 1];
        // Lookups come in file order: continue from the previous one on the
        // same line, or a long single-line file (generated policies) turns
        // quadratic.
        size_t from = start;
        uint32_t col = 1;
        if (last_line_ == line && last_off_ <= off) {
            from = last_off_;
            col = last_col_;
        }
        for (size_t i = from; i < off; ++i) {
            if ((static_cast<unsigned char>(text_[i]) & 0xC0) != 0x80) ++col;
        }
        last_line_ = line;
        last_off_ = off;
        last_col_ = col;
        return {static_cast<uint32_t>(line), col};
    }

private:
    std::string_view text_;
    std::vector<size_t> starts_;
    mutable size_t last_line_ = 0, last_off_ = 0;
    mutable uint32_t last_col_ = 1;
};

// ---------------------------------------------------------------------------
// Validation: walk the tree, record every problem, keep going.

class Validator {
public:
    Validator(std::string_view file, const LineIndex& li) : file_(file), li_(li) {}

    void error(size_t off, const std::string& path, std::string msg) {
        auto [line, col] = li_.at(off);
        errors_.push_back({std::string(file_), line, col, shown_path(path), std::move(msg)});
    }

    std::vector<Diagnostic> take_errors() {
        std::stable_sort(errors_.begin(), errors_.end(), [](const Diagnostic& a, const Diagnostic& b) {
            return a.line < b.line || (a.line == b.line && a.col < b.col);
        });
        return std::move(errors_);
    }

    std::optional<Policy> policy(const JNode& root) {
        Policy p;
        p.source = std::string(file_);
        if (!expect(root, JNode::T::object, "")) return std::nullopt;
        auto f = fields(root, "", {"version", "name", "comment", "inference", "allow", "deny", "inspect"});

        if (auto* v = f.get("version")) {
            if (expect(*v, JNode::T::number, "version")) {
                if (v->s != "1") {
                    error(v->off, "version", "unsupported version " + v->s + "; this build understands version 1");
                }
            }
        } else {
            error(root.off, "version", "required field \"version\" is missing (use 1)");
        }

        if (auto* v = f.get("name")) {
            if (expect(*v, JNode::T::string, "name")) {
                if (v->s.empty()) {
                    error(v->off, "name", "name must not be empty");
                } else if (!valid_name(v->s)) {
                    error(v->off, "name",
                          "name " + json_quote(v->s) + " is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -");
                } else {
                    p.name = v->s;
                }
            }
        } else {
            error(root.off, "name", "required field \"name\" is missing");
        }

        if (auto* v = f.get("comment")) {
            if (expect(*v, JNode::T::string, "comment")) p.comment = v->s;
        }

        if (auto* v = f.get("inference")) inference(*v, p);

        rules(f.get("allow"), "allow", RuleKind::allow, p.allow);
        rules(f.get("deny"), "deny", RuleKind::deny, p.deny);
        rules(f.get("inspect"), "inspect", RuleKind::inspect, p.inspect);

        if (!errors_.empty()) return std::nullopt;
        return p;
    }

private:
    struct Fields {
        std::map<std::string, const JNode*, std::less<>> by_name;
        std::map<std::string, size_t, std::less<>> key_off;
        const JNode* get(std::string_view k) const {
            auto it = by_name.find(k);
            return it == by_name.end() ? nullptr : it->second;
        }
    };

    // Members of an object: unknown names and repeated names are errors (the
    // first occurrence is the one used).
    Fields fields(const JNode& obj, const std::string& path, std::initializer_list<std::string_view> known) {
        Fields f;
        for (size_t i = 0; i < obj.items.size(); ++i) {
            const std::string& k = obj.keys[i];
            std::string p = child_path(path, k);
            if (std::find(known.begin(), known.end(), k) == known.end()) {
                std::string list;
                for (auto n : known) list += (list.empty() ? "" : ", ") + std::string(n);
                error(obj.key_offs[i], p, "unknown field " + json_quote(k) + " (expected one of: " + list + ")");
                continue;
            }
            if (f.by_name.count(k)) {
                auto [line, col] = li_.at(f.key_off[k]);
                error(obj.key_offs[i], p,
                      "duplicate key " + json_quote(k) + " (first at line " + std::to_string(line) + ", column " +
                          std::to_string(col) + ")");
                continue;
            }
            f.by_name.emplace(k, &obj.items[i]);
            f.key_off.emplace(k, obj.key_offs[i]);
        }
        return f;
    }

    void inference(const JNode& v, Policy& p) {
        if (!expect(v, JNode::T::object, "inference")) return;
        auto inf = fields(v, "inference", {"enabled", "provider_fetch", "route", "limits"});
        if (auto* e = inf.get("enabled")) {
            if (expect(*e, JNode::T::boolean, "inference.enabled")) p.inference_enabled = e->b;
        }
        if (auto* e = inf.get("provider_fetch")) {
            if (expect(*e, JNode::T::boolean, "inference.provider_fetch")) p.inference_provider_fetch = e->b;
        }
        if (auto* e = inf.get("route")) {
            if (expect(*e, JNode::T::string, "inference.route")) {
                if (e->s.empty() || !valid_name(e->s))
                    error(e->off, "inference.route",
                          "route " + json_quote(e->s) + " is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -");
                else
                    p.inference_route = e->s;
            }
        }
        if (auto* l = inf.get("limits")) {
            if (!expect(*l, JNode::T::object, "inference.limits")) return;
            auto lim = fields(*l, "inference.limits", {"requests_per_minute", "tokens_per_day"});
            limit(lim.get("requests_per_minute"), "inference.limits.requests_per_minute", p.inference_requests_per_minute);
            limit(lim.get("tokens_per_day"), "inference.limits.tokens_per_day", p.inference_tokens_per_day);
        }
    }

    // A limit: a whole number from 1 to 10^12 (absent: no limit).
    void limit(const JNode* n, const std::string& path, uint64_t& out) {
        if (!n || !expect(*n, JNode::T::number, path)) return;
        auto v = integer(n->s);
        if (!v || *v < 1 || *v > 1'000'000'000'000LL) {
            error(n->off, path, "limit " + n->s + " must be a whole number from 1 to 1000000000000 (leave it out for no limit)");
            return;
        }
        out = static_cast<uint64_t>(*v);
    }

    bool expect(const JNode& n, JNode::T t, const std::string& path) {
        if (n.t == t) return true;
        const char* want = t == JNode::T::object   ? "an object"
                           : t == JNode::T::array  ? "an array"
                           : t == JNode::T::string ? "a string"
                           : t == JNode::T::number ? "an integer"
                                                   : "true or false";
        error(n.off, path, std::string("expected ") + want + ", got " + kind_name(n.t));
        return false;
    }

    static bool valid_name(std::string_view s) {
        if (s.size() > 64) return false;
        return std::all_of(s.begin(), s.end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
        });
    }

    void rules(const JNode* list, const std::string& path, RuleKind kind, std::vector<Rule>& out) {
        if (!list || !expect(*list, JNode::T::array, path)) return;
        for (size_t i = 0; i < list->items.size(); ++i) {
            auto r = rule(list->items[i], index_path(path, i), kind);
            if (r) out.push_back(std::move(*r));
        }
    }

    std::optional<Rule> rule(const JNode& n, const std::string& path, RuleKind kind) {
        if (!expect(n, JNode::T::object, path)) return std::nullopt;
        size_t before = errors_.size();
        Rule r;
        // A deny that left UDP open because its author did not say "any"
        // would be a hole; allow and inspect stay TCP unless told.
        if (kind == RuleKind::deny) r.protocol = Protocol::any;
        auto [line, col] = li_.at(n.off);
        r.loc = {line, col, path};
        auto f = fields(n, path, {"host", "cidr", "ports", "protocol", "allowed_ips", "comment"});
        const JNode* host = f.get("host");
        const JNode* cidr = f.get("cidr");

        if (host && cidr) {
            error(n.off, path, "entry must have exactly one of \"host\" or \"cidr\", not both");
        } else if (!host && !cidr) {
            error(n.off, path, "entry must have \"host\" or \"cidr\"");
        }
        if (host && expect(*host, JNode::T::string, path + ".host")) {
            std::string h = lower(host->s);
            std::string err = check_host(h);
            if (!err.empty()) {
                error(host->off, path + ".host", err);
            } else {
                r.host = h;
            }
        }
        if (cidr && expect(*cidr, JNode::T::string, path + ".cidr")) {
            r.cidr = check_cidr(*cidr, path + ".cidr");
        }

        if (auto* ports = f.get("ports")) {
            if (expect(*ports, JNode::T::array, path + ".ports")) {
                if (ports->items.empty()) {
                    error(ports->off, path + ".ports", "ports must not be empty; omit it to mean all ports");
                }
                for (size_t i = 0; i < ports->items.size(); ++i) {
                    auto pr = port(ports->items[i], index_path(path + ".ports", i));
                    if (pr) r.ports.push_back(*pr);
                }
                r.ports = normalize_ports(std::move(r.ports));
            }
        }

        if (auto* proto = f.get("protocol")) {
            if (expect(*proto, JNode::T::string, path + ".protocol")) {
                if (proto->s == "tcp") {
                    r.protocol = Protocol::tcp;
                } else if (proto->s == "udp") {
                    r.protocol = Protocol::udp;
                } else if (proto->s == "any") {
                    r.protocol = Protocol::any;
                } else {
                    error(proto->off, path + ".protocol",
                          "unknown protocol " + json_quote(proto->s) + " (expected \"tcp\", \"udp\" or \"any\")");
                }
                if (kind == RuleKind::inspect && r.protocol != Protocol::tcp) {
                    error(proto->off, path + ".protocol",
                          "inspect entries are TCP only; protocol must be \"tcp\"");
                }
            }
        }

        if (auto* ips = f.get("allowed_ips")) {
            std::string ipath = path + ".allowed_ips";
            size_t key_off = f.key_off.find("allowed_ips")->second;
            if (cidr && !host) {
                error(key_off, ipath, "allowed_ips only applies to host entries; this entry has a cidr");
            } else if (kind == RuleKind::deny) {
                error(key_off, ipath, "allowed_ips is not supported in deny entries");
            } else if (expect(*ips, JNode::T::array, ipath)) {
                if (ips->items.empty()) {
                    error(ips->off, ipath, "allowed_ips must not be empty; omit it to admit any non-special address");
                }
                for (size_t i = 0; i < ips->items.size(); ++i) {
                    std::string ep = index_path(ipath, i);
                    if (!expect(ips->items[i], JNode::T::string, ep)) continue;
                    if (auto c = check_cidr(ips->items[i], ep, true)) r.allowed_ips.push_back(*c);
                }
            }
        }

        if (auto* c = f.get("comment")) {
            if (expect(*c, JNode::T::string, path + ".comment")) r.comment = c->s;
        }

        if (errors_.size() != before) return std::nullopt;
        return r;
    }

    // A prefix that names only never-reachable addresses can only be a
    // mistake; one in allowed_ips naming only loopback too (a name never
    // admits the node's loopback: a cidr rule with address and port does).
    std::optional<Cidr> check_cidr(const JNode& n, const std::string& path, bool allowed_ips = false) {
        auto res = parse_cidr(n.s);
        if (!res.cidr) {
            error(n.off, path, res.error);
            return std::nullopt;
        }
        if (auto* s = redir::range_containing(*res.cidr, AddrClass::never_reachable)) {
            error(n.off, path,
                  "CIDR " + json_quote(n.s) + " is inside " + std::string(s->what) + " " + s->cidr.to_string() +
                      ", which is never reachable");
            return std::nullopt;
        }
        if (allowed_ips) {
            if (auto* s = redir::range_containing(*res.cidr, AddrClass::loopback)) {
                error(n.off, path,
                      "CIDR " + json_quote(n.s) + " is inside " + std::string(s->what) + " " + s->cidr.to_string() +
                          ", which a host entry never admits; allow it with a cidr entry naming the address "
                          "and port");
                return std::nullopt;
            }
        }
        return res.cidr;
    }

    std::optional<PortRange> port(const JNode& n, const std::string& path) {
        if (n.t == JNode::T::number) {
            auto v = integer(n.s);
            if (!v) {
                error(n.off, path, "port " + n.s + " is not an integer");
                return std::nullopt;
            }
            if (*v < 1 || *v > 65535) {
                error(n.off, path, "port " + n.s + " is out of range 1-65535");
                return std::nullopt;
            }
            return PortRange{static_cast<uint16_t>(*v), static_cast<uint16_t>(*v)};
        }
        if (n.t == JNode::T::string) {
            const std::string& s = n.s;
            auto dash = s.find('-');
            std::optional<long long> lo, hi;
            if (dash != std::string::npos && dash > 0) {
                lo = digits(std::string_view(s).substr(0, dash));
                hi = digits(std::string_view(s).substr(dash + 1));
            }
            if (!lo || !hi) {
                error(n.off, path,
                      "malformed port range " + json_quote(s) + "; expected \"lo-hi\" such as \"8000-8100\"" +
                          " (write single ports as numbers)");
                return std::nullopt;
            }
            for (long long v : {*lo, *hi}) {
                if (v < 1 || v > 65535) {
                    error(n.off, path,
                          "port " + std::to_string(v) + " in range " + json_quote(s) + " is out of range 1-65535");
                    return std::nullopt;
                }
            }
            if (*lo > *hi) {
                error(n.off, path,
                      "port range " + json_quote(s) + " is reversed; did you mean \"" + std::to_string(*hi) + "-" +
                          std::to_string(*lo) + "\"?");
                return std::nullopt;
            }
            return PortRange{static_cast<uint16_t>(*lo), static_cast<uint16_t>(*hi)};
        }
        error(n.off, path, std::string("expected a port number or a \"lo-hi\" string, got ") + kind_name(n.t));
        return std::nullopt;
    }

    // A JSON number's text as an integer; nullopt for fractions and exponents.
    // Values too large for long long saturate (they are out of range anyway).
    static std::optional<long long> integer(std::string_view s) {
        bool neg = !s.empty() && s[0] == '-';
        auto d = digits(neg ? s.substr(1) : s);
        if (!d) return std::nullopt;
        return neg ? -*d : *d;
    }

    static std::optional<long long> digits(std::string_view s) {
        if (s.empty() || s.size() > 18) {
            if (s.size() > 18 && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; }))
                return 999999999999999999LL;
            return std::nullopt;
        }
        long long v = 0;
        for (char c : s) {
            if (c < '0' || c > '9') return std::nullopt;
            v = v * 10 + (c - '0');
        }
        return v;
    }

    static std::string lower(std::string s) {
        for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        return s;
    }

    // Host names as DNS sees them: LDH labels (underscore tolerated, it occurs
    // in service names), ASCII only, wildcard only as a whole first label.
    static std::string check_host(const std::string& h) {
        if (h.empty()) return "host must not be empty";
        std::string q = json_quote(h);
        if (h.size() > 253) {
            return "host " + q + " is " + std::to_string(h.size()) + " characters long; the limit is 253";
        }
        std::string_view rest = h;
        bool wildcard = false;
        if (rest.size() >= 2 && rest.substr(0, 2) == "*.") {
            wildcard = true;
            rest.remove_prefix(2);
        } else if (rest == "*") {
            return "host \"*\" needs a suffix, such as \"*.example.com\"";
        }
        (void)wildcard;
        if (rest.find('*') != std::string_view::npos) {
            return "host " + q + ": \"*\" is only allowed as the whole first label, as in \"*.example.com\"";
        }
        if (std::any_of(rest.begin(), rest.end(), [](char c) { return static_cast<unsigned char>(c) >= 0x80; })) {
            return "host " + q + " contains non-ASCII characters; write the punycode (xn--) form";
        }
        std::vector<std::string_view> labels;
        size_t start = 0;
        while (true) {
            size_t dot = rest.find('.', start);
            labels.push_back(rest.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
            if (dot == std::string_view::npos) break;
            start = dot + 1;
        }
        for (auto l : labels) {
            if (l.empty()) return "host " + q + " has an empty label";
            if (l.size() > 63) {
                return "host " + q + ": label \"" + std::string(l.substr(0, 16)) + "...\" is " +
                       std::to_string(l.size()) + " characters long; the limit is 63";
            }
            for (char c : l) {
                if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) {
                    return "host " + q + ": character " + json_quote(std::string(1, c)) +
                           " is not allowed (letters, digits, '-' and '_' only)";
                }
            }
            if (l.front() == '-' || l.back() == '-') {
                return "host " + q + ": label \"" + std::string(l) + "\" must not begin or end with '-'";
            }
        }
        auto last = labels.back();
        if (std::all_of(last.begin(), last.end(), [](char c) { return c >= '0' && c <= '9'; })) {
            return "host " + q + " looks like an IP address; use \"cidr\" for addresses";
        }
        return "";
    }

    std::string_view file_;
    const LineIndex& li_;
    std::vector<Diagnostic> errors_;
};

}  // namespace

ParseResult parse_policy(std::string_view text, std::string_view filename) {
    ParseResult res;
    LineIndex li(text);
    TrackingStream ts(text.data(), text.data() + text.size());
    Builder b(ts);
    rapidjson::Reader reader;
    constexpr unsigned flags = rapidjson::kParseValidateEncodingFlag | rapidjson::kParseNumbersAsStringsFlag |
                               rapidjson::kParseIterativeFlag;
    rapidjson::ParseResult pr = reader.Parse<flags>(ts, b);
    if (pr.IsError()) {
        // A NUL byte ends RapidJSON's view of the input early; say so plainly.
        size_t off = pr.Offset();
        std::string msg = b.too_deep() ? "invalid JSON: nested deeper than " + std::to_string(Builder::kMaxDepth) +
                                             " levels"
                          : off < text.size() && text[off] == '\0'
                              ? std::string("invalid JSON: NUL byte in the file")
                              : std::string("invalid JSON: ") + rapidjson::GetParseError_En(pr.Code());
        if (!msg.empty() && msg.back() == '.') msg.pop_back();
        // RapidJSON's sentences start upper-case; ours continue after "invalid JSON: ".
        constexpr size_t lead = sizeof("invalid JSON: ") - 1;
        if (msg.size() > lead && msg[lead] >= 'A' && msg[lead] <= 'Z' && msg.compare(lead, 3, "NUL") != 0) {
            msg[lead] = static_cast<char>(msg[lead] - 'A' + 'a');
        }
        auto [line, col] = li.at(off);
        res.errors.push_back({std::string(filename), line, col, shown_path(b.current_path()), msg});
        return res;
    }
    Validator v(filename, li);
    auto p = v.policy(b.root());
    res.errors = v.take_errors();
    if (res.errors.empty()) res.policy = std::move(p);
    return res;
}

ParseResult validate_policy_file(const std::string& path) {
    std::string text;
    try {
        text = read_file(path);
    } catch (const std::exception& e) {
        ParseResult res;
        res.errors.push_back({path, 0, 0, "", std::string("cannot read policy file: ") + e.what()});
        return res;
    }
    return parse_policy(text, path);
}

// ---------------------------------------------------------------------------

namespace {

void rule_json(std::string& o, const Rule& r) {
    o += "    {";
    if (r.is_host()) {
        o += "\"host\": " + json_quote(r.host);
    } else {
        o += "\"cidr\": " + json_quote(r.cidr->to_string());
    }
    if (!r.ports.empty()) {
        o += ", \"ports\": [";
        for (size_t i = 0; i < r.ports.size(); ++i) {
            if (i) o += ", ";
            const auto& p = r.ports[i];
            if (p.lo == p.hi) {
                o += std::to_string(p.lo);
            } else {
                o += "\"" + std::to_string(p.lo) + "-" + std::to_string(p.hi) + "\"";
            }
        }
        o += "]";
    }
    o += ", \"protocol\": \"" + std::string(to_string(r.protocol)) + "\"";
    if (!r.allowed_ips.empty()) {
        o += ", \"allowed_ips\": [";
        for (size_t i = 0; i < r.allowed_ips.size(); ++i) {
            if (i) o += ", ";
            o += json_quote(r.allowed_ips[i].to_string());
        }
        o += "]";
    }
    if (!r.comment.empty()) o += ", \"comment\": " + json_quote(r.comment);
    o += "}";
}

void rules_json(std::string& o, std::string_view key, const std::vector<Rule>& rules, bool last) {
    o += "  \"" + std::string(key) + "\": [";
    for (size_t i = 0; i < rules.size(); ++i) {
        o += i ? ",\n" : "\n";
        rule_json(o, rules[i]);
    }
    o += rules.empty() ? "]" : "\n  ]";
    o += last ? "\n" : ",\n";
}

}  // namespace

namespace {
// ", \"limits\": {...}" of a policy that sets any, else "".
std::string limits_json(const Policy& p) {
    std::string o;
    auto add = [&](const char* k, uint64_t v) {
        if (v) o += std::string(o.empty() ? "" : ", ") + "\"" + k + "\": " + std::to_string(v);
    };
    add("requests_per_minute", p.inference_requests_per_minute);
    add("tokens_per_day", p.inference_tokens_per_day);
    return o.empty() ? "" : ", \"limits\": {" + o + "}";
}
}  // namespace

std::string to_json(const Policy& p) {
    std::string o = "{\n";
    o += "  \"version\": " + std::to_string(p.version) + ",\n";
    o += "  \"name\": " + json_quote(p.name) + ",\n";
    if (!p.comment.empty()) o += "  \"comment\": " + json_quote(p.comment) + ",\n";
    o += std::string("  \"inference\": {\"enabled\": ") + (p.inference_enabled ? "true" : "false") +
         (p.inference_provider_fetch ? ", \"provider_fetch\": true" : "") +
         (p.inference_route != "default" ? ", \"route\": " + json_quote(p.inference_route) : "") + limits_json(p) +
         "},\n";
    rules_json(o, "allow", p.allow, false);
    rules_json(o, "deny", p.deny, false);
    rules_json(o, "inspect", p.inspect, true);
    o += "}\n";
    return o;
}

}  // namespace redir::policy
