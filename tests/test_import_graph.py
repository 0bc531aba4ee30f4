"""The package's import graph: no cycles, and no library module that imports the commands or the web app.

The graph is read from the source with ``ast`` (nothing is imported). Every ``import`` counts, those inside
functions too: an import moved into a function to dodge a cycle still runs, later and at a place that is
hard to see, and it is still a cycle of the design. Imports under ``if TYPE_CHECKING:`` never run and do
not count. An edge goes to the module an import names (``from wordepth.data.facts import NYU`` ->
``wordepth.data.facts``; ``from wordepth.data import splits`` -> ``wordepth.data.splits``), not to the
packages above it, whose ``__init__`` Python runs first: those hold no code that imports back (a lazy
``__getattr__`` imports by a name in a string, which this reading cannot see, and runs only when the
attribute is used).

Layers: ``wordepth.cli`` (the commands) may import anything; ``wordepth.app`` (the web app) anything
but the commands; every other module neither.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "wordepth"
TOP_LAYERS = ("wordepth.cli", "wordepth.app")  # highest first


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:``."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else ""
            if name == "TYPE_CHECKING":
                skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skip


def import_graph() -> dict[str, dict[str, list[str]]]:
    """module -> {imported module of this package -> ["line N (top)" or "line N (in a function)", ...]}."""
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, list[str]]] = {}
    for module, path in sorted(paths.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skip, top = _type_checking_only(tree), {id(n) for n in tree.body}
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges = graph.setdefault(module, {})
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package, one level up per extra dot
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in paths else prefix for a in node.names]
            else:
                continue
            for name in names:
                target = resolve(name) if name.split(".")[0] == "wordepth" else None
                if target and target != module:
                    where = "top" if id(node) in top else "in a function"
                    edges.setdefault(target, []).append(f"line {node.lineno} ({where})")
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int:
    """0 for the commands, 1 for the web app, 2 for the library."""
    return next((i for i, top in enumerate(TOP_LAYERS) if module == top or module.startswith(top + ".")),
                len(TOP_LAYERS))


def test_the_reader_sees_top_level_function_level_and_relative_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "wordepth"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from wordepth.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import x\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    import wordepth.a\nfrom . import b\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["_"]), "PACKAGE", pkg)
    graph = import_graph()
    assert graph["wordepth.a"] == {"wordepth.sub.b": ["line 1 (top)"]}
    assert graph["wordepth.sub.b"] == {"wordepth.a": ["line 2 (in a function)"]}
    assert graph["wordepth.sub.c"] == {"wordepth.sub.b": ["line 4 (top)"]}  # not the TYPE_CHECKING one
    assert cycles(graph) == [["wordepth.a", "wordepth.sub.b"]]


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    found = cycles(graph)
    detail = [f"{a} -> {b} ({', '.join(graph[a][b])})" for c in found for a in c for b in graph[a] if b in c]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_no_library_module_imports_the_commands_or_the_web_app():
    graph = import_graph()
    upward = [f"{a} -> {b} ({', '.join(where)})" for a, targets in graph.items() for b, where in targets.items()
              if _layer(b) < _layer(a)]
    assert not upward, "imports from a lower layer into wordepth.cli / wordepth.app:\n" + "\n".join(upward)
    assert len(graph) > 50 and any(_layer(m) == 0 for m in graph)  # the reader found the package
