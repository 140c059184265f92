// The control protocol's typed messages: every request and reply survives a
// round trip, every malformed request gets the typed error naming its field,
// strings are escaped, and the replies keep the bytes redirctl and scripts read.
#include <gtest/gtest.h>
#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "control/dispatcher.hpp"
#include "message_samples.hpp"

namespace redir::control {
namespace {

using testing::FieldInfo;
using testing::filled;
using testing::fields_of;
using testing::for_each_command;

std::string compact(const rapidjson::Value& v) {
    rapidjson::StringBuffer sb;
    rapidjson::Writer<rapidjson::StringBuffer> w(sb);
    v.Accept(w);
    return sb.GetString();
}

// LINE with member K of the top-level object replaced by VALUE (JSON text), or removed when VALUE is empty.
std::string with_member(const std::string& line, const std::string& k, const std::string& value) {
    rapidjson::Document d;
    d.Parse(line.c_str());
    d.RemoveMember(k.c_str());
    if (!value.empty()) {
        rapidjson::Document v(&d.GetAllocator());
        v.Parse(value.c_str());
        d.AddMember(rapidjson::Value(k.c_str(), d.GetAllocator()), rapidjson::Value(v, d.GetAllocator()),
                    d.GetAllocator());
    }
    return compact(d);
}

ProtocolError refusal_of(const std::string& line) {
    try {
        decode_request(line);
    } catch (const ProtocolError& e) {
        return e;
    }
    ADD_FAILURE() << "accepted: " << line;
    return ProtocolError(ErrorCode::invalid_value, "", "accepted");
}

TEST(ControlProtocol, TableNamesEveryCommandOnce) {
    auto names = command_names();
    EXPECT_EQ(names.size(), std::variant_size_v<Request>);
    for (size_t i = 0; i < names.size(); i++) {
        EXPECT_EQ(command_index(names[i]), i) << names[i];
        for (size_t j = i + 1; j < names.size(); j++) EXPECT_NE(names[i], names[j]);
    }
    EXPECT_FALSE(command_index("policy.nuke"));
}

TEST(ControlProtocol, EveryRequestRoundTrips) {
    for_each_command([](auto tag) {
        using Req = typename decltype(tag)::type;
        std::string line = encode_request(filled<Req>());
        SCOPED_TRACE(line);
        EXPECT_EQ(line.find('\n'), std::string::npos);
        Request back = decode_request(line);
        ASSERT_TRUE(std::holds_alternative<Req>(back));
        EXPECT_EQ(encode_request(std::get<Req>(back)), line);
        EXPECT_EQ(encode_request(back), line);
    });
}

TEST(ControlProtocol, EveryReplyRoundTrips) {
    auto check = [](auto reply) {
        using Reply = decltype(reply);
        std::string line = encode_reply(reply);
        SCOPED_TRACE(line);
        EXPECT_EQ(line.find('\n'), std::string::npos);
        auto a = decode_answer<Reply>(line);
        ASSERT_TRUE(a);
        EXPECT_EQ(encode_reply(*a), line);
    };
    for_each_command([&](auto tag) { check(filled<typename decltype(tag)::type::Reply>()); });
    // Absent optional parts stay absent.
    check(StatusReply{});
}

TEST(ControlProtocol, ErrorRepliesRoundTrip) {
    ErrorReply e = filled<ErrorReply>();
    std::string line = encode_error(e);
    auto a = decode_answer<StatusReply>(line);
    ASSERT_FALSE(a);
    EXPECT_EQ(encode_error(a.error), line);
    EXPECT_EQ(a.error.field, e.field);
}

// The bytes the agent wrote before the protocol was typed (INTERFACE.md, e2e tests, scripts).
TEST(ControlProtocol, RepliesKeepTheirWireBytes) {
    EXPECT_EQ(encode_reply(AttachReply{"/sys/fs/cgroup/a", 7, "p", {"w"}}),
              R"({"ok":true,"cgroup":"/sys/fs/cgroup/a","cgroup_id":7,"policy":"p","warnings":["w"]})");
    EXPECT_EQ(encode_reply(PolicyLoadReply{"p", 3, 1, 4, 2, {"*.example.com"}}),
              R"({"ok":true,"policy":"p","policy_id":3,"attachments":1,"lpm_entries":4,"portsets":2,"host_rules":["*.example.com"]})");
    PolicyLoadReply revoked{"p", 3, 1, 0, 0, {}, "no sock_diag", 2, 5};
    EXPECT_EQ(encode_reply(revoked),
              R"({"ok":true,"policy":"p","policy_id":3,"attachments":1,"lpm_entries":0,"portsets":0,"host_rules":[],)"
              R"("revocation_unsupported":"no sock_diag","revoked":2,"kept":5})");
    EXPECT_EQ(encode_reply(PolicyShowReply{"p", 3, {R"({"version":1})"}}),
              R"({"ok":true,"policy":"p","policy_id":3,"normalized":{"version":1}})");
    EXPECT_EQ(encode_reply(EventsReply{{{R"({"a":1})"}, {R"({"b":2})"}}}), R"({"ok":true,"events":[{"a":1},{"b":2}]})");
    EXPECT_EQ(encode_reply(InferenceReply{{"default", "prov", "m", 2}}),
              R"({"ok":true,"inference":{"route":"default","provider":"prov","model":"m","version":2}})");
    EXPECT_EQ(encode_reply(InferenceListReply{{{{"fast", "prov", "m", 3}, {"policy p"}}}}),
              R"({"ok":true,"routes":[{"route":"fast","provider":"prov","model":"m","version":3,)"
              R"("users":["policy p"]}]})");
    EXPECT_EQ(encode_reply(ProviderReply{{"n", "openai", "https://api", "", {{"OPENAI_API_KEY", "sk-...abcd"}}}}),
              R"({"ok":true,"provider":{"name":"n","type":"openai","base_url":"https://api","ca_file":"","credentials":{"OPENAI_API_KEY":"sk-...abcd"}}})");
    StatusReply s;
    s.attachments.push_back({"/c", 9, "p", 3, 6, 5353, {{12, "sh", {"CAP_NET_ADMIN"}}}, std::vector<std::string>{"h"},
                             std::vector<std::string>{}});
    s.orphans = {4};
    EXPECT_EQ(encode_reply(s),
              R"({"ok":true,"agent":{"pid":0,"state_dir":"","run_dir":"","bpffs":"","inference_vip":"","relay_port":0,)"
              R"("terminator_port":0,"plain_http_port":0,"dns_upstream":"","packet_socket_refusal":false,"lsm_cgroup":"",)"
              R"("uptime_s":0},"kernel":[],"attachments":[{"cgroup":"/c","cgroup_id":9,"policy":"p","policy_id":3,)"
              R"("programs":6,"dns_port":5353,"capable":[{"pid":12,"comm":"sh","caps":["CAP_NET_ADMIN"]}],)"
              R"("host_rules":["h"],"pending_hosts":[]}],"orphans":[4],"counters":{"allow":0,"deny":0,"redirect":0,)"
              R"("socket_deny":0,"sockopt_deny":0,"events_dropped":0,"audit_records":0}})");
    EXPECT_EQ(encode_error(ErrorReply{"bad", std::vector<std::string>{"p.json:1:2: x"}, "", ""}),
              R"({"ok":false,"error":"bad","errors":["p.json:1:2: x"]})");
    EXPECT_EQ(encode_error(ErrorReply{"no policy named \"x\""}), R"({"ok":false,"error":"no policy named \"x\""})");
}

TEST(ControlProtocol, RequestsTheAgentAlwaysReadStillDecode) {
    // What redirctl sent before the protocol was typed.
    auto r = decode_request(
        R"({"cmd":"provider.update","name":"n","credentials":{},"base_url":"https://x","remove_credentials":["K"]})");
    auto& u = std::get<ProviderUpdateRequest>(r);
    EXPECT_EQ(u.base_url, "https://x");
    EXPECT_FALSE(u.ca_file);
    EXPECT_EQ(u.remove_credentials, std::vector<std::string>{"K"});
    auto e = std::get<EventsRequest>(decode_request(R"({"cmd":"events"})"));
    EXPECT_EQ(e.count, 100u);
    EXPECT_FALSE(e.follow);
    auto a = std::get<AttachRequest>(decode_request(R"({"cmd":"attach","cgroup":"/c","policy_name":"p"})"));
    EXPECT_EQ(a.policy_name, "p");
    EXPECT_TRUE(a.policy_text.empty());
    // Fields a newer client adds are ignored, not refused.
    EXPECT_NO_THROW(decode_request(R"({"cmd":"status","since":"later"})"));
}

TEST(ControlProtocol, MissingRequiredFieldIsNamed) {
    for_each_command([](auto tag) {
        using Req = typename decltype(tag)::type;
        std::string line = encode_request(filled<Req>());
        for (const FieldInfo& f : fields_of<Req>()) {
            std::string without = with_member(line, f.name, "");
            if (f.need == Need::optional) {
                EXPECT_NO_THROW(decode_request(without)) << without;
                continue;
            }
            auto e = refusal_of(without);
            EXPECT_EQ(e.code, ErrorCode::missing_field) << without;
            EXPECT_EQ(e.field, f.name);
            EXPECT_NE(std::string(e.what()).find("\"" + f.name + "\""), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find(Req::kName), std::string::npos) << e.what();
        }
    });
}

TEST(ControlProtocol, WrongTypedFieldIsNamed) {
    for_each_command([](auto tag) {
        using Req = typename decltype(tag)::type;
        std::string line = encode_request(filled<Req>());
        for (const FieldInfo& f : fields_of<Req>()) {
            // null is the wrong type for every field; so are the types around it.
            for (const char* bad : {"null", "[1]", "{\"x\":1}", "-1", "\"s\"", "true"}) {
                std::string wrong = with_member(line, f.name, bad);
                try {
                    decode_request(wrong);
                } catch (const ProtocolError& e) {
                    EXPECT_EQ(e.code, ErrorCode::wrong_type) << wrong;
                    EXPECT_EQ(e.field.substr(0, f.name.size()), f.name) << wrong;
                    continue;
                }
                // Accepted only when BAD is of the field's own type.
                EXPECT_STRNE(bad, "null") << wrong;
            }
        }
    });
}

TEST(ControlProtocol, NestedWrongTypesNameTheirPath) {
    auto e = refusal_of(R"({"cmd":"provider.create","name":"n","type":"t","credentials":{"KEY":5}})");
    EXPECT_EQ(e.code, ErrorCode::wrong_type);
    EXPECT_EQ(e.field, "credentials.KEY");
    e = refusal_of(R"({"cmd":"provider.update","name":"n","remove_credentials":["a",2]})");
    EXPECT_EQ(e.field, "remove_credentials[1]");
    e = refusal_of(R"({"cmd":"events","count":1.5})");
    EXPECT_EQ(e.field, "count");
}

TEST(ControlProtocol, MalformedLinesGetTypedErrors) {
    struct Case {
        std::string line;
        ErrorCode code;
        std::string field;
    };
    for (auto& c : std::vector<Case>{{"", ErrorCode::malformed_json, ""},
                                     {"{", ErrorCode::malformed_json, ""},
                                     {"{\"cmd\":\"status\"} {}", ErrorCode::malformed_json, ""},
                                     {"[\"status\"]", ErrorCode::malformed_json, ""},
                                     {"\"status\"", ErrorCode::malformed_json, ""},
                                     {"{}", ErrorCode::missing_field, "cmd"},
                                     {"{\"cmd\":7}", ErrorCode::wrong_type, "cmd"},
                                     {"{\"cmd\":\"policy.nuke\"}", ErrorCode::unknown_command, "cmd"},
                                     {"{\"cmd\":\"STATUS\"}", ErrorCode::unknown_command, "cmd"}}) {
        auto e = refusal_of(c.line);
        EXPECT_EQ(e.code, c.code) << c.line;
        EXPECT_EQ(e.field, c.field) << c.line;
    }
}

TEST(ControlProtocol, NulInAStringIsRefusedNotCut) {
    auto e = refusal_of(R"({"cmd":"detach","cgroup":"/sys/fs/cgroup/a\u0000/../b"})");
    EXPECT_EQ(e.code, ErrorCode::invalid_value);
    EXPECT_EQ(e.field, "cgroup");
}

TEST(ControlProtocol, StringsAreEscapedIntoValidJson) {
    std::string nasty = "q\"uote\\ new\nline \r\t\x01\x7f nul\0 end";
    nasty += std::string("\0", 1) + "bad utf8 \xff\xfe \xc3 \xed\xa0\x80 ok \xe2\x82\xac";
    std::string line = encode_reply(DetachReply{nasty});
    EXPECT_EQ(line.find('\n'), std::string::npos);
    EXPECT_EQ(line.find('\0'), std::string::npos);
    rapidjson::Document d;
    d.Parse<rapidjson::kParseValidateEncodingFlag>(line.c_str());
    ASSERT_FALSE(d.HasParseError()) << line;
    std::string back(d["cgroup"].GetString(), d["cgroup"].GetStringLength());
    EXPECT_EQ(back.substr(0, 34), nasty.substr(0, 34));             // escaped, not changed
    EXPECT_NE(back.find("bad utf8 \xef\xbf\xbd"), std::string::npos);  // invalid bytes become U+FFFD
    EXPECT_NE(back.find("ok \xe2\x82\xac"), std::string::npos);       // valid UTF-8 kept
    EXPECT_EQ(back.find('\xff'), std::string::npos);
    // The same in a key (a credential name) and in a typed error's message.
    std::string err = encode_error(ProtocolError(ErrorCode::unknown_command, "cmd", "unknown \"\xff\n\""));
    rapidjson::Document e;
    e.Parse<rapidjson::kParseValidateEncodingFlag>(err.c_str());
    EXPECT_FALSE(e.HasParseError()) << err;
    std::string p = encode_object(ProviderView{"n", "t", "", "", {{"K\xff\n", "v"}}});
    e.Parse<rapidjson::kParseValidateEncodingFlag>(p.c_str());
    EXPECT_FALSE(e.HasParseError()) << p;
}

TEST(ControlDispatcher, ServesEachCommandFromItsSlot) {
    Dispatcher d;
    EXPECT_EQ(d.unserved().size(), std::variant_size_v<Request>);
    d.on<DetachRequest>([](const DetachRequest& r) { return DetachReply{r.cgroup + " done"}; });
    d.on<EventsRequest>([](const EventsRequest& r, const Dispatcher::Conn& c) {
        EXPECT_EQ(c, nullptr);
        return EventsReply{std::vector<RawJson>(r.count, RawJson{"{}"})};
    });
    EXPECT_EQ(d.dispatch(R"({"cmd":"detach","cgroup":"/c"})", nullptr), R"({"ok":true,"cgroup":"/c done"})");
    EXPECT_EQ(d.dispatch(R"({"cmd":"events","count":2})", nullptr), R"({"ok":true,"events":[{},{}]})");
    // A command of the table without a handler: refused, typed.
    EXPECT_EQ(d.dispatch(R"({"cmd":"status"})", nullptr),
              R"({"ok":false,"error":"command \"status\" is not served by this agent","code":"unknown_command","field":"cmd"})");
    EXPECT_EQ(d.unserved().size(), std::variant_size_v<Request> - 2);
}

TEST(ControlDispatcher, UnknownAndMalformedNeverReachAHandler) {
    Dispatcher d;
    int calls = 0;
    d.on<DetachRequest>([&](const DetachRequest&) {
        calls++;
        return DetachReply{};
    });
    EXPECT_EQ(d.dispatch(R"({"cmd":"policy.nuke","cgroup":"/c"})", nullptr),
              R"({"ok":false,"error":"unknown command \"policy.nuke\"","code":"unknown_command","field":"cmd"})");
    EXPECT_EQ(d.dispatch(R"({"cmd":"detach"})", nullptr),
              R"({"ok":false,"error":"detach request refused: field \"cgroup\" is missing","code":"missing_field","field":"cgroup"})");
    EXPECT_EQ(d.dispatch(R"({"cmd":"detach","cgroup":["/c"]})", nullptr),
              R"({"ok":false,"error":"detach request refused: field \"cgroup\" must be a string","code":"wrong_type","field":"cgroup"})");
    EXPECT_EQ(calls, 0);
    // A handler's failure propagates to the agent, which answers it (see Agent::handle).
    d.on<StatusRequest>([](const StatusRequest&) -> StatusReply { throw Error("broken"); });
    EXPECT_THROW(d.dispatch(R"({"cmd":"status"})", nullptr), Error);
}

}  // namespace
}  // namespace redir::control
