#!/usr/bin/env python3
"""Mutation check: for each guarded security property (mutants.py), remove the
guard in a scratch copy of the source, rebuild only what the named test needs,
run that test, and report every mutant the test fails to kill.

Never touches the tree it is run from: the copy lives in a temporary
directory (built with ccache when installed; CCACHE_BASEDIR is the copy, so
repeated runs and other copies share the cache) and is removed afterwards.

usage: tests/mutation/run.py [--ci] [--only ID[,ID...]] [--list] [--keep] [-j N]
exit: 0 every mutant killed; 1 a mutant survived; 2 a test fails (or skips)
without any mutant, so it proves nothing here; 3 a mutant does not apply or
does not build (update mutants.py).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mutants import MUTANTS  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def log(msg):
    print(msg, flush=True)


def check_applies(mutants, src):
    """Every fragment must be in its file exactly once: returns the problems."""
    bad = []
    for m in mutants:
        path = os.path.join(src, m.file)
        try:
            text = open(path).read()
        except OSError as e:
            bad.append("%s: mutant does not apply: cannot read %s (%s)" % (m.id, m.file, e.strerror))
            continue
        n = text.count(m.find)
        if n != 1:
            bad.append("%s: mutant does not apply: %s contains the fragment %d times (want 1): %r — "
                       "update tests/mutation/mutants.py to the guard's current code" % (m.id, m.file, n, m.find))
    return bad


def copy_tree(src, dst):
    """Tracked and untracked-but-not-ignored files of SRC, as they are on disk
    (without git: everything but build trees and node_modules)."""
    r = subprocess.run(["git", "-C", src, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       capture_output=True)
    if r.returncode != 0:
        shutil.copytree(src, dst, dirs_exist_ok=True, symlinks=True,
                        ignore=shutil.ignore_patterns("build", "build-*", "node_modules", ".git"))
        return
    files = r.stdout.split(b"\0")
    for f in files:
        if not f:
            continue
        rel = f.decode()
        s, d = os.path.join(src, rel), os.path.join(dst, rel)
        if not os.path.isfile(s):
            continue  # deleted in the work tree
        os.makedirs(os.path.dirname(d), exist_ok=True)
        shutil.copy2(s, d)


def build_env(scratch):
    env = dict(os.environ)
    env["CCACHE_BASEDIR"] = scratch
    env["CCACHE_NOHASHDIR"] = "1"
    return env


def configure(scratch, env):
    args = ["cmake", "-S", scratch, "-B", os.path.join(scratch, "build"), "-DCMAKE_BUILD_TYPE=RelWithDebInfo"]
    if shutil.which("ccache"):
        args += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
    r = subprocess.run(args, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        log(r.stdout + r.stderr)
        raise SystemExit("mutation: cmake failed to configure the scratch copy in %s" % scratch)


def build(scratch, targets, env, jobs):
    r = subprocess.run(["cmake", "--build", os.path.join(scratch, "build"), "-j%d" % jobs, "--target"] + sorted(targets),
                       env=env, capture_output=True, text=True)
    return r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


def sanitized(m):
    return m.test[0] == "sanitized-e2e"


def build_for(scratch, mutants, env, jobs):
    """Builds what MUTANTS' tests run: their targets in build/, and the soak's
    ASan + UBSan tree (build/sanitized) when a test runs against it."""
    targets = set(t for m in mutants if not sanitized(m) for t in targets_of(m))
    if targets:
        ok, out = build(scratch, targets, env, jobs)
        if not ok:
            return ok, out
    if any(sanitized(m) for m in mutants):
        r = subprocess.run([os.path.join(scratch, "tests", "soak", "build_sanitized.sh"),
                            os.path.join(scratch, "build", "sanitized")],
                           env=dict(env, REDIR_SANITIZED_JOBS=str(jobs)), capture_output=True, text=True)
        if r.returncode != 0:
            return False, r.stdout[-4000:] + r.stderr[-4000:]
    return True, ""


def run_test(scratch, test):
    """Returns ('pass'|'fail'|'skip', output)."""
    kind = test[0]
    build_dir = os.path.join(scratch, "build")
    if kind == "sanitized-e2e":  # an e2e test against the ASan + UBSan agent: a report fails it
        kind, build_dir = "e2e", os.path.join(build_dir, "sanitized")
    if kind == "gtest":
        _, binary, gfilter, _ = test
        argv = [os.path.join(build_dir, binary), "--gtest_filter=" + gfilter]
        env = dict(os.environ)
    elif kind == "e2e":
        _, module, cls, method, _ = test
        argv = [sys.executable, os.path.join(scratch, "tests", "e2e", "run_e2e.py"), module, cls, "--only", method]
        env = dict(os.environ, REDIR_BUILD=build_dir, PYTHONDONTWRITEBYTECODE="1")
    else:
        raise SystemExit("mutation: unknown test kind %r" % kind)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env,
                           cwd=os.path.dirname(argv[0]) if kind == "gtest" else None)
    except subprocess.TimeoutExpired:
        return "fail", "timed out after 600 s"
    out = r.stdout + r.stderr
    # A filter that matches nothing runs 0 tests and exits 0 ("[  PASSED  ] 0
    # tests."): as a pass it would make every mutant of it survive and, worse,
    # its baseline look fine. A parameterised suite (TEST_P) is named
    # "Prefix/Suite.Test/N": its filter needs the wildcards.
    if kind == "gtest" and "[ RUN      ]" not in out:
        return "fail", "no test matched the filter %s:\n%s" % (test[2], out)
    if r.returncode == 77 or (r.returncode == 0 and "[  SKIPPED ]" in out):
        return "skip", out
    return ("pass" if r.returncode == 0 else "fail"), out


def targets_of(m):
    return m.test[-1]


def test_name(m):
    if m.test[0] == "gtest":
        return m.test[2]
    return ("sanitized " if sanitized(m) else "") + "%s.%s.%s" % m.test[1:4]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ci", action="store_true", help="only the cheap mutants CTest runs")
    ap.add_argument("--only", help="comma-separated mutant ids")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--check", action="store_true",
                    help="only check that every mutant still applies to the source (no build), then exit")
    ap.add_argument("--keep", action="store_true", help="keep the scratch copy (its path is printed)")
    ap.add_argument("-j", type=int, default=2, help="build jobs (default 2)")
    a = ap.parse_args()

    chosen = MUTANTS
    if a.ci:
        chosen = [m for m in chosen if m.ci]
    if a.only:
        ids = a.only.split(",")
        unknown = set(ids) - {m.id for m in MUTANTS}
        if unknown:
            raise SystemExit("mutation: unknown mutant id(s) %s; see --list" % ", ".join(sorted(unknown)))
        chosen = [m for m in MUTANTS if m.id in ids]
    if a.list:
        for m in chosen:
            log("%-28s %-60s %s%s" % (m.id, m.prop, test_name(m), "  [ci]" if m.ci else ""))
        return 0

    bad = check_applies(chosen, ROOT)
    if bad:
        for b in bad:
            log(b)
        return 3
    if a.check:
        log("mutation: all %d mutant(s) apply" % len(chosen))
        return 0

    t0 = time.time()
    scratch = tempfile.mkdtemp(prefix="redir-mutation-")
    try:
        log("mutation: %d mutant(s); scratch copy %s" % (len(chosen), scratch))
        copy_tree(ROOT, scratch)
        env = build_env(scratch)
        configure(scratch, env)
        ok, out = build_for(scratch, chosen, env, a.j)
        if not ok:
            log(out)
            log("mutation: the unmutated copy does not build (mutants %s)" % ", ".join(m.id for m in chosen))
            return 3
        log("mutation: built in %.0f s" % (time.time() - t0))

        # Without a mutant, each named test must pass: otherwise killing proves nothing.
        baseline_bad = False
        usable = []
        for m in chosen:
            verdict, out = run_test(scratch, m.test)
            if verdict == "pass":
                usable.append(m)
            elif verdict == "skip":
                log("UNCHECKED %s: %s is skipped here, so this mutant cannot be checked on this machine" %
                    (m.id, test_name(m)))
            else:
                baseline_bad = True
                log(out[-3000:])
                log("BASELINE FAILS %s: %s fails without any mutant" % (m.id, test_name(m)))
        if baseline_bad:
            return 2

        survivors, broken = [], []
        for m in usable:
            path = os.path.join(scratch, m.file)
            original = open(path).read()
            with open(path, "w") as f:
                f.write(original.replace(m.find, m.replace, 1))
            try:
                ok, out = build_for(scratch, [m], env, a.j)
                if not ok:
                    log(out)
                    log("BROKEN %s: the mutant does not build; fix its replacement in mutants.py" % m.id)
                    broken.append(m)
                    continue
                verdict, out = run_test(scratch, m.test)
                if verdict == "fail":
                    log("killed   %-28s by %s" % (m.id, test_name(m)))
                elif verdict == "skip":
                    log("UNCHECKED %s: %s skipped with the mutant applied" % (m.id, test_name(m)))
                else:
                    log("SURVIVED %-28s %s still passes with the guard of \"%s\" removed (%s)" %
                        (m.id, test_name(m), m.prop, m.file))
                    survivors.append(m)
            finally:
                with open(path, "w") as f:
                    f.write(original)
        log("mutation: %d killed, %d survived, %d broken, %d unchecked, %.0f s" %
            (len(usable) - len(survivors) - len(broken), len(survivors), len(broken),
             len(chosen) - len(usable), time.time() - t0))
        if broken:
            return 3
        return 1 if survivors else 0
    finally:
        if a.keep:
            log("mutation: scratch copy kept in %s" % scratch)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
