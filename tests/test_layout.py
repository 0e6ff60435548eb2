"""The package's layout: stages import only the stages below them, and no module imports itself back.

Every import is read from the source (function-level imports included), resolved to a module of
the package, and checked against the stage order of ``intrafusion_viz/__init__.py``'s docstring.
"""
import ast
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
