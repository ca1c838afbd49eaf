"""The house rule: imports point down the layers, and no module imports itself in a circle.

    benchmarks (0)  problems only; knows nothing of models
    harness    (1)  the services a Method receives: prompts, generation, grading, metrics, store, evaluate
    methods    (2)  the method registry and one module or package per method
    repro      (3)  the reproduction: presets, planning, runs, scores, tables, plots, CLI, tiny model, lm-eval
    reproduce.py (4)

Every import counts, also one inside a function: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"benchmarks": 0, "harness": 1, "methods": 2, "repro": 3, "reproduce": 4}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    files = [ROOT / "reproduce.py"] + [p for pkg in LAYERS if (ROOT / pkg).is_dir() for p in (ROOT / pkg).rglob("*.py")]
    return {module_name(p): p for p in files}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Internal modules `name` imports (a `from pkg import sub` counts as importing pkg.sub)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import a.b.c` where only a.b is ours, or an outside module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> int:
    return LAYERS[module.split(".")[0]]


def test_every_import_points_down():
    upward = sorted(f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
                    for src, dsts in graph().items() for dst in dsts if layer(dst) > layer(src))
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    g = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    """A check that cannot fail is a defect: the walker must catch an upward import inside a function."""
    pkg = tmp_path / "harness"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "x.py").write_text("def f():\n    from repro import tables\n    from .y import z\n")
    found = imports_of("harness.x", pkg / "x.py", {"harness", "harness.x", "harness.y", "repro", "repro.tables"})
    assert found == {"repro.tables", "harness.y"}
