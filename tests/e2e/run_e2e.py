"""Runs one CTest entry of the e2e suite: a TestCase class (less some methods)
or one method. Exit 0 passed, 1 failed, 77 when every test it ran was skipped
(CTest SKIP_RETURN_CODE), printing each skip's reason.

usage: run_e2e.py MODULE CLASS [--only METHOD] [--exclude M1,M2]
"""
import argparse
import os
import sys
import unittest

SKIPPED = 77


def select(suite, only, exclude):
    out = unittest.TestSuite()
    for t in suite:
        name = t.id().rsplit(".", 1)[-1]
        if (only and name != only) or name in exclude:
            continue
        out.addTest(t)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("module")
    ap.add_argument("cls")
    ap.add_argument("--only")
    ap.add_argument("--exclude", default="")
    a = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    suite = unittest.defaultTestLoader.loadTestsFromName("%s.%s" % (a.module, a.cls))
    suite = select(suite, a.only, set(x for x in a.exclude.split(",") if x and x != "-"))
    if suite.countTestCases() == 0:
        print("run_e2e: no test selected from %s.%s (only=%s): the CTest registration is stale, "
              "re-run cmake" % (a.module, a.cls, a.only), file=sys.stderr)
        return 1
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    if not result.wasSuccessful():
        return 1
    ran = result.testsRun
    # "SKIPPED " lines mean exit 77 (tests/skip_reasons.py reads them); a skip
    # among passes is noted but the entry passes.
    everything_skipped = bool(result.skipped) and (ran == 0 or len(result.skipped) >= ran)
    for test, reason in result.skipped:
        print("%s %s: %s" % ("SKIPPED" if everything_skipped else "note: skipped among passes:",
                             test.id() if hasattr(test, "id") else test, reason))
    if everything_skipped:
        return SKIPPED
    if ran == 0:
        print("run_e2e: nothing ran", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
