"""Every repository path a design document names must exist, so the
architecture page cannot silently drift from the code it describes."""
import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Paths as the documents write them: a top-level room, then path characters.
PATH = re.compile(r"\b((?:bpf|userspace|tools|tests|scripts|policy|bench|docs)/[A-Za-z0-9_./-]+)")
# Paths written relative to userspace/ (e.g. "agent/agent.cpp" inside a room row or node label).
ROOMS = ("agent", "common", "control", "dns", "enforce", "loader", "policy", "terminator", "tls")
SHORT = re.compile(r"\b((?:%s)/[A-Za-z0-9_.-]+\.(?:cpp|hpp|h))" % "|".join(ROOMS))


def missing(doc):
    text = open(os.path.join(ROOT, doc)).read()
    bad = set()
    for m in PATH.finditer(text):
        p = m.group(1).rstrip(".")
        if "*" in p:
            continue
        if not os.path.exists(os.path.join(ROOT, p)):
            bad.add(p)
    for m in SHORT.finditer(text):
        p = m.group(1)
        if any(b.endswith(p) for b in bad):
            continue
        if not (os.path.exists(os.path.join(ROOT, "userspace", p)) or os.path.exists(os.path.join(ROOT, p))):
            bad.add(p)
    return sorted(bad)


def main(docs):
    failed = False
    for doc in docs:
        for p in missing(doc):
            print("%s names %s, which does not exist: update the document" % (doc, p))
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["docs/architecture.md", "docs/architecture.dot"]))
