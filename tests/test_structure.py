"""Import structure of the ``offline`` package: imports go one way, private names stay home.

Every module under offline/ is parsed with ``ast`` (nothing is imported, so this is fast and
side-effect free). The graph has an edge A -> B for each ``import``/``from ... import`` in A,
at module level or inside a function, class or ``if TYPE_CHECKING`` block, that names a module
B of the package. ``from pkg import name`` where ``pkg.name`` is itself a module counts as an
edge to that submodule, and also to the package (its ``__init__`` runs first).

Two rules:
- no cycle in that graph (an import hidden in a function is still a dependency: it only moves
  the failure from import time to the first call);
- no ``from X import _private`` of a name defined in another module (a private name is a
  module's own business; borrowing it couples two modules behind the public surface).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = "offline"
ROOT = Path(__file__).resolve().parent.parent / PKG


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under offline/ (a package is its __init__)."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_pkg: bool, level: int, target: str | None) -> str:
    """Absolute dotted name of a (possibly relative) ``from`` target."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_pkg:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _owner(name: str, mods: dict[str, Path]) -> str | None:
    """The longest module of the package that ``name`` is or lies in."""
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def _scan(mods: dict[str, Path]):
    """(edges, private_borrows): edges[mod] = {(target, lineno)}; borrows = [(mod, line, src, name)]."""
    edges: dict[str, set[tuple[str, int]]] = {m: set() for m in mods}
    borrows = []
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == PKG or alias.name.startswith(PKG + "."):
                        owner = _owner(alias.name, mods)
                        if owner and owner != mod:
                            edges[mod].add((owner, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(mod, is_pkg, node.level, node.module)
                if not (src == PKG or src.startswith(PKG + ".")):
                    continue
                owner = _owner(src, mods)
                subs = [f"{src}.{a.name}" for a in node.names if f"{src}.{a.name}" in mods]
                for sub in subs:  # "from pkg import submodule": a dependency on that submodule
                    if sub != mod:
                        edges[mod].add((sub, node.lineno))
                # The package itself counts unless the import only names its submodules from inside
                # it ("from . import db"): Python runs that __init__ first anyway, it adds no layer.
                only_siblings = len(subs) == len(node.names) and mod.startswith(f"{owner}.")
                if owner and owner != mod and not only_siblings:
                    edges[mod].add((owner, node.lineno))
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and f"{src}.{alias.name}" not in mods and owner != mod:
                        borrows.append((mod, node.lineno, src, alias.name))
    return edges, borrows


def _cycles(edges: dict[str, set[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph = {m: sorted({t for t, _ in e}) for m, e in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
                continue
            if nxt not in graph:
                continue
            if nxt not in index:
                index[nxt] = low[nxt] = counter
                counter += 1
                stack.append(nxt)
                on_stack.add(nxt)
                work.append((nxt, iter(graph[nxt])))
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
    return out


def _describe(comp: list[str], edges) -> str:
    members = set(comp)
    lines = [" <-> ".join(comp)]
    for m in comp:
        for t, line in sorted(edges[m]):
            if t in members:
                lines.append(f"    {m}:{line} -> {t}")
    return "\n".join(lines)


def test_no_import_cycles():
    """The intra-package import graph, function-level imports included, is acyclic."""
    edges, _ = _scan(_modules())
    comps = _cycles(edges)
    assert not comps, "import cycles:\n" + "\n".join(_describe(c, edges) for c in comps)


def test_no_private_names_across_modules():
    """No module imports another module's _private name."""
    _, borrows = _scan(_modules())
    assert not borrows, "private names borrowed across modules:\n" + "\n".join(
        f"    {m}:{line} imports {name} from {src}" for m, line, src, name in borrows
    )


def test_scanner_sees_function_level_imports(tmp_path):
    """The scanner itself: a cycle through an import inside a function is found."""
    a = ast.parse("def f():\n    from .b import g\n")
    assert any(isinstance(n, ast.ImportFrom) for n in ast.walk(a))
    edges = {"p.a": {("p.b", 2)}, "p.b": {("p.a", 1)}, "p.c": set()}
    assert _cycles(edges) == [["p.a", "p.b"]]
