"""The package's import graph, read from the source with ``ast`` (nothing is imported), and its cycles.

Each arrow is one of: MOD (a module-level import), LOCAL (an import inside a function) or TC (under
``if TYPE_CHECKING:``, never run). A runtime cycle is a cycle of MOD and LOCAL arrows.

    python scripts/import_graph.py            # the runtime cycles (none, we hope) and the arrow counts
    python scripts/import_graph.py --arrows   # every runtime arrow, "a -> b (MOD|LOCAL)"
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "diffexplain"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, here: str, modules: set[str]) -> list[str]:
    """The package modules an import statement loads (``from a import b`` loads a.b where b is a module)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = here.split(".")[: -node.level] if not here.endswith("__init__") else here.split(".")
            base = ".".join([*package, base] if base else package)
        submodules = [f"{base}.{alias.name}" for alias in node.names]
        # ``from package import module`` loads the module, not the package's own names
        names = submodules if all(m in modules for m in submodules) else [base, *submodules]
    found = []
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != here and name.startswith("diffexplain"):
            found.append(name)
    return found


def arrows() -> dict[tuple[str, str], str]:
    """(importer, imported) → the strongest kind: MOD, else LOCAL, else TC."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    found: dict[tuple[str, str], str] = {}
    rank = {"MOD": 0, "LOCAL": 1, "TC": 2}

    def visit(node: ast.AST, here: str, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            child_kind = kind
            if isinstance(child, ast.If) and _is_type_checking(child):
                child_kind = "TC"
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and kind == "MOD":
                child_kind = "LOCAL"
            if isinstance(child, ast.Import | ast.ImportFrom):
                for target in _targets(child, here, modules):
                    key = (here, target)
                    if key not in found or rank[child_kind] < rank[found[key]]:
                        found[key] = child_kind
            visit(child, here, child_kind)

    for name, path in files.items():
        visit(ast.parse(path.read_text(encoding="utf-8")), name, "MOD")
    # a module's import also runs its packages' __init__ (diffexplain.widgets.base runs diffexplain.widgets)
    for (a, b), kind in list(found.items()):
        package = b.rpartition(".")[0]
        if package and package in modules and package != a and not a.startswith(package + "."):
            key = (a, package)
            if key not in found or rank[kind] < rank[found[key]]:
                found[key] = kind
    return found


def runtime_cycles(edges: dict[tuple[str, str], str]) -> list[list[str]]:
    """The strongly connected components (size > 1) of the MOD + LOCAL graph (Tarjan)."""
    graph: dict[str, list[str]] = {}
    for (a, b), kind in edges.items():
        if kind != "TC":
            graph.setdefault(a, []).append(b)
            graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arrows", action="store_true", help="list every runtime arrow")
    args = parser.parse_args()
    edges = arrows()
    counts = {kind: sum(1 for k in edges.values() if k == kind) for kind in ("MOD", "LOCAL", "TC")}
    print(f"{len(edges)} arrows between package modules: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    if args.arrows:
        for (a, b), kind in sorted(edges.items()):
            if kind != "TC":
                print(f"{a} -> {b} ({kind})")
    cycles = runtime_cycles(edges)
    print(f"runtime import cycles (MOD and LOCAL arrows): {len(cycles)}")
    for component in cycles:
        print("  " + " <-> ".join(component))
    sys.exit(1 if cycles else 0)


if __name__ == "__main__":
    main()
