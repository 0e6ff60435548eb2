"""The package's layout: stages import only the stages below them, and no module imports itself back.

Every import is read from the source (function-level imports included), resolved to a module of
the package, and checked against the stage order of ``intrafusion_viz/__init__.py``'s docstring.
"""
import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "intrafusion_viz"

# Lowest first.  A module may import modules of its own stage or of a lower one.
STAGES = ["_state", "models", "data", "groups", "plan", "merge", "repair", "pruning", "evaluation", "fusion",
          "figures", "paper", "widgets", "cli", "__main__"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known) -> set:
    """Package modules ``name`` imports anywhere in its source (``from .. import x`` counts as ``x``)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("intrafusion_viz"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("intrafusion_viz"):
                continue
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            found.update(subs or [target])
    found.discard(name)
    return {m for m in found if m in known}


def _stage(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(STAGES)  # the package's own __init__: the facade above every stage
    return STAGES.index(parts[1])


def _graph():
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_every_module_belongs_to_a_stage():
    for name in _modules():
        parts = name.split(".")
        assert len(parts) == 1 or parts[1] in STAGES, f"{name} is in no stage of {STAGES}"


def test_stages_import_only_lower_stages():
    wrong = [f"{a} imports {b}" for a, deps in _graph().items() for b in deps
             if len(a.split(".")) > 1 and _stage(b) > _stage(a)]
    assert not wrong, "lower stages import higher ones:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    graph = _graph()
    # Tarjan's strongly connected components; a component of more than one module is a cycle.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("module", ["intrafusion_viz.plan._transport", "intrafusion_viz.merge._surgery"])
def test_the_checker_sees_function_level_imports(module):
    graph = _graph()
    assert graph[module], f"{module} imports nothing the checker can see"


# ---------------------------------------------------------------- sizes a reader can take in

MAX_FILE_LINES = 600  # a file read in one sitting
MAX_FUNCTION_LINES = 120  # a function seen whole (signature, docstring and body)
SIZE_ALLOWED = {  # package-relative path: why it may be longer for now (none today)
}


def _sizes():
    """``(path, lines, [(function, lines)])`` of every package file, paths relative to the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        functions = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
                     if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
        yield path.relative_to(PACKAGE).as_posix(), source.count("\n"), functions


def test_files_and_functions_are_short():
    too_long = []
    for rel, lines, functions in _sizes():
        if rel in SIZE_ALLOWED:
            continue
        if lines > MAX_FILE_LINES:
            too_long.append(f"{rel}: {lines} lines (at most {MAX_FILE_LINES})")
        too_long += [f"{rel}: {name}() is {n} lines (at most {MAX_FUNCTION_LINES})"
                     for name, n in functions if n > MAX_FUNCTION_LINES]
    assert not too_long, "split these:\n" + "\n".join(too_long)


def test_the_size_allow_list_names_real_files():
    files = {rel for rel, _, _ in _sizes()}
    assert set(SIZE_ALLOWED) <= files, set(SIZE_ALLOWED) - files


def test_the_size_check_can_fail(tmp_path, monkeypatch):
    """A file of 601 lines and a function of 121 lines are both reported."""
    package = tmp_path / "intrafusion_viz"
    package.mkdir()
    body = "\n".join(["def long():"] + ["    x = 1"] * 120) + "\n"
    (package / "big.py").write_text(body + "\n" * (MAX_FILE_LINES + 1 - body.count("\n")))
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    with pytest.raises(AssertionError, match=r"big.py: 601 lines.*\n.*long\(\) is 121 lines"):
        test_files_and_functions_are_short()
