#pragma once
// Building and inspecting DNS messages for tests, through ldns like the code
// under test, so the tests never depend on a hand-written encoder.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <ldns/ldns.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "dns/ldns_ptr.hpp"
#include "dns/types.hpp"

namespace redir::dns::test {

using Bytes = std::vector<uint8_t>;
using detail::PktPtr;

inline Bytes make_query(const std::string& name, uint16_t type, uint16_t id = 0x1234, int edns_size = -1,
                        uint16_t cls = LDNS_RR_CLASS_IN) {
    ldns_rdf* dn = ldns_dname_new_frm_str(name.c_str());
    EXPECT_NE(dn, nullptr) << name;
    PktPtr p(ldns_pkt_query_new(dn, static_cast<ldns_rr_type>(type), static_cast<ldns_rr_class>(cls), LDNS_RD));
    ldns_pkt_set_id(p.get(), id);
    if (edns_size >= 0) ldns_pkt_set_edns_udp_size(p.get(), static_cast<uint16_t>(edns_size));
    return detail::to_wire(p.get());
}

inline PktPtr parse(const Bytes& b) { return detail::parse_pkt(b); }

// A response to `query` (same ID and question) with RRs in zone-file syntax.
inline Bytes make_answer(const Bytes& query, const std::vector<std::string>& answers,
                         ldns_pkt_rcode rcode = LDNS_RCODE_NOERROR, bool tc = false) {
    PktPtr q = parse(query);
    EXPECT_TRUE(q);
    PktPtr a(ldns_pkt_new());
    ldns_pkt_set_id(a.get(), ldns_pkt_id(q.get()));
    ldns_pkt_set_qr(a.get(), true);
    ldns_pkt_set_rd(a.get(), true);
    ldns_pkt_set_ra(a.get(), true);
    ldns_pkt_set_tc(a.get(), tc);
    ldns_pkt_set_rcode(a.get(), rcode);
    ldns_pkt_push_rr(a.get(), LDNS_SECTION_QUESTION, ldns_rr_clone(ldns_rr_list_rr(ldns_pkt_question(q.get()), 0)));
    for (const auto& s : answers) {
        ldns_rr* rr = nullptr;
        EXPECT_EQ(ldns_rr_new_frm_str(&rr, s.c_str(), 0, nullptr, nullptr), LDNS_STATUS_OK) << s;
        ldns_pkt_push_rr(a.get(), LDNS_SECTION_ANSWER, rr);
    }
    return detail::to_wire(a.get());
}

inline uint8_t rcode_of(const Bytes& b) { return b.size() >= 4 ? b[3] & 0x0f : 0xff; }
inline uint16_t id_of(const Bytes& b) { return b.size() >= 2 ? static_cast<uint16_t>(b[0] << 8 | b[1]) : 0; }
inline bool tc_of(const Bytes& b) { return b.size() >= 3 && (b[2] & 0x02); }

// "1.2.3.4" / "2001:db8::1" in the 16-byte form.
inline Addr16 addr(const std::string& text) {
    Addr16 a{};
    in_addr v4{};
    if (inet_pton(AF_INET, text.c_str(), &v4) == 1) {
        a[10] = a[11] = 0xff;
        std::memcpy(a.data() + 12, &v4, 4);
    } else {
        EXPECT_EQ(inet_pton(AF_INET6, text.c_str(), a.data()), 1) << text;
    }
    return a;
}

// Answer-section A/AAAA addresses of a reply, as text.
inline std::vector<std::string> answer_addrs(const Bytes& b) {
    std::vector<std::string> out;
    PktPtr p = parse(b);
    if (!p) return out;
    const ldns_rr_list* l = ldns_pkt_answer(p.get());
    for (size_t i = 0; l && i < ldns_rr_list_rr_count(l); ++i) {
        const ldns_rr* rr = ldns_rr_list_rr(l, i);
        if (ldns_rr_get_type(rr) != LDNS_RR_TYPE_A && ldns_rr_get_type(rr) != LDNS_RR_TYPE_AAAA) continue;
        detail::MallocPtr<char> s(ldns_rdf2str(ldns_rr_rdf(rr, 0)));
        out.emplace_back(s.get());
    }
    return out;
}

}  // namespace redir::dns::test
