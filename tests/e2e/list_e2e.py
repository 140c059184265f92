"""Lists the CTest entries of one e2e file, read with ast (nothing imported).

One entry per TestCase class; a test method that can skip (its decorators or
body mention "skip", e.g. self.skipTest(...) or a helper named skip_*) gets an
entry of its own and is left out of its class's, so CTest reports its skip
with the reason instead of a "Passed" class. Output lines:
  CLASS <class> <comma-separated methods to exclude, or ->
  METHOD <class> <method>
"""
import ast
import sys


def can_skip(node, source):
    text = ast.get_source_segment(source, node) or ""
    decos = "".join(ast.get_source_segment(source, d) or "" for d in node.decorator_list)
    return "skip" in (text + decos).lower()


def main(path):
    with open(path) as f:
        source = f.read()
    for cls in ast.parse(source).body:
        if not isinstance(cls, ast.ClassDef):
            continue
        methods = [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                   and n.name.startswith("test")]
        if not methods:
            continue
        own = [m.name for m in methods if can_skip(m, source)]
        if len(own) < len(methods):
            print("CLASS %s %s" % (cls.name, ",".join(own) or "-"))
        for m in own:
            print("METHOD %s %s" % (cls.name, m))


if __name__ == "__main__":
    main(sys.argv[1])
