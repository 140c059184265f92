#pragma once
// The one special-address table (INTERFACE.md, "Special addresses",
// "Metadata and link-local", "Loopback"). The policy validator and compiler,
// the DNS admission path (rebinding defence) and the kernel's never-reachable
// and loopback checks all come from it: the BPF side is generated from it at
// build time (gen_bpf_special.cpp -> redir/special_gen.h).
#include <string_view>
#include <vector>

#include "common/cidr.hpp"

namespace redir {

enum class AddrClass : uint8_t {
    special,          // reachable only through a cidr rule naming it, or a host rule's allowed_ips
    loopback,         // the node itself: own netns freely, shared netns only through a cidr rule; never via DNS
    never_reachable,  // metadata and link-local: never, whatever a rule says
    ipv4_mapped,      // ::ffff:0:0/96: separates the families (an IPv6 rule never admits IPv4); not special
};

struct SpecialRange {
    Cidr cidr;
    AddrClass cls;
    std::string_view what;  // "link-local", "AWS IMDSv6 metadata", ...
};

// Every range, any order. Ranges nest (never-reachable ones inside special
// ones) but never partially overlap.
const std::vector<SpecialRange>& special_ranges();

// Innermost range containing A, or nullptr (a public address).
const SpecialRange* innermost_special(const Addr& a);
// Needs a rule that names it: every class but ipv4_mapped.
bool is_special(const Addr& a);
bool is_never_reachable(const Addr& a);
bool is_loopback(const Addr& a);
// The range of class CLS that wholly contains C, or nullptr: a rule whose
// prefix lies inside a never-reachable range names only such addresses.
const SpecialRange* range_containing(const Cidr& c, AddrClass cls);

}  // namespace redir
