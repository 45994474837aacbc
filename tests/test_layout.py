"""The layout rules a newcomer relies on: short functions, one registry of methods, no platform-only imports.

Run it as a script to list the functions over the limit: ``python tests/test_layout.py`` (prints nothing when all
are short).
"""
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 70
SOURCES = sorted([*(ROOT / "vitlrp").rglob("*.py"), *(ROOT / "scripts").glob("*.py")])


def long_functions(paths=SOURCES, limit=MAX_LINES):
    """``path:line name (N lines)`` of every function or method longer than ``limit`` lines, def to last line."""
    found = []
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                length = node.end_lineno - first + 1
                if length > limit:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_70_lines():
    assert long_functions() == []


def test_methods_are_dispatched_by_the_registry_not_by_name():
    """No `kind ==` / `name ==` chains choosing a method: vitlrp.methods knows them all."""
    pattern = re.compile(r"\b(kind|method\.name|m\.name)\s*==\s*[\"'](lrp|input_x_gradient|random|gradcam|rollout|gae|"
                         r"integrated_gradients|smoothgrad)[\"']")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line) or re.search(r"\bkind ==", line)]
    assert hits == []


if __name__ == "__main__":
    lines = long_functions()
    print("\n".join(lines))
    sys.exit(1 if lines else 0)
