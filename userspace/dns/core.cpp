#include "dns/core.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <unordered_map>

#include "dns/ldns_ptr.hpp"

namespace redir::dns {

using detail::MallocPtr;
using detail::parse_pkt;
using detail::PktPtr;
using detail::to_wire;

std::string_view to_string(Verdict v) {
    switch (v) {
        case Verdict::inference: return "inference";
        case Verdict::forwarded: return "forwarded";
        case Verdict::denied: return "denied";
        case Verdict::refused: return "refused";
        case Verdict::malformed: return "malformed";
        case Verdict::upstream_error: return "upstream_error";
        case Verdict::overloaded: return "overloaded";
        case Verdict::quota: return "quota";
    }
    return "unknown";
}

namespace {

constexpr uint16_t kMinUdp = 512;
// What we advertise on behalf of a client: the DNS flag day 2020 size, which
// avoids IP fragmentation on the way from the upstream.
constexpr uint16_t kMaxUpstreamUdp = 1232;
constexpr uint16_t kOurUdp = 1232;

char lower(uint8_t c) { return static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c); }

bool ldh(uint8_t c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_';
}

// The name as policy patterns are written ("api.github.com"), or nullopt if
// some label holds a byte no host name has: such a name could only match a
// rule through some escaping ambiguity, so it matches none.
std::optional<std::string> host_name(const ldns_rdf* dname) {
    const uint8_t* d = ldns_rdf_data(dname);
    const size_t n = ldns_rdf_size(dname);
    std::string out;
    size_t i = 0;
    while (i < n) {
        const uint8_t len = d[i++];
        if (len == 0) return out;
        if (len > 63 || i + len > n) return std::nullopt;
        if (!out.empty()) out.push_back('.');
        for (size_t k = 0; k < len; ++k) {
            if (!ldh(d[i + k])) return std::nullopt;
            out.push_back(lower(d[i + k]));
        }
        i += len;
    }
    return std::nullopt;  // no root label: not a name ldns would produce
}

// For events: lower-case, escaped, no trailing dot.
std::string display_name(const ldns_rdf* dname) {
    MallocPtr<char> s(ldns_rdf2str(dname));
    if (!s) return {};
    std::string out(s.get());
    if (out.size() > 1 && out.back() == '.') out.pop_back();
    for (char& c : out) c = lower(static_cast<uint8_t>(c));
    return out;
}

// Case-folded wire form: equal keys <=> equal names.
std::string name_key(const ldns_rdf* dname) {
    const uint8_t* d = ldns_rdf_data(dname);
    std::string k(reinterpret_cast<const char*>(d), ldns_rdf_size(dname));
    // Length octets are <= 63, below 'A', so folding the whole string is safe.
    for (char& c : k) c = lower(static_cast<uint8_t>(c));
    return k;
}

const ldns_rr* sole_question(const ldns_pkt* p) {
    const ldns_rr_list* q = ldns_pkt_question(p);
    if (!q || ldns_rr_list_rr_count(q) != 1) return nullptr;
    const ldns_rr* rr = ldns_rr_list_rr(q, 0);
    return rr && ldns_rr_owner(rr) ? rr : nullptr;
}

// Response skeleton: the query's ID, opcode, RD and CD, its question (if it
// has exactly one), an OPT if it had one.
PktPtr response_to(const ldns_pkt* q, ldns_pkt_rcode rcode) {
    PktPtr r(ldns_pkt_new());
    if (!r) return nullptr;
    ldns_pkt_set_id(r.get(), ldns_pkt_id(q));
    ldns_pkt_set_qr(r.get(), true);
    ldns_pkt_set_opcode(r.get(), ldns_pkt_get_opcode(q));
    ldns_pkt_set_rd(r.get(), ldns_pkt_rd(q));
    ldns_pkt_set_cd(r.get(), ldns_pkt_cd(q));
    ldns_pkt_set_ra(r.get(), true);
    ldns_pkt_set_rcode(r.get(), static_cast<uint8_t>(rcode));
    if (const ldns_rr* qr = sole_question(q)) {
        ldns_rr* c = ldns_rr_clone(qr);
        if (!c || !ldns_pkt_push_rr(r.get(), LDNS_SECTION_QUESTION, c)) {
            if (c) ldns_rr_free(c);
            return nullptr;
        }
    }
    if (ldns_pkt_edns(q)) {
        ldns_pkt_set_edns_udp_size(r.get(), kOurUdp);
        ldns_pkt_set_edns_do(r.get(), ldns_pkt_edns_do(q));
    }
    return r;
}

// When even ldns cannot parse the query: the 12-byte header alone.
std::vector<uint8_t> header_only(std::span<const uint8_t> wire, ldns_pkt_rcode rcode) {
    std::vector<uint8_t> h(12, 0);
    h[0] = wire[0];
    h[1] = wire[1];
    h[2] = static_cast<uint8_t>(0x80 | (wire[2] & 0x79));  // QR, opcode, RD
    h[3] = static_cast<uint8_t>(0x80 | (rcode & 0x0f));    // RA
    return h;
}

Reply make_reply(const ldns_pkt* q, ldns_pkt_rcode rcode, Verdict v, std::string name, uint16_t qtype) {
    Reply r{{}, v, std::move(name), qtype};
    PktPtr p = response_to(q, rcode);
    if (p) r.wire = to_wire(p.get());
    return r;
}

}  // namespace

uint32_t clamp_ttl(uint32_t ttl, const TtlLimits& l) {
    return std::max(l.floor_seconds, std::min(ttl, l.ceiling_seconds));
}

uint16_t message_id(std::span<const uint8_t> wire) {
    return wire.size() < 2 ? 0 : static_cast<uint16_t>(wire[0] << 8 | wire[1]);
}

void set_message_id(std::span<uint8_t> wire, uint16_t id) {
    if (wire.size() < 2) return;
    wire[0] = static_cast<uint8_t>(id >> 8);
    wire[1] = static_cast<uint8_t>(id);
}

QueryAction handle_query(std::span<const uint8_t> wire, const SandboxView& view) {
    if (wire.size() < 12) return Drop{};
    if (wire[2] & 0x80) return Drop{};
    const uint8_t opcode = (wire[2] >> 3) & 0x0f;

    PktPtr q = parse_pkt(wire);
    if (!q) return Reply{header_only(wire, LDNS_RCODE_FORMERR), Verdict::malformed, {}, 0};
    if (opcode != LDNS_PACKET_QUERY) {
        return Reply{header_only(wire, LDNS_RCODE_NOTIMPL), Verdict::malformed, {}, 0};
    }
    const ldns_rr* question = sole_question(q.get());
    if (!question) return make_reply(q.get(), LDNS_RCODE_FORMERR, Verdict::malformed, {}, 0);

    const ldns_rdf* owner = ldns_rr_owner(question);
    const auto qtype = static_cast<uint16_t>(ldns_rr_get_type(question));
    const auto qclass = static_cast<uint16_t>(ldns_rr_get_class(question));
    std::string shown = display_name(owner);

    if (ldns_pkt_edns(q.get()) && ldns_pkt_edns_version(q.get()) > 0) {
        // RFC 6891 BADVERS (16): extended RCODE 1, header RCODE 0.
        PktPtr r = response_to(q.get(), LDNS_RCODE_NOERROR);
        if (!r) return Drop{};
        ldns_pkt_set_edns_extended_rcode(r.get(), 1);
        return Reply{to_wire(r.get()), Verdict::malformed, std::move(shown), qtype};
    }
    if (qtype == LDNS_RR_TYPE_OPT) {
        return make_reply(q.get(), LDNS_RCODE_FORMERR, Verdict::malformed, std::move(shown), qtype);
    }
    // 128-255 are query-only and meta types (RFC 6895): ANY, AXFR, IXFR,
    // TSIG... A stub resolver never needs them, and ANY/AXFR are amplifiers.
    if (qclass != LDNS_RR_CLASS_IN || (qtype >= 128 && qtype <= 255)) {
        return make_reply(q.get(), LDNS_RCODE_REFUSED, Verdict::refused, std::move(shown), qtype);
    }

    std::optional<std::string> host = host_name(owner);
    if (host && *host == kInferenceName) {
        if (!view.inference_enabled) {
            return make_reply(q.get(), LDNS_RCODE_NXDOMAIN, Verdict::denied, *host, qtype);
        }
        PktPtr r = response_to(q.get(), LDNS_RCODE_NOERROR);
        if (!r) return Drop{};
        ldns_pkt_set_aa(r.get(), true);
        const bool a = qtype == LDNS_RR_TYPE_A, aaaa = qtype == LDNS_RR_TYPE_AAAA && view.vip6;
        if (a || aaaa) {
            detail::RrPtr rr(ldns_rr_new_frm_type(a ? LDNS_RR_TYPE_A : LDNS_RR_TYPE_AAAA));
            ldns_rdf* own = ldns_rdf_clone(owner);  // the client's spelling, for 0x20 checks
            ldns_rdf* addr = a ? ldns_rdf_new_frm_data(LDNS_RDF_TYPE_A, 4, view.vip4.data())
                               : ldns_rdf_new_frm_data(LDNS_RDF_TYPE_AAAA, 16, view.vip6->data());
            if (!rr || !own || !addr) {
                if (own) ldns_rdf_deep_free(own);
                if (addr) ldns_rdf_deep_free(addr);
                return Drop{};
            }
            ldns_rr_set_owner(rr.get(), own);
            ldns_rr_set_class(rr.get(), LDNS_RR_CLASS_IN);
            ldns_rr_set_ttl(rr.get(), kInferenceTtl);
            ldns_rdf_deep_free(ldns_rr_set_rdf(rr.get(), addr, 0));
            if (!ldns_pkt_push_rr(r.get(), LDNS_SECTION_ANSWER, rr.get())) return Drop{};
            rr.release();
        }
        return Reply{to_wire(r.get()), Verdict::inference, *host, qtype};
    }

    // Names below inference.local are ours too: never ask the policy (a
    // "*.local" rule would otherwise send them upstream).
    const bool below_inference = host && host->size() > kInferenceName.size() &&
                                 host->ends_with(kInferenceName) &&
                                 (*host)[host->size() - kInferenceName.size() - 1] == '.';
    std::optional<HostMatch> match;
    if (host && !below_inference && view.match_host) match = view.match_host(*host);
    if (!match || match->deny) {
        return make_reply(q.get(), LDNS_RCODE_NXDOMAIN, Verdict::denied, std::move(shown), qtype);
    }

    PktPtr up(ldns_pkt_new());
    ldns_rr* qc = ldns_rr_clone(question);
    if (!up || !qc || !ldns_pkt_push_rr(up.get(), LDNS_SECTION_QUESTION, qc)) {
        if (qc) ldns_rr_free(qc);
        return Drop{};
    }
    ldns_pkt_set_id(up.get(), 0);
    ldns_pkt_set_opcode(up.get(), LDNS_PACKET_QUERY);
    ldns_pkt_set_rd(up.get(), ldns_pkt_rd(q.get()));
    ldns_pkt_set_cd(up.get(), ldns_pkt_cd(q.get()));
    ldns_pkt_set_ad(up.get(), ldns_pkt_ad(q.get()));
    Forward f;
    f.client_id = ldns_pkt_id(q.get());
    if (ldns_pkt_edns(q.get())) {
        const uint16_t asked = ldns_pkt_edns_udp_size(q.get());
        f.client_udp_size = std::max(asked, kMinUdp);
        ldns_pkt_set_edns_udp_size(up.get(), std::clamp(asked, kMinUdp, kMaxUpstreamUdp));
        ldns_pkt_set_edns_do(up.get(), ldns_pkt_edns_do(q.get()));
    }
    f.query = to_wire(up.get());
    if (f.query.empty()) return Drop{};
    f.name = std::move(*host);
    f.qtype = qtype;
    f.match = std::move(*match);
    return f;
}

namespace {

PktPtr forward_query(const Forward& fwd) {
    PktPtr q = parse_pkt(fwd.query);
    if (q) ldns_pkt_set_id(q.get(), fwd.client_id);
    return q;
}

// Client-visible OPT: the Forward's query carries the client's DO bit and a
// size clamped from the client's; presence is what matters for the reply.
std::vector<uint8_t> reply_from_forward(const Forward& fwd, ldns_pkt_rcode rcode, bool tc) {
    PktPtr q = forward_query(fwd);
    if (!q) return {};
    PktPtr r = response_to(q.get(), rcode);
    if (!r) return {};
    ldns_pkt_set_tc(r.get(), tc);
    return to_wire(r.get());
}

bool same_question(const ldns_pkt* a, const ldns_pkt* b) {
    const ldns_rr* qa = sole_question(a);
    const ldns_rr* qb = sole_question(b);
    return qa && qb && ldns_rr_get_type(qa) == ldns_rr_get_type(qb) &&
           ldns_rr_get_class(qa) == ldns_rr_get_class(qb) &&
           name_key(ldns_rr_owner(qa)) == name_key(ldns_rr_owner(qb));
}

}  // namespace

std::vector<uint8_t> make_error_reply(const Forward& fwd, uint8_t rcode) {
    return reply_from_forward(fwd, static_cast<ldns_pkt_rcode>(rcode & 0x0f), false);
}

std::vector<uint8_t> make_servfail(const Forward& fwd) { return make_error_reply(fwd, kServfail); }

std::vector<uint8_t> make_truncated(const Forward& fwd) {
    return reply_from_forward(fwd, LDNS_RCODE_NOERROR, true);
}

bool answer_matches(const Forward& fwd, uint16_t upstream_id, std::span<const uint8_t> answer) {
    if (answer.size() < 12 || message_id(answer) != upstream_id || !(answer[2] & 0x80)) return false;
    PktPtr a = parse_pkt(answer);
    PktPtr q = parse_pkt(fwd.query);
    return a && q && same_question(a.get(), q.get());
}

UpstreamResult process_upstream_answer(const Forward& fwd, std::span<const uint8_t> answer,
                                       const HostMatch& match, const TtlLimits& ttl) {
    UpstreamResult res;
    PktPtr a = parse_pkt(answer);
    PktPtr q = parse_pkt(fwd.query);
    if (!a || !q || !ldns_pkt_qr(a.get()) || !same_question(a.get(), q.get())) {
        res.reply = make_servfail(fwd);
        return res;
    }
    res.ok = true;

    const ldns_rr_list* ans = ldns_pkt_answer(a.get());
    const size_t n = ans ? ldns_rr_list_rr_count(ans) : 0;
    if (!match.deny && ldns_pkt_get_rcode(a.get()) == LDNS_RCODE_NOERROR && n > 0) {
        // Names reachable from the question through CNAMEs, each with the
        // smallest TTL on the best path to it: the client's cache of the
        // chain expires no later than that.
        std::unordered_map<std::string, uint32_t> reach;
        reach.emplace(name_key(ldns_rr_owner(sole_question(q.get()))),
                      std::numeric_limits<uint32_t>::max());
        // Each pass either adds a name or raises a TTL; n + 1 passes reach
        // the fixpoint for any chain the section can hold.
        for (size_t pass = 0; pass <= n; ++pass) {
            bool changed = false;
            for (size_t i = 0; i < n; ++i) {
                const ldns_rr* rr = ldns_rr_list_rr(ans, i);
                if (ldns_rr_get_type(rr) != LDNS_RR_TYPE_CNAME || ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN)
                    continue;
                const ldns_rdf* target = ldns_rr_rdf(rr, 0);
                if (!target || ldns_rdf_get_type(target) != LDNS_RDF_TYPE_DNAME) continue;
                auto from = reach.find(name_key(ldns_rr_owner(rr)));
                if (from == reach.end()) continue;
                const uint32_t t = std::min(from->second, ldns_rr_ttl(rr));
                auto [to, inserted] = reach.emplace(name_key(target), t);
                if (inserted || to->second < t) {
                    to->second = t;
                    changed = true;
                }
            }
            if (!changed) break;
        }
        for (size_t i = 0; i < n; ++i) {
            const ldns_rr* rr = ldns_rr_list_rr(ans, i);
            const auto type = ldns_rr_get_type(rr);
            if ((type != LDNS_RR_TYPE_A && type != LDNS_RR_TYPE_AAAA) || ldns_rr_get_class(rr) != LDNS_RR_CLASS_IN)
                continue;
            auto owner = reach.find(name_key(ldns_rr_owner(rr)));
            if (owner == reach.end()) continue;
            const ldns_rdf* rd = ldns_rr_rdf(rr, 0);
            if (!rd) continue;
            Admission adm;
            if (type == LDNS_RR_TYPE_A && ldns_rdf_size(rd) == 4) {
                adm.addr[10] = adm.addr[11] = 0xff;
                std::memcpy(adm.addr.data() + 12, ldns_rdf_data(rd), 4);
            } else if (type == LDNS_RR_TYPE_AAAA && ldns_rdf_size(rd) == 16) {
                std::memcpy(adm.addr.data(), ldns_rdf_data(rd), 16);
            } else {
                continue;
            }
            adm.ttl_seconds = clamp_ttl(std::min(owner->second, ldns_rr_ttl(rr)), ttl);
            auto dup = std::find_if(res.admissions.begin(), res.admissions.end(),
                                    [&](const Admission& x) { return x.addr == adm.addr; });
            if (dup == res.admissions.end()) {
                res.admissions.push_back(adm);
            } else {
                dup->ttl_seconds = std::max(dup->ttl_seconds, adm.ttl_seconds);
            }
        }
    }

    // Lower TTLs above the ceiling so no client cache outlives an admission;
    // otherwise the upstream's bytes go back untouched but for the ID.
    bool capped = false;
    for (ldns_rr_list* list : {ldns_pkt_answer(a.get()), ldns_pkt_authority(a.get()), ldns_pkt_additional(a.get())}) {
        if (!list) continue;
        for (size_t i = 0; i < ldns_rr_list_rr_count(list); ++i) {
            ldns_rr* rr = ldns_rr_list_rr(list, i);
            if (ldns_rr_ttl(rr) > ttl.ceiling_seconds) {
                ldns_rr_set_ttl(rr, ttl.ceiling_seconds);
                capped = true;
            }
        }
    }
    if (capped) {
        ldns_pkt_set_id(a.get(), fwd.client_id);
        res.reply = to_wire(a.get());
    }
    if (res.reply.empty()) {
        res.reply.assign(answer.begin(), answer.end());
        set_message_id(res.reply, fwd.client_id);
    }
    return res;
}

}  // namespace redir::dns
