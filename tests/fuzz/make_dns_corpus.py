#!/usr/bin/env python3
"""Writes the seed corpus for dns_fuzz into corpus/dns/ (committed; rerun only
to change the seeds). Hostile shapes are written byte by byte on purpose: no
DNS library would produce them."""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "dns")


def name(n):
    out = b""
    for label in n.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def header(id_=0x1234, flags=0x0100, qd=1, an=0, ns=0, ar=0):
    return struct.pack("!HHHHHH", id_, flags, qd, an, ns, ar)


def question(n, qtype=1, qclass=1):
    return name(n) + struct.pack("!HH", qtype, qclass)


def opt(size=1232, version=0, do=False):
    return b"\0" + struct.pack("!HHBBHH", 41, size, 0, version, 0x8000 if do else 0, 0)


def rr(owner, rtype, rdata, ttl=300, rclass=1):
    o = name(owner) if isinstance(owner, str) else owner
    return o + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def a(ip):
    return bytes(int(x) for x in ip.split("."))


def aaaa(hexwords):
    return b"".join(struct.pack("!H", w) for w in hexwords)


seeds = {
    "q_a_allowed": header() + question("www.example.com"),
    "q_a_allowed_edns_do": header(ar=1) + question("WWW.Example.COM.", 1) + opt(4096, do=True),
    "q_a_inference": header() + question("inference.local"),
    "q_aaaa_inference": header() + question("inference.local", 28),
    "q_a_denied": header() + question("exfil.attacker.example"),
    "q_any": header() + question("www.example.com", 255),
    "q_class_chaos": header() + question("version.bind", 16, 3),
    "q_opcode_update": header(flags=0x2800) + question("www.example.com"),
    "q_edns_version1": header(ar=1) + question("www.example.com") + opt(version=1),
    "q_response_bit": header(flags=0x8180) + question("www.example.com"),
    "q_short": b"\x12\x34\x01",
    "q_header_only": header(),
    "q_truncated_name": (header() + question("www.example.com"))[:20],
    "q_qdcount_zero": header(qd=0),
    "q_qdcount_huge": header(qd=0xFFFF) + question("www.example.com"),
    "q_label_64": header() + b"\x40" + b"a" * 64 + b"\0" + struct.pack("!HH", 1, 1),
    "q_name_300": header() + b"".join(b"\x3f" + b"b" * 63 for _ in range(5)) + b"\0" + struct.pack("!HH", 1, 1),
    "q_pointer_self": header() + b"\xc0\x0c" + struct.pack("!HH", 1, 1),
    "q_pointer_loop": header() + b"\x01a\xc0\x0e\xc0\x0c" + struct.pack("!HH", 1, 1),
    "q_pointer_forward": header() + b"\xc0\x12" + struct.pack("!HH", 1, 1) + name("www.example.com"),
    "q_bad_label_type": header() + b"\x80abc\0" + struct.pack("!HH", 1, 1),
    "a_cname_chain": header(flags=0x8180, an=5) + question("www.example.com")
    + rr("www.example.com", 5, name("edge.cdn.example"), 600)
    + rr("edge.cdn.example", 5, name("pop.cdn.example"), 30)
    + rr("pop.cdn.example", 1, a("203.0.113.7"), 120)
    + rr("pop.cdn.example", 28, aaaa([0x2001, 0xdb8, 0, 0, 0, 0, 0, 7]), 0)
    + rr("unrelated.example", 1, a("198.51.100.1")),
    "a_compressed": header(flags=0x8180, an=2) + question("www.example.com")
    + rr(b"\xc0\x0c", 1, a("203.0.113.8")) + rr(b"\xc0\x0c", 1, a("10.0.0.8"), 86400),
    "a_rebinding": header(flags=0x8180, an=3) + question("internal.example.com")
    + rr("internal.example.com", 1, a("10.20.1.1"))
    + rr("internal.example.com", 1, a("169.254.169.254"))
    + rr("internal.example.com", 28, aaaa([0, 0, 0, 0, 0, 0xFFFF, 0x0a14, 0x0101])),
    "a_cname_loop": header(flags=0x8180, an=3) + question("www.example.com")
    + rr("www.example.com", 5, name("x.example.com")) + rr("x.example.com", 5, name("www.example.com"))
    + rr("x.example.com", 1, a("203.0.113.9")),
    "a_tc": header(flags=0x8380) + question("www.example.com"),
    "a_nxdomain": header(flags=0x8183, an=1) + question("www.example.com") + rr("www.example.com", 1, a("203.0.113.1")),
    "a_bad_rdlength": header(flags=0x8180, an=1) + question("www.example.com")
    + name("www.example.com") + struct.pack("!HHIH", 1, 1, 300, 200) + a("203.0.113.1"),
    "a_short_a_rdata": header(flags=0x8180, an=1) + question("www.example.com") + rr("www.example.com", 1, b"\x01\x02"),
}

os.makedirs(OUT, exist_ok=True)
for k, v in seeds.items():
    with open(os.path.join(OUT, k), "wb") as f:
        f.write(v)
print(f"{len(seeds)} seeds in {OUT}")
