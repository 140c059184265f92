#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "policy/compile.hpp"
#include "policy/parse.hpp"

using namespace redir::policy;

namespace {

// One-line documents with the entry at a known column: "allow" entries start
// at column 34, "deny" at 33, "inspect" at 36.
std::string A(const std::string& rule) { return R"({"version":1,"name":"t","allow":[)" + rule + "]}"; }
std::string D(const std::string& rule) { return R"({"version":1,"name":"t","deny":[)" + rule + "]}"; }
std::string I(const std::string& rule) { return R"({"version":1,"name":"t","inspect":[)" + rule + "]}"; }

std::string errors_of(const std::string& text) {
    auto r = parse_policy(text, "p.json");
    std::string out;
    for (const auto& e : r.errors) out += (out.empty() ? "" : "\n") + e.to_string();
    return out;
}

struct BadCase {
    const char* what;
    std::string text;
    std::string expected;  // every error, one per line
};

const std::string L64(64, 'a');

std::vector<BadCase> bad_cases() {
    return {
        // JSON syntax
        {"empty file", "", "p.json:1:1: $: invalid JSON: the document is empty"},
        {"trailing comma", R"({"version":1,})", "p.json:1:14: $: invalid JSON: missing a name for object member"},
        {"missing comma", R"({"version":1 "name":"t"})",
         "p.json:1:14: $: invalid JSON: missing a comma or '}' after an object member"},
        {"trailing garbage", R"({"version":1,"name":"t"} x)",
         "p.json:1:26: $: invalid JSON: the document root must not be followed by other values"},
        {"syntax error deep inside, multi-line",
         "{\n  \"version\": 1,\n  \"name\": \"t\",\n  \"allow\": [\n    {\"host\": \"a.com\", \"ports\": [80 443]}\n  ]\n}",
         "p.json:5:36: allow[0].ports: invalid JSON: missing a comma or ']' after an array element"},
        {"bad literal", R"({"version":1,"name":"t","inference":{"enabled":ture}})",
         "p.json:1:49: inference: invalid JSON: invalid value"},
        {"single quotes", R"({'version':1})", "p.json:1:2: $: invalid JSON: missing a name for object member"},
        {"invalid utf-8", "{\"version\":1,\"name\":\"t\xff\"}",
         "p.json:1:23: $: invalid JSON: invalid encoding in string"},
        {"NUL byte", std::string("{\"version\":1,\0}", 15), "p.json:1:14: $: invalid JSON: NUL byte in the file"},
        {"absurd nesting", R"({"version":1,"name":"t","comment":)" + std::string(100, '[') + std::string(100, ']') + "}",
         "p.json:1:98: comment[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"
         "[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: "
         "invalid JSON: nested deeper than 64 levels"},
        // document shape
        {"not an object", "[]", "p.json:1:1: $: expected an object, got an array"},
        {"missing version", R"({"name":"t"})", "p.json:1:1: version: required field \"version\" is missing (use 1)"},
        {"unsupported version", R"({"version":2,"name":"t"})",
         "p.json:1:12: version: unsupported version 2; this build understands version 1"},
        {"version as string", R"({"version":"1","name":"t"})",
         "p.json:1:12: version: expected an integer, got a string"},
        {"version 1.0", R"({"version":1.0,"name":"t"})",
         "p.json:1:12: version: unsupported version 1.0; this build understands version 1"},
        {"missing name", R"({"version":1})", "p.json:1:1: name: required field \"name\" is missing"},
        {"empty name", R"({"version":1,"name":""})", "p.json:1:21: name: name must not be empty"},
        {"name charset", R"({"version":1,"name":"a b"})",
         "p.json:1:21: name: name \"a b\" is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -"},
        {"name too long", R"({"version":1,"name":")" + std::string(65, 'n') + "\"}",
         "p.json:1:21: name: name \"" + std::string(65, 'n') +
             "\" is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -"},
        {"duplicate name", R"({"version":1,"name":"t","name":"u"})",
         "p.json:1:25: name: duplicate key \"name\" (first at line 1, column 14)"},
        {"unknown top-level field", R"({"version":1,"name":"t","rules":[]})",
         "p.json:1:25: rules: unknown field \"rules\" (expected one of: version, name, comment, inference, allow, "
         "deny, inspect)"},
        {"inference not an object", R"({"version":1,"name":"t","inference":true})",
         "p.json:1:37: inference: expected an object, got a boolean"},
        {"inference.enabled not bool", R"({"version":1,"name":"t","inference":{"enabled":"yes"}})",
         "p.json:1:48: inference.enabled: expected true or false, got a string"},
        {"inference unknown field", R"({"version":1,"name":"t","inference":{"enable":true}})",
         "p.json:1:38: inference.enable: unknown field \"enable\" (expected one of: enabled, provider_fetch, route, limits)"},
        {"limit zero", R"({"version":1,"name":"t","inference":{"limits":{"requests_per_minute":0}}})",
         "p.json:1:70: inference.limits.requests_per_minute: limit 0 must be a whole number from 1 to 1000000000000 (leave it out for no limit)"},
        {"limit negative", R"({"version":1,"name":"t","inference":{"limits":{"tokens_per_day":-5}}})",
         "p.json:1:65: inference.limits.tokens_per_day: limit -5 must be a whole number from 1 to 1000000000000 (leave it out for no limit)"},
        {"limit fraction", R"({"version":1,"name":"t","inference":{"limits":{"requests_per_minute":1.5}}})",
         "p.json:1:70: inference.limits.requests_per_minute: limit 1.5 must be a whole number from 1 to 1000000000000 (leave it out for no limit)"},
        {"limit too large", R"({"version":1,"name":"t","inference":{"limits":{"tokens_per_day":1000000000001}}})",
         "p.json:1:65: inference.limits.tokens_per_day: limit 1000000000001 must be a whole number from 1 to 1000000000000 (leave it out for no limit)"},
        {"limit a string", R"({"version":1,"name":"t","inference":{"limits":{"requests_per_minute":"10"}}})",
         "p.json:1:70: inference.limits.requests_per_minute: expected an integer, got a string"},
        {"limits not an object", R"({"version":1,"name":"t","inference":{"limits":5}})",
         "p.json:1:47: inference.limits: expected an object, got a number"},
        {"limits unknown field", R"({"version":1,"name":"t","inference":{"limits":{"tokens_per_minute":5}}})",
         "p.json:1:48: inference.limits.tokens_per_minute: unknown field \"tokens_per_minute\" (expected one of: requests_per_minute, tokens_per_day)"},
        {"allow not an array", R"({"version":1,"name":"t","allow":{}})",
         "p.json:1:33: allow: expected an array, got an object"},
        {"entry not an object", A(R"("a.com")"), "p.json:1:34: allow[0]: expected an object, got a string"},
        // host / cidr presence
        {"neither host nor cidr", A("{}"), "p.json:1:34: allow[0]: entry must have \"host\" or \"cidr\""},
        {"both host and cidr", A(R"({"host":"a.com","cidr":"192.0.2.0/24"})"),
         "p.json:1:34: allow[0]: entry must have exactly one of \"host\" or \"cidr\", not both"},
        {"unknown field in entry", A(R"({"cidr":"192.0.2.0/24","port":[80]})"),
         "p.json:1:57: allow[0].port: unknown field \"port\" (expected one of: host, cidr, ports, protocol, "
         "allowed_ips, comment)"},
        {"unusual unknown key is quoted in the path", A(R"({"cidr":"192.0.2.0/24","a b":1})"),
         "p.json:1:57: allow[0][\"a b\"]: unknown field \"a b\" (expected one of: host, cidr, ports, protocol, "
         "allowed_ips, comment)"},
        {"duplicate key in entry", A(R"({"host":"a.com","host":"b.com"})"),
         "p.json:1:50: allow[0].host: duplicate key \"host\" (first at line 1, column 35)"},
        // host names
        {"empty host", A(R"({"host":""})"), "p.json:1:42: allow[0].host: host must not be empty"},
        {"host wrong type", A(R"({"host":5})"), "p.json:1:42: allow[0].host: expected a string, got a number"},
        {"empty label", A(R"({"host":"a..com"})"), "p.json:1:42: allow[0].host: host \"a..com\" has an empty label"},
        {"trailing dot", A(R"({"host":"a.com."})"), "p.json:1:42: allow[0].host: host \"a.com.\" has an empty label"},
        {"leading hyphen", A(R"({"host":"-a.com"})"),
         "p.json:1:42: allow[0].host: host \"-a.com\": label \"-a\" must not begin or end with '-'"},
        {"wildcard in the middle", A(R"({"host":"a.*.com"})"),
         "p.json:1:42: allow[0].host: host \"a.*.com\": \"*\" is only allowed as the whole first label, as in "
         "\"*.example.com\""},
        {"wildcard glued to a label", A(R"({"host":"*foo.com"})"),
         "p.json:1:42: allow[0].host: host \"*foo.com\": \"*\" is only allowed as the whole first label, as in "
         "\"*.example.com\""},
        {"bare wildcard", A(R"({"host":"*"})"),
         "p.json:1:42: allow[0].host: host \"*\" needs a suffix, such as \"*.example.com\""},
        {"space in host", A(R"({"host":"a b.com"})"),
         "p.json:1:42: allow[0].host: host \"a b.com\": character \" \" is not allowed (letters, digits, '-' and "
         "'_' only)"},
        {"label too long", A(R"({"host":")" + L64 + R"(.com"})"),
         "p.json:1:42: allow[0].host: host \"" + L64 +
             ".com\": label \"aaaaaaaaaaaaaaaa...\" is 64 characters long; the limit is 63"},
        {"host too long", A(R"({"host":")" + std::string(63, 'a') + "." + std::string(63, 'b') + "." +
                            std::string(63, 'c') + "." + std::string(63, 'd') + R"(.com"})"),
         "p.json:1:42: allow[0].host: host \"" + std::string(63, 'a') + "." + std::string(63, 'b') + "." +
             std::string(63, 'c') + "." + std::string(63, 'd') + ".com\" is 259 characters long; the limit is 253"},
        {"host at the limit is fine, one more is not",
         A(R"({"host":")" + std::string(63, 'a') + "." + std::string(63, 'b') + "." + std::string(63, 'c') + "." +
           std::string(57, 'd') + R"(.com"},{"host":")" + std::string(63, 'a') + "." + std::string(63, 'b') + "." +
           std::string(63, 'c') + "." + std::string(58, 'd') + R"(.com"})"),
         "p.json:1:307: allow[1].host: host \"" + std::string(63, 'a') + "." + std::string(63, 'b') + "." +
             std::string(63, 'c') + "." + std::string(58, 'd') + ".com\" is 254 characters long; the limit is 253"},
        {"IP address as host", A(R"({"host":"10.0.0.1"})"),
         "p.json:1:42: allow[0].host: host \"10.0.0.1\" looks like an IP address; use \"cidr\" for addresses"},
        {"non-ASCII host, column counts characters", A(R"({"host":"bücher.de","ports":[0]})"),
         "p.json:1:42: allow[0].host: host \"bücher.de\" contains non-ASCII characters; write the punycode (xn--) "
         "form\np.json:1:63: allow[0].ports[0]: port 0 is out of range 1-65535"},
        // CIDRs
        {"prefix too long v4", A(R"({"cidr":"10.0.0.0/33"})"),
         "p.json:1:42: allow[0].cidr: invalid CIDR \"10.0.0.0/33\": prefix length must be 0-32 for IPv4"},
        {"prefix too long v6", A(R"({"cidr":"2001:db8::/129"})"),
         "p.json:1:42: allow[0].cidr: invalid CIDR \"2001:db8::/129\": prefix length must be 0-128 for IPv6"},
        {"prefix not a number", A(R"({"cidr":"10.0.0.0/x"})"),
         "p.json:1:42: allow[0].cidr: invalid CIDR \"10.0.0.0/x\": prefix length \"x\" is not a number"},
        {"not an address", A(R"({"cidr":"10.0.0/8"})"),
         "p.json:1:42: allow[0].cidr: invalid CIDR \"10.0.0/8\": \"10.0.0\" is not an IPv4 or IPv6 address"},
        {"host bits set v4", A(R"({"cidr":"10.0.0.1/8"})"),
         "p.json:1:42: allow[0].cidr: CIDR \"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"?"},
        {"host bits set v6", A(R"({"cidr":"2001:db8::1/32"})"),
         "p.json:1:42: allow[0].cidr: CIDR \"2001:db8::1/32\" has host bits set; did you mean \"2001:db8::/32\"?"},
        {"cidr wrong type", A(R"({"cidr":["10.0.0.0/8"]})"),
         "p.json:1:42: allow[0].cidr: expected a string, got an array"},
        {"metadata address", A(R"({"cidr":"169.254.169.254/32"})"),
         "p.json:1:42: allow[0].cidr: CIDR \"169.254.169.254/32\" is inside link-local 169.254.0.0/16, which is "
         "never reachable"},
        {"v6 link-local", D(R"({"cidr":"fe80::/64"})"),
         "p.json:1:41: deny[0].cidr: CIDR \"fe80::/64\" is inside link-local fe80::/10, which is never reachable"},
        // Every never-reachable range of the special table: a rule naming only such addresses.
        {"AWS IMDSv6", A(R"({"cidr":"fd00:ec2::254"})"),
         "p.json:1:42: allow[0].cidr: CIDR \"fd00:ec2::254\" is inside AWS IMDSv6 metadata fd00:ec2::254/128, "
         "which is never reachable"},
        {"Alibaba metadata", A(R"({"cidr":"100.100.100.200/32"})"),
         "p.json:1:42: allow[0].cidr: CIDR \"100.100.100.200/32\" is inside Alibaba Cloud metadata "
         "100.100.100.200/32, which is never reachable"},
        {"v4-mapped metadata", A(R"({"cidr":"::ffff:169.254.169.254/128"})"),
         "p.json:1:42: allow[0].cidr: CIDR \"::ffff:169.254.169.254/128\" is inside link-local 169.254.0.0/16, "
         "which is never reachable"},
        {"NAT64 metadata", A(R"({"cidr":"64:ff9b::a9fe:a9fe/128"})"),
         "p.json:1:42: allow[0].cidr: CIDR \"64:ff9b::a9fe:a9fe/128\" is inside link-local embedded in NAT64 "
         "64:ff9b::a9fe:0/112, which is never reachable"},
        {"6to4 metadata", A(R"({"cidr":"2002:a9fe:a9fe::/48"})"),
         "p.json:1:42: allow[0].cidr: CIDR \"2002:a9fe:a9fe::/48\" is inside link-local embedded in 6to4 "
         "2002:a9fe::/32, which is never reachable"},
        {"IPv4-compatible metadata", A(R"({"cidr":"::a9fe:a9fe/128"})"),
         "p.json:1:42: allow[0].cidr: CIDR \"::a9fe:a9fe/128\" is inside link-local embedded in IPv4-compatible "
         "IPv6 ::169.254.0.0/112, which is never reachable"},
        {"allowed_ips metadata", A(R"({"host":"a.com","allowed_ips":["fd00:ec2::254/128"]})"),
         "p.json:1:65: allow[0].allowed_ips[0]: CIDR \"fd00:ec2::254/128\" is inside AWS IMDSv6 metadata "
         "fd00:ec2::254/128, which is never reachable"},
        // Loopback only through a cidr entry; a name never admits it.
        {"allowed_ips loopback v4", A(R"({"host":"a.com","allowed_ips":["127.0.0.0/8"]})"),
         "p.json:1:65: allow[0].allowed_ips[0]: CIDR \"127.0.0.0/8\" is inside loopback 127.0.0.0/8, which a "
         "host entry never admits; allow it with a cidr entry naming the address and port"},
        {"allowed_ips loopback v6", A(R"({"host":"a.com","allowed_ips":["::1"]})"),
         "p.json:1:65: allow[0].allowed_ips[0]: CIDR \"::1\" is inside loopback ::1/128, which a host entry "
         "never admits; allow it with a cidr entry naming the address and port"},
        // ports
        {"port 0", A(R"({"cidr":"10.0.0.0/8","ports":[0]})"),
         "p.json:1:64: allow[0].ports[0]: port 0 is out of range 1-65535"},
        {"port too big", A(R"({"cidr":"10.0.0.0/8","ports":[443,70000]})"),
         "p.json:1:68: allow[0].ports[1]: port 70000 is out of range 1-65535"},
        {"negative port", A(R"({"cidr":"10.0.0.0/8","ports":[-1]})"),
         "p.json:1:64: allow[0].ports[0]: port -1 is out of range 1-65535"},
        {"fractional port", A(R"({"cidr":"10.0.0.0/8","ports":[1.5]})"),
         "p.json:1:64: allow[0].ports[0]: port 1.5 is not an integer"},
        {"exponent port", A(R"({"cidr":"10.0.0.0/8","ports":[1e3]})"),
         "p.json:1:64: allow[0].ports[0]: port 1e3 is not an integer"},
        {"reversed range", A(R"({"cidr":"10.0.0.0/8","ports":["200-100"]})"),
         "p.json:1:64: allow[0].ports[0]: port range \"200-100\" is reversed; did you mean \"100-200\"?"},
        {"range missing end", A(R"({"cidr":"10.0.0.0/8","ports":["80-"]})"),
         "p.json:1:64: allow[0].ports[0]: malformed port range \"80-\"; expected \"lo-hi\" such as \"8000-8100\" "
         "(write single ports as numbers)"},
        {"port name", A(R"({"cidr":"10.0.0.0/8","ports":["http"]})"),
         "p.json:1:64: allow[0].ports[0]: malformed port range \"http\"; expected \"lo-hi\" such as \"8000-8100\" "
         "(write single ports as numbers)"},
        {"range out of bounds", A(R"({"cidr":"10.0.0.0/8","ports":["1-70000"]})"),
         "p.json:1:64: allow[0].ports[0]: port 70000 in range \"1-70000\" is out of range 1-65535"},
        {"range from zero", A(R"({"cidr":"10.0.0.0/8","ports":["0-10"]})"),
         "p.json:1:64: allow[0].ports[0]: port 0 in range \"0-10\" is out of range 1-65535"},
        {"empty ports", A(R"({"cidr":"10.0.0.0/8","ports":[]})"),
         "p.json:1:63: allow[0].ports: ports must not be empty; omit it to mean all ports"},
        {"ports not an array", A(R"({"cidr":"10.0.0.0/8","ports":"443"})"),
         "p.json:1:63: allow[0].ports: expected an array, got a string"},
        {"port of wrong type", A(R"({"cidr":"10.0.0.0/8","ports":[true]})"),
         "p.json:1:64: allow[0].ports[0]: expected a port number or a \"lo-hi\" string, got a boolean"},
        // protocol
        {"unknown protocol", A(R"({"cidr":"10.0.0.0/8","protocol":"icmp"})"),
         "p.json:1:66: allow[0].protocol: unknown protocol \"icmp\" (expected \"tcp\", \"udp\" or \"any\")"},
        {"protocol as number", A(R"({"cidr":"10.0.0.0/8","protocol":6})"),
         "p.json:1:66: allow[0].protocol: expected a string, got a number"},
        {"inspect over udp", I(R"({"host":"a.com","protocol":"udp"})"),
         "p.json:1:63: inspect[0].protocol: inspect entries are TCP only; protocol must be \"tcp\""},
        // allowed_ips
        {"allowed_ips on a cidr entry", A(R"({"cidr":"10.0.0.0/8","allowed_ips":["10.0.0.0/8"]})"),
         "p.json:1:55: allow[0].allowed_ips: allowed_ips only applies to host entries; this entry has a cidr"},
        {"allowed_ips in deny", D(R"({"host":"a.com","allowed_ips":["10.0.0.0/8"]})"),
         "p.json:1:49: deny[0].allowed_ips: allowed_ips is not supported in deny entries"},
        {"empty allowed_ips", A(R"({"host":"a.com","allowed_ips":[]})"),
         "p.json:1:64: allow[0].allowed_ips: allowed_ips must not be empty; omit it to admit any non-special "
         "address"},
        {"bad allowed_ips cidr", A(R"({"host":"a.com","allowed_ips":["10.0.0.0/8","10.1.0.0/8"]})"),
         "p.json:1:78: allow[0].allowed_ips[1]: CIDR \"10.1.0.0/8\" has host bits set; did you mean "
         "\"10.0.0.0/8\"?"},
        {"allowed_ips link-local", A(R"({"host":"a.com","allowed_ips":["169.254.0.0/16"]})"),
         "p.json:1:65: allow[0].allowed_ips[0]: CIDR \"169.254.0.0/16\" is inside link-local 169.254.0.0/16, "
         "which is never reachable"},
        {"allowed_ips element wrong type", A(R"({"host":"a.com","allowed_ips":[10]})"),
         "p.json:1:65: allow[0].allowed_ips[0]: expected a string, got a number"},
        {"comment wrong type", A(R"({"host":"a.com","comment":1})"),
         "p.json:1:60: allow[0].comment: expected a string, got a number"},
    };
}

// Wider prefixes that merely contain never-reachable or loopback addresses
// are fine: they never reach them (CompiledPolicy::admit, the kernel).
TEST(PolicyParse, WiderPrefixesAroundNeverReachableAreAccepted) {
    for (const char* c : {"100.64.0.0/10", "fd00::/8", "64:ff9b::/96", "2002::/16", "169.0.0.0/8", "::/0", "0.0.0.0/0",
                          "127.0.0.1/32", "::1/128"}) {
        auto r = parse_policy(A(std::string(R"({"cidr":")") + c + R"("})"), "p.json");
        EXPECT_TRUE(r.ok()) << c << ": " << r.error_text();
    }
    auto r = parse_policy(A(R"({"host":"a.com","allowed_ips":["0.0.0.0/0","::/0","fd00::/8"]})"), "p.json");
    EXPECT_TRUE(r.ok()) << r.error_text();
}

TEST(PolicyParse, DenyWithoutProtocolDeniesEveryProtocol) {
    auto r = parse_policy(D(R"({"cidr":"203.0.113.66/32"})"), "p.json");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r.policy->deny[0].protocol, Protocol::any);
    auto a = parse_policy(A(R"({"cidr":"203.0.113.0/24"})"), "p.json");
    ASSERT_TRUE(a.ok());
    EXPECT_EQ(a.policy->allow[0].protocol, Protocol::tcp);
}

TEST(PolicyParse, MalformedPoliciesReportExactMessages) {
    auto cases = bad_cases();
    ASSERT_GE(cases.size(), 45u);
    for (const auto& c : cases) {
        auto r = parse_policy(c.text, "p.json");
        EXPECT_FALSE(r.ok()) << c.what;
        EXPECT_EQ(errors_of(c.text), c.expected) << c.what << "\n  input: " << c.text;
    }
}

TEST(PolicyParse, ReportsEveryErrorInFileOrder) {
    const std::string text = R"({
  "version": 3,
  "name": "bad name",
  "colour": "blue",
  "allow": [
    {"host": "ok.example.com", "ports": [443]},
    {"host": "a..b", "ports": [0, "9-1"], "protocol": "sctp"},
    {"cidr": "10.0.0.1/8", "allowed_ips": ["10.0.0.0/8"]}
  ],
  "deny": [ {"hots": "x.com"} ]
})";
    auto r = parse_policy(text, "multi.json");
    ASSERT_FALSE(r.ok());
    std::vector<std::string> got;
    for (const auto& e : r.errors) got.push_back(e.to_string());
    std::vector<std::string> want = {
        "multi.json:2:14: version: unsupported version 3; this build understands version 1",
        "multi.json:3:11: name: name \"bad name\" is invalid: use 1-64 characters from A-Z a-z 0-9 . _ -",
        "multi.json:4:3: colour: unknown field \"colour\" (expected one of: version, name, comment, inference, "
        "allow, deny, inspect)",
        "multi.json:7:14: allow[1].host: host \"a..b\" has an empty label",
        "multi.json:7:32: allow[1].ports[0]: port 0 is out of range 1-65535",
        "multi.json:7:35: allow[1].ports[1]: port range \"9-1\" is reversed; did you mean \"1-9\"?",
        "multi.json:7:55: allow[1].protocol: unknown protocol \"sctp\" (expected \"tcp\", \"udp\" or \"any\")",
        "multi.json:8:14: allow[2].cidr: CIDR \"10.0.0.1/8\" has host bits set; did you mean \"10.0.0.0/8\"?",
        "multi.json:8:28: allow[2].allowed_ips: allowed_ips only applies to host entries; this entry has a cidr",
        "multi.json:10:13: deny[0]: entry must have \"host\" or \"cidr\"",
        "multi.json:10:14: deny[0].hots: unknown field \"hots\" (expected one of: host, cidr, ports, protocol, "
        "allowed_ips, comment)",
    };
    EXPECT_EQ(got, want);
    EXPECT_EQ(r.error_text().back(), '\n');
}

TEST(PolicyParse, GoodPolicyIsNormalised) {
    const std::string text = R"({
  "version": 1,
  "name": "agent-default",
  "inference": { "enabled": false },
  "allow": [
    { "host": "API.GitHub.com", "ports": [443, 80, "8000-8100", "8050-8200", 8201] },
    { "host": "*.pythonhosted.org", "ports": [443] },
    { "host": "registry.internal.example", "ports": [443], "allowed_ips": ["10.20.0.0/16"] },
    { "cidr": "203.0.113.0/24", "ports": [80, "8000-8100"], "protocol": "tcp" },
    { "cidr": "2001:DB8::/32", "protocol": "any", "comment": "test net" },
    { "cidr": "::ffff:10.0.0.0/104" },
    { "cidr": "192.0.2.7" }
  ],
  "deny": [ { "cidr": "203.0.113.66/32" } ],
  "inspect": [ { "host": "*.example.org" } ]
})";
    auto r = parse_policy(text, "good.json");
    ASSERT_TRUE(r.ok()) << r.error_text();
    const Policy& p = *r.policy;
    EXPECT_EQ(p.name, "agent-default");
    EXPECT_FALSE(p.inference_enabled);
    ASSERT_EQ(p.allow.size(), 7u);
    EXPECT_EQ(p.allow[0].host, "api.github.com");
    EXPECT_EQ(p.allow[0].ports, (std::vector<PortRange>{{80, 80}, {443, 443}, {8000, 8201}}));
    EXPECT_TRUE(p.allow[1].is_wildcard());
    EXPECT_EQ(p.allow[4].cidr->to_string(), "2001:db8::/32");
    EXPECT_EQ(p.allow[4].protocol, Protocol::any);
    EXPECT_EQ(p.allow[5].cidr->to_string(), "10.0.0.0/8");  // v4-mapped v6 is IPv4
    EXPECT_EQ(p.allow[6].cidr->to_string(), "192.0.2.7/32");
    EXPECT_EQ(p.allow[0].loc.line, 6u);
    EXPECT_EQ(p.allow[0].loc.col, 5u);
    EXPECT_EQ(p.allow[0].loc.path, "allow[0]");

    const std::string canonical = R"({
  "version": 1,
  "name": "agent-default",
  "inference": {"enabled": false},
  "allow": [
    {"host": "api.github.com", "ports": [80, 443, "8000-8201"], "protocol": "tcp"},
    {"host": "*.pythonhosted.org", "ports": [443], "protocol": "tcp"},
    {"host": "registry.internal.example", "ports": [443], "protocol": "tcp", "allowed_ips": ["10.20.0.0/16"]},
    {"cidr": "203.0.113.0/24", "ports": [80, "8000-8100"], "protocol": "tcp"},
    {"cidr": "2001:db8::/32", "protocol": "any", "comment": "test net"},
    {"cidr": "10.0.0.0/8", "protocol": "tcp"},
    {"cidr": "192.0.2.7/32", "protocol": "tcp"}
  ],
  "deny": [
    {"cidr": "203.0.113.66/32", "protocol": "any"}
  ],
  "inspect": [
    {"host": "*.example.org", "protocol": "tcp"}
  ]
}
)";
    EXPECT_EQ(to_json(p), canonical);

    // Round trip: the canonical form parses to the same policy and prints the same.
    auto again = parse_policy(to_json(p), "again.json");
    ASSERT_TRUE(again.ok()) << again.error_text();
    EXPECT_EQ(to_json(*again.policy), canonical);
}

TEST(PolicyParse, MinimalPolicyRoundTrips) {
    auto r = parse_policy(R"({"version":1,"name":"x"})", "m.json");
    ASSERT_TRUE(r.ok()) << r.error_text();
    EXPECT_TRUE(r.policy->inference_enabled);
    EXPECT_EQ(to_json(*r.policy),
              "{\n  \"version\": 1,\n  \"name\": \"x\",\n  \"inference\": {\"enabled\": true},\n"
              "  \"allow\": [],\n  \"deny\": [],\n  \"inspect\": []\n}\n");
    auto again = parse_policy(to_json(*r.policy), "m.json");
    EXPECT_TRUE(again.ok());
}

TEST(PolicyParse, InferenceLimitsAreReadAndNormalised) {
    auto r = parse_policy(R"({"version":1,"name":"t","inference":{"limits":{"tokens_per_day":1000000000000,"requests_per_minute":1}}})",
                          "l.json");
    ASSERT_TRUE(r.policy) << r.errors.front().to_string();
    EXPECT_EQ(r.policy->inference_requests_per_minute, 1u);
    EXPECT_EQ(r.policy->inference_tokens_per_day, 1000000000000u);
    EXPECT_NE(to_json(*r.policy).find(R"("limits": {"requests_per_minute": 1, "tokens_per_day": 1000000000000})"),
              std::string::npos)
        << to_json(*r.policy);
    auto again = parse_policy(to_json(*r.policy), "again.json");
    ASSERT_TRUE(again.policy);
    EXPECT_EQ(again.policy->inference_tokens_per_day, 1000000000000u);
    auto none = parse_policy(R"({"version":1,"name":"t"})", "n.json");
    EXPECT_EQ(to_json(*none.policy).find("limits"), std::string::npos);
}

TEST(PolicyParse, UnreadableFileNamesThePath) {
    auto r = validate_policy_file("/nonexistent/dir/policy.json");
    ASSERT_EQ(r.errors.size(), 1u);
    EXPECT_EQ(r.errors[0].to_string().rfind("/nonexistent/dir/policy.json: cannot read policy file: ", 0), 0u)
        << r.errors[0].to_string();
}

TEST(PolicyParse, ExamplesValidateAndCompile) {
    for (const char* name : {"github-pypi.json", "inference-only.json", "internal-service.json"}) {
        std::string path = std::string(REDIR_SOURCE_DIR) + "/policy/examples/" + name;
        auto r = validate_policy_file(path);
        ASSERT_TRUE(r.ok()) << path << "\n" << r.error_text();
        EXPECT_NO_THROW(compile(*r.policy, 7)) << path;
        auto again = parse_policy(to_json(*r.policy), name);
        ASSERT_TRUE(again.ok()) << again.error_text();
        EXPECT_EQ(to_json(*again.policy), to_json(*r.policy));
    }
}

}  // namespace
