"""Finds ASan/UBSan/LSan reports in what a sanitized process wrote to stderr.

The sanitizers write to their log_path files, except where they cannot open
one: out of descriptors (EMFILE), GCC 12's runtime writes every report to
stderr instead, and there it also ignores suppressions= and halt_on_error, so
the process runs on and exits 0. Reading the files alone misses those
reports: run_sanitized.py and harness.sanitizer_reports() scan stderr too.

One exception, and only where a test opts in (emfile=True: the one unit test
that uses up every descriptor on purpose, REDIR_SAN_EMFILE=1): UBSan's "object
has invalid vptr" with "<memory cannot be printed>", written to stderr. At
EMFILE the runtime's vtable probe (a pipe, IsAccessibleMemoryRange) fails and
it reports valid objects so (tests/soak/README.md: the 15-line reproduction).
A report in a log file is never excused: the runtime could open that file,
so it was not out of descriptors. Every other report at EMFILE still counts
(a real signed overflow there is printed next to the false vptr ones).
"""
import re

# The first line of every kind of report, and the summary lines.
MARKER = re.compile(r"runtime error:|ERROR: AddressSanitizer|LeakSanitizer|SUMMARY: \w+Sanitizer")

# UBSan's false report at EMFILE: exactly these three lines, with the stack
# trace print_stacktrace may add (at EMFILE the symbolizer cannot start: none).
EMFILE_FALSE_VPTR = re.compile(r"^\S+: runtime error: (member call on|downcast of|member access within) address "
                               r"\S+ which does not point to an object of type '[^']+'\n\S+: note: object has "
                               r"invalid vptr\n<memory cannot be printed>\n(?:[ \t]+#\d+ .*\n|\n)*", re.M)

CONTEXT_LINES = 40


def in_output(text, emfile=False):
    """The sanitizer reports in a process's stderr TEXT, each with the lines
    that follow it ("" when there are none). EMFILE: drop the false vptr
    report above (only for a test that uses up its descriptors on purpose)."""
    if emfile:
        text = EMFILE_FALSE_VPTR.sub("", text)
    lines = text.splitlines()
    shown, end = [], -1
    for i, line in enumerate(lines):
        if i > end and MARKER.search(line):
            end = i + CONTEXT_LINES
            shown.append("\n".join(lines[i:end]))
    return "\n...\n".join(shown)
