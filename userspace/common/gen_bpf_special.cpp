// Build-time generator: writes redir/special_gen.h, the kernel's view of the
// special-address table (common/special.cpp), as inline prefix tests over
// struct redir_addr. Runs on the build host, whose byte order is the BPF
// target's (programs are built for the running kernel), so the 64-bit words
// compare the same bytes on both sides.
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include "common/special.hpp"

namespace {

std::string hex(uint64_t v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "0x%016" PRIx64 "ULL", v);
    return buf;
}

// One "(w[0] & m0) == v0 && (w[1] & m1) == v1" term per range of CLS.
void function(std::ostream& out, const char* name, redir::AddrClass cls, const char* why) {
    out << "/* " << why << " */\n"
        << "static __always_inline bool " << name << "(const struct redir_addr *a)\n{\n"
        << "\tconst __u64 *w = (const __u64 *)a->b;\n\treturn 0";
    for (const auto& s : redir::special_ranges()) {
        if (s.cls != cls) continue;
        redir::Addr ones;
        ones.fill(0xff);
        redir::Addr mask = redir::mask_addr(ones, s.cidr.len);
        uint64_t m[2], v[2];
        std::memcpy(m, mask.data(), 16);
        std::memcpy(v, s.cidr.addr.data(), 16);
        out << " ||\n\t       /* " << s.cidr.to_string() << ": " << s.what << " */\n"
            << "\t       ((w[0] & " << hex(m[0]) << ") == " << hex(v[0]) << " && (w[1] & " << hex(m[1])
            << ") == " << hex(v[1]) << ")";
    }
    out << ";\n}\n\n";
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s OUTPUT_HEADER\n", argv[0]);
        return 2;
    }
    std::ostringstream out;
    out << "/* Generated at build time by userspace/common/gen_bpf_special.cpp from the special-address\n"
           " * table in userspace/common/special.cpp. Do not edit; change the table. */\n"
           "#ifndef REDIR_SPECIAL_GEN_H\n#define REDIR_SPECIAL_GEN_H\n#include \"redir/types.h\"\n\n";
    function(out, "redir_never_reachable", redir::AddrClass::never_reachable,
             "Metadata and link-local: denied whatever a policy says.");
    function(out, "redir_is_loopback", redir::AddrClass::loopback,
             "The node itself: free in a sandbox's own netns; else only a cidr rule, never a DNS admission.");
    out << "#endif\n";
    std::ofstream f(argv[1]);
    f << out.str();
    return f.good() ? 0 : 1;
}
