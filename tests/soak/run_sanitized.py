#!/usr/bin/env python3
"""Runs one sanitized unit test binary (argv[1:]) in a fresh network namespace
with only lo up (its 127.0.0.1 sockets never touch the host's network) and
fails on any ASan/UBSan/LSan report, also one that did not stop the binary:
reports in the sanitizers' files (log_path) and reports the runtime wrote to
stderr (it does so where it cannot open its file: out of descriptors) are
printed and counted.

REDIR_SAN_EMFILE=1 (the one test that uses up every descriptor on purpose)
drops exactly one kind of report, and only from stderr: UBSan's "object has
invalid vptr" whose memory "cannot be printed", a runtime false positive at
EMFILE (tests/e2e/sanitizer_scan.py says why; tests/soak/README.md has the
reproduction)."""
import glob
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import sanitizer_scan  # noqa: E402


def main():
    tmp = tempfile.mkdtemp(prefix="redir-san-")
    env = dict(os.environ)
    for var, name in (("ASAN_OPTIONS", "asan"), ("UBSAN_OPTIONS", "ubsan")):
        env[var] = ":".join(filter(None, [env.get(var, ""), "log_path=" + os.path.join(tmp, name)]))
    stderr_path = os.path.join(tmp, "stderr")  # not a log_path prefix: never read as a report file
    try:
        with open(stderr_path, "wb") as err:
            rc = subprocess.call(["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] +
                                 sys.argv[1:], env=env, stderr=err)
        with open(stderr_path, errors="replace") as f:
            output = f.read()
        sys.stderr.write(output)  # CTest's log keeps the binary's stderr
        found = 0
        for path in sorted(glob.glob(os.path.join(tmp, "asan*")) + glob.glob(os.path.join(tmp, "ubsan*"))):
            text = open(path, errors="replace").read()
            if text.strip():
                found += 1
                print("== sanitizer report %s\n%s" % (os.path.basename(path), text[:8000]), file=sys.stderr)
        text = sanitizer_scan.in_output(output, emfile=os.environ.get("REDIR_SAN_EMFILE") == "1")
        if text:
            found += 1
            print("== sanitizer report on stderr\n%s" % text[:8000], file=sys.stderr)
        print("sanitizer reports: %d" % found, file=sys.stderr)
        return rc or (1 if found else 0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
