"""Prints why each skipped CTest entry of the last run was skipped, read from
Testing/Temporary/LastTest.log: GoogleTest's GTEST_SKIP message or the
"SKIPPED <test>: <reason>" lines of tests/e2e/run_e2e.py. CTest's own summary
names skipped tests but not the reason. Ends with the plain count line
"ctest: N passed, N failed, N skipped" (so the run still closes on a count).

usage: skip_reasons.py BUILD_DIR
"""
import os
import re
import sys


def blocks(log):
    """Yields (test name, output, pass reason, whole block) per test in LastTest.log."""
    for m in re.finditer(r'^\d+/\d+ Test: ([^\n]+)\n(.*?)(?=^\d+/\d+ Testing: |\Z)', log, re.S | re.M):
        name, body = m.group(1), m.group(2)
        out = body.split("Output:\n", 1)[-1].split("<end of output>", 1)[0]
        reason = body.split("Test Pass Reason:\n", 1)[1].split("\n", 1)[0] if "Test Pass Reason:" in body else ""
        yield name, out, reason, body


def why(out):
    reasons = []
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if re.search(r":\d+: Skipped$", line) and i + 1 < len(lines):
            reasons.append(lines[i + 1].strip())
        elif line.startswith("SKIPPED "):
            reasons.append(line[len("SKIPPED "):].strip())
    return "; ".join(reasons) or "(no reason printed)"


def main(build):
    path = os.path.join(build, "Testing", "Temporary", "LastTest.log")
    if not os.path.exists(path):
        return 0
    with open(path, errors="replace") as f:
        log = f.read()
    passed = failed = 0
    skipped = []
    for name, out, reason, body in blocks(log):
        # GoogleTest skips carry a pass reason; SKIP_RETURN_CODE skips only their "SKIPPED " lines.
        if reason.startswith("Skip") or re.search(r"^SKIPPED ", out, re.M):
            skipped.append((name, why(out)))
        elif "\nTest Passed." in body:
            passed += 1
        else:
            failed += 1
    if skipped:
        print("Skipped tests and why:")
        for n, w in skipped:
            print("  SKIPPED %s: %s" % (n, w))
    print("ctest: %d passed, %d failed, %d skipped" % (passed, failed, len(skipped)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
