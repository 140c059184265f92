// The responder's decisions on wire messages, without sockets.
#include <gtest/gtest.h>

#include <string>

#include "dns/core.hpp"
#include "dns_test_util.hpp"

namespace redir::dns {
namespace {

using namespace test;

// Policy stand-in with the semantics of the policy compiler: exact names and
// "*.suffix" (below the suffix, not the suffix itself); deny wins.
struct FakePolicy {
    std::vector<std::string> allow{"api.github.com", "*.pythonhosted.org", "registry.internal.example"};
    std::vector<std::string> deny{"evil.pythonhosted.org"};
    std::vector<std::string> calls;

    static bool matches(const std::string& pat, std::string_view name) {
        if (pat.rfind("*.", 0) == 0) {
            std::string_view suffix = std::string_view(pat).substr(1);  // ".pythonhosted.org"
            return name.size() > suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
        }
        return name == pat;
    }

    SandboxView view(bool inference = true) {
        SandboxView v;
        v.inference_enabled = inference;
        v.vip4 = {198, 18, 0, 1};
        v.match_host = [this](std::string_view name) -> std::optional<HostMatch> {
            calls.emplace_back(name);
            for (const auto& d : deny)
                if (matches(d, name)) return HostMatch{0, true};
            for (size_t i = 0; i < allow.size(); ++i) {
                if (!matches(allow[i], name)) continue;
                return HostMatch{static_cast<uint32_t>(i + 1), false};
            }
            return std::nullopt;
        };
        return v;
    }
};

Reply expect_reply(const QueryAction& a) {
    EXPECT_TRUE(std::holds_alternative<Reply>(a));
    return std::holds_alternative<Reply>(a) ? std::get<Reply>(a) : Reply{};
}

Forward expect_forward(const QueryAction& a) {
    EXPECT_TRUE(std::holds_alternative<Forward>(a));
    return std::holds_alternative<Forward>(a) ? std::get<Forward>(a) : Forward{};
}

TEST(DnsQuery, InferenceAIsTheVip) {
    FakePolicy pol;
    Reply r = expect_reply(handle_query(make_query("Inference.LOCAL.", LDNS_RR_TYPE_A, 0xbeef), pol.view()));
    EXPECT_EQ(r.verdict, Verdict::inference);
    EXPECT_EQ(r.name, "inference.local");
    EXPECT_EQ(id_of(r.wire), 0xbeef);
    EXPECT_EQ(rcode_of(r.wire), LDNS_RCODE_NOERROR);
    EXPECT_EQ(answer_addrs(r.wire), std::vector<std::string>{"198.18.0.1"});
    auto p = parse(r.wire);
    ASSERT_TRUE(p);
    EXPECT_TRUE(ldns_pkt_aa(p.get()));
    EXPECT_EQ(ldns_rr_ttl(ldns_rr_list_rr(ldns_pkt_answer(p.get()), 0)), kInferenceTtl);
    // The question comes back as the client spelled it (0x20 randomisation).
    detail::MallocPtr<char> q(ldns_rdf2str(ldns_rr_owner(ldns_rr_list_rr(ldns_pkt_question(p.get()), 0))));
    EXPECT_STREQ(q.get(), "Inference.LOCAL.");
    EXPECT_TRUE(pol.calls.empty()) << "inference.local never reaches the policy";
}

TEST(DnsQuery, InferenceOtherTypesAreEmptyNoError) {
    FakePolicy pol;
    for (uint16_t t : {LDNS_RR_TYPE_AAAA, LDNS_RR_TYPE_HTTPS, LDNS_RR_TYPE_MX, LDNS_RR_TYPE_TXT}) {
        Reply r = expect_reply(handle_query(make_query("inference.local", t), pol.view()));
        EXPECT_EQ(r.verdict, Verdict::inference);
        EXPECT_EQ(rcode_of(r.wire), LDNS_RCODE_NOERROR) << t;
        auto p = parse(r.wire);
        ASSERT_TRUE(p);
        EXPECT_EQ(ldns_pkt_ancount(p.get()), 0) << t;
    }
}

TEST(DnsQuery, InferenceAaaaIsTheVip6WhenTheAgentHasOne) {
    FakePolicy pol;
    SandboxView v = pol.view();
    v.vip6 = *parse_addr("2001:db8:5eed::1");
    Reply r = expect_reply(handle_query(make_query("inference.local", LDNS_RR_TYPE_AAAA), v));
    EXPECT_EQ(r.verdict, Verdict::inference);
    EXPECT_EQ(answer_addrs(r.wire), std::vector<std::string>{"2001:db8:5eed::1"});
    // A stays the IPv4 VIP; an IPv6-only sandbox and a dual-stack one both resolve it.
    EXPECT_EQ(answer_addrs(expect_reply(handle_query(make_query("inference.local", LDNS_RR_TYPE_A), v)).wire),
              std::vector<std::string>{"198.18.0.1"});
}

TEST(DnsQuery, InferenceDisabledIsNxdomain) {
    FakePolicy pol;
    Reply r = expect_reply(handle_query(make_query("inference.local", LDNS_RR_TYPE_A), pol.view(false)));
    EXPECT_EQ(r.verdict, Verdict::denied);
    EXPECT_EQ(rcode_of(r.wire), LDNS_RCODE_NXDOMAIN);
}

TEST(DnsQuery, NamesBelowInferenceLocalNeverForwarded) {
    FakePolicy pol;
    pol.allow.push_back("*.local");
    Reply r = expect_reply(handle_query(make_query("x.inference.local", LDNS_RR_TYPE_A), pol.view()));
    EXPECT_EQ(rcode_of(r.wire), LDNS_RCODE_NXDOMAIN);
    EXPECT_TRUE(pol.calls.empty());
    EXPECT_TRUE(std::holds_alternative<Forward>(handle_query(make_query("printer.local", 1), pol.view())));
}

TEST(DnsQuery, DeniedNameIsNxdomainWithName) {
    FakePolicy pol;
    Reply r = expect_reply(handle_query(make_query("Exfil.Example.COM", LDNS_RR_TYPE_A, 7), pol.view()));
    EXPECT_EQ(r.verdict, Verdict::denied);
    EXPECT_EQ(r.name, "exfil.example.com");
    EXPECT_EQ(r.qtype, LDNS_RR_TYPE_A);
    EXPECT_EQ(rcode_of(r.wire), LDNS_RCODE_NXDOMAIN);
    EXPECT_EQ(id_of(r.wire), 7);
    EXPECT_EQ(pol.calls, std::vector<std::string>{"exfil.example.com"});
}

TEST(DnsQuery, NoMatcherDeniesEverything) {
    SandboxView v;
    Reply r = expect_reply(handle_query(make_query("api.github.com", LDNS_RR_TYPE_A), v));
    EXPECT_EQ(rcode_of(r.wire), LDNS_RCODE_NXDOMAIN);
}

TEST(DnsQuery, AllowedNameIsForwarded) {
    FakePolicy pol;
    Forward f = expect_forward(handle_query(make_query("API.github.com.", LDNS_RR_TYPE_AAAA, 0x4242), pol.view()));
    EXPECT_EQ(f.name, "api.github.com");
    EXPECT_EQ(f.qtype, LDNS_RR_TYPE_AAAA);
    EXPECT_EQ(f.client_id, 0x4242);
    EXPECT_EQ(f.client_udp_size, 512);
    EXPECT_EQ(f.match.portset_id, 1u);
    EXPECT_FALSE(f.match.deny);
    auto q = parse(f.query);
    ASSERT_TRUE(q);
    EXPECT_EQ(ldns_pkt_id(q.get()), 0);
    EXPECT_FALSE(ldns_pkt_qr(q.get()));
    EXPECT_TRUE(ldns_pkt_rd(q.get()));
    EXPECT_FALSE(ldns_pkt_edns(q.get()));
    EXPECT_EQ(ldns_pkt_qdcount(q.get()), 1);
}

TEST(DnsQuery, ForwardCarriesClientEdnsSize) {
    FakePolicy pol;
    Forward f = expect_forward(handle_query(make_query("api.github.com", LDNS_RR_TYPE_A, 1, 4096), pol.view()));
    EXPECT_EQ(f.client_udp_size, 4096);
    auto q = parse(f.query);
    ASSERT_TRUE(q);
    EXPECT_TRUE(ldns_pkt_edns(q.get()));
    EXPECT_EQ(ldns_pkt_edns_udp_size(q.get()), 1232);
    // A client advertising less than 512 still gets 512 (RFC 6891).
    Forward g = expect_forward(handle_query(make_query("api.github.com", LDNS_RR_TYPE_A, 1, 100), pol.view()));
    EXPECT_EQ(g.client_udp_size, 512);
}

TEST(DnsQuery, WildcardSemantics) {
    FakePolicy pol;
    auto v = pol.view();
    EXPECT_TRUE(std::holds_alternative<Forward>(handle_query(make_query("files.pythonhosted.org", 1), v)));
    EXPECT_TRUE(std::holds_alternative<Forward>(handle_query(make_query("a.b.pythonhosted.org", 1), v)));
    Reply apex = expect_reply(handle_query(make_query("pythonhosted.org", 1), v));
    EXPECT_EQ(rcode_of(apex.wire), LDNS_RCODE_NXDOMAIN);
    Reply lookalike = expect_reply(handle_query(make_query("xpythonhosted.org", 1), v));
    EXPECT_EQ(rcode_of(lookalike.wire), LDNS_RCODE_NXDOMAIN);
    Reply denied = expect_reply(handle_query(make_query("evil.pythonhosted.org", 1), v));
    EXPECT_EQ(denied.verdict, Verdict::denied);
    EXPECT_EQ(rcode_of(denied.wire), LDNS_RCODE_NXDOMAIN);
}

TEST(DnsQuery, NonHostnameBytesNeverReachPolicy) {
    FakePolicy pol;
    // Labels holding a dot, a NUL or a '*': no policy pattern can mean them.
    Reply r = expect_reply(handle_query(make_query("api\\.github.com", 1), pol.view()));
    EXPECT_EQ(rcode_of(r.wire), LDNS_RCODE_NXDOMAIN);
    Reply r2 = expect_reply(handle_query(make_query("api\\000.github.com", 1), pol.view()));
    EXPECT_EQ(rcode_of(r2.wire), LDNS_RCODE_NXDOMAIN);
    Reply r3 = expect_reply(handle_query(make_query("*.pythonhosted.org", 1), pol.view()));
    EXPECT_EQ(rcode_of(r3.wire), LDNS_RCODE_NXDOMAIN);
    EXPECT_TRUE(pol.calls.empty());
}

TEST(DnsQuery, RefusedClassAndMetaTypes) {
    FakePolicy pol;
    Reply ch = expect_reply(handle_query(make_query("version.bind", LDNS_RR_TYPE_TXT, 1, -1, LDNS_RR_CLASS_CH), pol.view()));
    EXPECT_EQ(ch.verdict, Verdict::refused);
    EXPECT_EQ(rcode_of(ch.wire), LDNS_RCODE_REFUSED);
    for (uint16_t t : {LDNS_RR_TYPE_ANY, LDNS_RR_TYPE_AXFR, LDNS_RR_TYPE_IXFR}) {
        Reply r = expect_reply(handle_query(make_query("api.github.com", t), pol.view()));
        EXPECT_EQ(r.verdict, Verdict::refused) << t;
        EXPECT_EQ(rcode_of(r.wire), LDNS_RCODE_REFUSED) << t;
    }
}

TEST(DnsQuery, MalformedInputs) {
    FakePolicy pol;
    auto v = pol.view();
    // Too short to hold an ID: nothing to answer.
    EXPECT_TRUE(std::holds_alternative<Drop>(handle_query(Bytes{}, v)));
    EXPECT_TRUE(std::holds_alternative<Drop>(handle_query(Bytes{0x12, 0x34, 0x01}, v)));
    // A response is never answered (no reflection loops).
    Bytes resp = make_answer(make_query("api.github.com", 1), {});
    EXPECT_TRUE(std::holds_alternative<Drop>(handle_query(resp, v)));

    // Header says one question, none follows.
    Bytes hdr{0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0};
    Reply r = expect_reply(handle_query(hdr, v));
    EXPECT_EQ(r.verdict, Verdict::malformed);
    EXPECT_EQ(rcode_of(r.wire), LDNS_RCODE_FORMERR);
    EXPECT_EQ(id_of(r.wire), 0xabcd);

    // No question at all.
    Bytes empty{0xab, 0xce, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0};
    Reply e = expect_reply(handle_query(empty, v));
    EXPECT_EQ(rcode_of(e.wire), LDNS_RCODE_FORMERR);

    // Two questions.
    Bytes two = make_query("api.github.com", 1);
    Bytes q2 = make_query("a.pythonhosted.org", 1);
    two.insert(two.end(), q2.begin() + 12, q2.end());
    two[5] = 2;
    Reply t = expect_reply(handle_query(two, v));
    EXPECT_EQ(rcode_of(t.wire), LDNS_RCODE_FORMERR);

    // Name compressed to point at itself.
    Bytes loop{0, 1, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1};
    Reply l = expect_reply(handle_query(loop, v));
    EXPECT_EQ(rcode_of(l.wire), LDNS_RCODE_FORMERR);

    // Opcode UPDATE.
    Bytes upd = make_query("api.github.com", 1);
    upd[2] = static_cast<uint8_t>((upd[2] & 0x87) | (5 << 3));
    Reply u = expect_reply(handle_query(upd, v));
    EXPECT_EQ(rcode_of(u.wire), LDNS_RCODE_NOTIMPL);
    EXPECT_TRUE(pol.calls.empty());
}

TEST(DnsQuery, EdnsVersionOneIsBadvers) {
    FakePolicy pol;
    Bytes q = make_query("api.github.com", 1, 9, 1232);
    // OPT TTL field: ext-rcode, version, flags. Version is the second byte.
    ASSERT_GE(q.size(), 11u);
    q[q.size() - 11 + 6] = 1;  // OPT: name(1) type(2) class(2) | ttl: ext, VERSION
    auto p = parse(q);
    ASSERT_TRUE(p);
    ASSERT_EQ(ldns_pkt_edns_version(p.get()), 1);
    Reply r = expect_reply(handle_query(q, pol.view()));
    auto rp = parse(r.wire);
    ASSERT_TRUE(rp);
    EXPECT_EQ(ldns_pkt_edns_extended_rcode(rp.get()), 1);
}

// --- upstream answers -------------------------------------------------------

Forward forward_for(const std::string& name, uint16_t type, HostMatch m = {1, false}) {
    SandboxView v;
    v.match_host = [m](std::string_view) { return m; };
    Forward f = expect_forward(handle_query(make_query(name, type, 0x7777), v));
    return f;
}

Bytes upstream_answer(const Forward& f, const std::vector<std::string>& rrs, uint16_t id = 0x5151,
                      ldns_pkt_rcode rc = LDNS_RCODE_NOERROR) {
    Bytes q = f.query;
    set_message_id(q, id);
    return make_answer(q, rrs, rc);
}

std::vector<std::pair<std::string, uint32_t>> admitted(const UpstreamResult& r) {
    std::vector<std::pair<std::string, uint32_t>> out;
    for (const auto& a : r.admissions) {
        char buf[64];
        bool v4 = a.addr[10] == 0xff && a.addr[11] == 0xff &&
                  std::all_of(a.addr.begin(), a.addr.begin() + 10, [](uint8_t b) { return b == 0; });
        inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? a.addr.data() + 12 : a.addr.data(), buf, sizeof buf);
        out.emplace_back(buf, a.ttl_seconds);
    }
    return out;
}

using Adm = std::vector<std::pair<std::string, uint32_t>>;

TEST(DnsAnswer, SimpleAAdmittedReplyHasClientId) {
    Forward f = forward_for("api.github.com", 1);
    Bytes ans = upstream_answer(f, {"api.github.com. 300 IN A 140.82.112.5", "api.github.com. 300 IN A 140.82.112.6"});
    UpstreamResult r = process_upstream_answer(f, ans, f.match);
    EXPECT_TRUE(r.ok);
    EXPECT_EQ(admitted(r), (Adm{{"140.82.112.5", 300}, {"140.82.112.6", 300}}));
    EXPECT_EQ(id_of(r.reply), 0x7777);
    // Unchanged but for the ID.
    Bytes expect = ans;
    set_message_id(expect, 0x7777);
    EXPECT_EQ(r.reply, expect);
}

TEST(DnsAnswer, CnameChainFollowedWithSmallestTtl) {
    Forward f = forward_for("api.github.com", 1);
    Bytes ans = upstream_answer(f, {
                                       "API.github.com. 600 IN CNAME lb.github.map.fastly.net.",
                                       "lb.github.map.fastly.net. 30 IN CNAME edge.fastly.net.",
                                       "edge.fastly.net. 120 IN A 151.101.1.1",
                                       "EDGE.fastly.net. 10 IN AAAA 2a04:4e42::1",
                                   });
    UpstreamResult r = process_upstream_answer(f, ans, f.match);
    EXPECT_EQ(admitted(r), (Adm{{"151.101.1.1", 30}, {"2a04:4e42::1", 10}}));
}

TEST(DnsAnswer, UnrelatedOwnersIgnored) {
    Forward f = forward_for("api.github.com", 1);
    Bytes ans = upstream_answer(f, {
                                       "api.github.com. 300 IN A 140.82.112.5",
                                       "attacker.example. 300 IN A 203.0.113.66",
                                       "other.example. 300 IN CNAME attacker.example.",
                                       "github.com. 300 IN A 140.82.112.3",
                                   });
    UpstreamResult r = process_upstream_answer(f, ans, f.match);
    EXPECT_EQ(admitted(r), (Adm{{"140.82.112.5", 300}}));
}

TEST(DnsAnswer, CnameLoopTerminates) {
    Forward f = forward_for("a.example", 1);
    Bytes ans = upstream_answer(f, {"a.example. 60 IN CNAME b.example.", "b.example. 60 IN CNAME a.example.",
                                    "b.example. 60 IN A 203.0.113.7"});
    UpstreamResult r = process_upstream_answer(f, ans, f.match);
    EXPECT_EQ(admitted(r), (Adm{{"203.0.113.7", 60}}));
}

TEST(DnsAnswer, TtlClampedAndReplyCapped) {
    Forward f = forward_for("api.github.com", 1);
    Bytes zero = upstream_answer(f, {"api.github.com. 0 IN A 140.82.112.5"});
    EXPECT_EQ(admitted(process_upstream_answer(f, zero, f.match)), (Adm{{"140.82.112.5", 5}}));

    Bytes day = upstream_answer(f, {"api.github.com. 86400 IN A 140.82.112.5"});
    UpstreamResult r = process_upstream_answer(f, day, f.match);
    EXPECT_EQ(admitted(r), (Adm{{"140.82.112.5", 3600}}));
    auto p = parse(r.reply);
    ASSERT_TRUE(p);
    EXPECT_EQ(ldns_rr_ttl(ldns_rr_list_rr(ldns_pkt_answer(p.get()), 0)), 3600u);
    EXPECT_EQ(ldns_pkt_id(p.get()), 0x7777);

    TtlLimits custom{30, 60};
    EXPECT_EQ(admitted(process_upstream_answer(f, day, f.match, custom)), (Adm{{"140.82.112.5", 60}}));
    EXPECT_EQ(clamp_ttl(1, custom), 30u);
}

// The core hands every address of the answer chain to the Admitter, which
// decides with the compiled policy and the one special-address table
// (rebinding, metadata, loopback: tests/unit/policy, CompiledPolicy::admit).
// There is no second filter here that production would have to bypass.
TEST(DnsAnswer, EveryChainedAddressIsACandidateForTheAdmitter) {
    Forward f = forward_for("api.github.com", 1);
    Bytes ans = upstream_answer(f, {"api.github.com. 300 IN A 10.0.0.5", "api.github.com. 300 IN A 140.82.112.5",
                                    "api.github.com. 300 IN A 169.254.169.254", "api.github.com. 300 IN AAAA fe80::1",
                                    "other.example. 300 IN A 140.82.112.9"});
    UpstreamResult r = process_upstream_answer(f, ans, f.match);
    EXPECT_TRUE(r.ok);
    EXPECT_EQ(admitted(r), (Adm{{"10.0.0.5", 300}, {"140.82.112.5", 300}, {"169.254.169.254", 300}, {"fe80::1", 300}}))
        << "records of other owners are never candidates";
}

TEST(DnsAnswer, NegativeAndDenyAdmitNothing) {
    Forward f = forward_for("api.github.com", 1);
    Bytes nx = upstream_answer(f, {"api.github.com. 300 IN A 140.82.112.5"}, 1, LDNS_RCODE_NXDOMAIN);
    UpstreamResult r = process_upstream_answer(f, nx, f.match);
    EXPECT_TRUE(r.ok);
    EXPECT_TRUE(r.admissions.empty());
    EXPECT_EQ(rcode_of(r.reply), LDNS_RCODE_NXDOMAIN);

    Bytes ok = upstream_answer(f, {"api.github.com. 300 IN A 140.82.112.5"});
    HostMatch deny{1, true};
    EXPECT_TRUE(process_upstream_answer(f, ok, deny).admissions.empty());
}

TEST(DnsAnswer, MismatchedOrGarbageIsServfail) {
    Forward f = forward_for("api.github.com", 1);
    Forward other = forward_for("evil.example", 1);
    Bytes wrong_q = upstream_answer(other, {"evil.example. 300 IN A 203.0.113.9"});
    UpstreamResult r = process_upstream_answer(f, wrong_q, f.match);
    EXPECT_FALSE(r.ok);
    EXPECT_TRUE(r.admissions.empty());
    EXPECT_EQ(rcode_of(r.reply), LDNS_RCODE_SERVFAIL);
    EXPECT_EQ(id_of(r.reply), 0x7777);

    Forward aaaa = forward_for("api.github.com", LDNS_RR_TYPE_AAAA);
    Bytes wrong_type = upstream_answer(f, {"api.github.com. 300 IN A 140.82.112.5"});
    EXPECT_FALSE(process_upstream_answer(aaaa, wrong_type, aaaa.match).ok);

    Bytes garbage{1, 2, 3, 4, 5};
    EXPECT_FALSE(process_upstream_answer(f, garbage, f.match).ok);
    // A query echoed back (QR clear) is not an answer.
    Bytes echo = f.query;
    EXPECT_FALSE(process_upstream_answer(f, echo, f.match).ok);
}

TEST(DnsAnswer, AnswerMatchesChecksIdQrAndQuestion) {
    Forward f = forward_for("api.github.com", 1);
    Bytes ans = upstream_answer(f, {}, 0x1111);
    EXPECT_TRUE(answer_matches(f, 0x1111, ans));
    EXPECT_FALSE(answer_matches(f, 0x1112, ans));
    Bytes mixed = upstream_answer(forward_for("API.GitHub.com", 1), {}, 0x1111);
    EXPECT_TRUE(answer_matches(f, 0x1111, mixed)) << "case-insensitive";
    EXPECT_FALSE(answer_matches(f, 0x1111, upstream_answer(forward_for("api.github.org", 1), {}, 0x1111)));
    Bytes q = f.query;
    set_message_id(q, 0x1111);
    EXPECT_FALSE(answer_matches(f, 0x1111, q)) << "QR clear";
}

TEST(DnsAnswer, TruncatedAndServfailReplies) {
    Forward f = forward_for("api.github.com", 1);
    Bytes tc = make_truncated(f);
    EXPECT_TRUE(tc_of(tc));
    EXPECT_EQ(id_of(tc), 0x7777);
    auto p = parse(tc);
    ASSERT_TRUE(p);
    EXPECT_EQ(ldns_pkt_qdcount(p.get()), 1);
    EXPECT_EQ(ldns_pkt_ancount(p.get()), 0);
    EXPECT_EQ(rcode_of(make_servfail(f)), LDNS_RCODE_SERVFAIL);
}

}  // namespace
}  // namespace redir::dns
