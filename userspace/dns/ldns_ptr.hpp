#pragma once
// Owning handles for ldns objects, so no early return leaks one.
#include <ldns/ldns.h>

#include <cstdlib>
#include <memory>
#include <span>
#include <vector>

namespace redir::dns::detail {

struct PktFree {
    void operator()(ldns_pkt* p) const noexcept { ldns_pkt_free(p); }
};
struct RrFree {
    void operator()(ldns_rr* r) const noexcept { ldns_rr_free(r); }
};
struct RdfFree {
    void operator()(ldns_rdf* r) const noexcept { ldns_rdf_deep_free(r); }
};
// ldns hands out wire buffers and strings from malloc (LDNS_FREE is free()).
struct MallocFree {
    void operator()(void* p) const noexcept { std::free(p); }
};

using PktPtr = std::unique_ptr<ldns_pkt, PktFree>;
using RrPtr = std::unique_ptr<ldns_rr, RrFree>;
using RdfPtr = std::unique_ptr<ldns_rdf, RdfFree>;
template <class T>
using MallocPtr = std::unique_ptr<T, MallocFree>;

// nullptr when ldns rejects the message.
inline PktPtr parse_pkt(std::span<const uint8_t> wire) {
    if (wire.empty()) return nullptr;
    ldns_pkt* p = nullptr;
    // On failure ldns frees what it built and leaves p untouched.
    if (ldns_wire2pkt(&p, wire.data(), wire.size()) != LDNS_STATUS_OK) return nullptr;
    return PktPtr(p);
}

// Empty when ldns cannot serialise the packet.
inline std::vector<uint8_t> to_wire(const ldns_pkt* p) {
    uint8_t* raw = nullptr;
    size_t n = 0;
    if (ldns_pkt2wire(&raw, p, &n) != LDNS_STATUS_OK) {
        std::free(raw);
        return {};
    }
    MallocPtr<uint8_t> owned(raw);
    return std::vector<uint8_t>(raw, raw + n);
}

}  // namespace redir::dns::detail
