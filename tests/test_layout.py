"""The layout rules a newcomer relies on: short functions with few parameters, one registry of methods, no import
cycle in the library, and library messages that name no script's constant.

Run it as a script to list the functions over the limit: ``python tests/test_layout.py`` (prints nothing when all
are short).
"""
import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 70
MAX_PARAMETERS = 8
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


def many_parameters(paths=SOURCES, limit=MAX_PARAMETERS):
    """``path:line name (N parameters)`` of every function, method or lambda taking more than ``limit`` parameters
    (``self`` and ``cls`` count, as do ``*args`` and ``**kwargs``); larger sets travel as a dataclass."""
    found = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                a = node.args
                count = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                if count > limit:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {getattr(node, 'name', 'lambda')} "
                                 f"({count} parameters)")
    return found


def test_no_function_takes_more_than_8_parameters():
    assert many_parameters() == []


def module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def library_imports():
    """``{module: {vitlrp modules it imports}}`` over every import statement of vitlrp/, also inside functions.
    Importing ``a.b.c`` runs ``a.b``'s ``__init__`` first, so it counts as importing ``a.b`` (and ``a.b.c``);
    ``vitlrp`` itself (whose ``__init__`` every import runs first) is left out, as is a module's own package."""
    modules = {module_name(p): p for p in (ROOT / "vitlrp").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([node.module] if node.module else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        edges = set()
        for t in targets:
            parts = t.split(".")
            edges |= {".".join(parts[:k]) for k in range(2, len(parts) + 1) if ".".join(parts[:k]) in modules}
        graph[name] = edges - {name} - {n for n in edges if name.startswith(n + ".")}
    return graph


def import_cycles(graph):
    """Every cycle of the import graph, each as a list of modules (one per strongly connected component)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_library_has_no_import_cycle():
    graph = library_imports()
    assert "vitlrp.methods.registry" in graph["vitlrp.methods.lrp"]  # the graph sees relative imports ...
    assert "vitlrp.sanity" in graph["vitlrp.batch"]  # ... and the package __init__ an import runs
    assert import_cycles(graph) == []
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check works


# words that are also script constants but name something else in the library's prose
NOT_CONSTANTS = {"ROAD": "the ROAD metric (Rong et al.)", "URL": "the word"}


def script_constants():
    """The names of every script's constants block (what the scripts call their settings)."""
    sys.path.insert(0, str(ROOT))
    from vitlrp.cli import block_names

    names = set()
    for path in (ROOT / "scripts").glob("*.py"):
        names |= {n for n in block_names(path) or () if re.fullmatch(r"[A-Z][A-Z0-9_]*", n)}
    return names - set(NOT_CONSTANTS)


def library_strings(path):
    """``(line, text)`` of the string literals of a module that can reach a message: every literal but docstrings,
    the keys of a lookup (``d["KEY"]``, ``d.get("KEY")``: reading what a script wrote) and comparisons."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(body[0].value,
                                                                                               ast.Constant):
            skip.add(id(body[0].value))  # a docstring
        if isinstance(node, ast.Subscript):
            skip.add(id(node.slice))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args:
            skip.add(id(node.args[0]))
        if isinstance(node, ast.Compare):
            skip |= {id(n) for side in [node.left, *node.comparators] for n in ast.walk(side)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in skip]


def test_no_library_message_names_a_scripts_constant():
    """The library names what is wrong in its own words (``image_size``, with ``UserError.setting``); a script words
    it as its constant (``IMAGE_SIZE``, cli.message). Only the flags module may know the naming conventions."""
    constants = script_constants()
    assert {"IMAGE_SIZE", "DEVICE", "VAL_FRACTION", "DTYPE", "NUM_SAMPLES", "GAMMA_FILE"} <= constants
    names = "|".join(sorted(constants, key=len, reverse=True))
    pattern = re.compile(rf"(?<![A-Za-z0-9_])({names})(?![A-Za-z0-9_])")
    hits = [f"{p.relative_to(ROOT)}:{line}: {text[:60]!r}" for p in sorted((ROOT / "vitlrp").rglob("*.py"))
            if p.name != "cli.py" for line, text in library_strings(p) if pattern.search(text)]
    assert hits == []
    bad = ROOT / "tests" / "_layout_probe.py"  # the check finds a message that names a constant
    try:
        bad.write_text('def f(x):\n    """IMAGE_SIZE in a docstring is fine."""\n    if x["DTYPE"]:\n'
                       '        raise ValueError(f"IMAGE_SIZE must be positive, got {x}")\n', encoding="utf-8")
        found = [text for _, text in library_strings(bad) if pattern.search(text)]
        assert found == ["IMAGE_SIZE must be positive, got "]
    finally:
        bad.unlink()


def test_methods_are_dispatched_by_the_registry_not_by_name():
    """No `kind ==` / `name ==` chains choosing a method: vitlrp.methods knows them all."""
    pattern = re.compile(r"\b(kind|method\.name|m\.name)\s*==\s*[\"'](lrp|input_x_gradient|random|gradcam|rollout|gae|"
                         r"integrated_gradients|smoothgrad)[\"']")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in SOURCES for i, line in enumerate(p.read_text().splitlines(), 1)
            if pattern.search(line) or re.search(r"\bkind ==", line)]
    assert hits == []


if __name__ == "__main__":
    lines = long_functions() + many_parameters()
    print("\n".join(lines))
    sys.exit(1 if lines else 0)
