"""No import cycle inside the ``blocklink`` package, not even through imports inside functions.

The graph is read from the source (AST), so lazy imports count: every ``import x`` and ``from x import
y`` anywhere in a module, with ``y`` taken as the submodule ``x.y`` when there is one, relative
imports resolved. An edge goes to the module named, not to its parent packages (running a package's
``__init__`` first is how Python imports, not a dependency of the importer's own)."""

from __future__ import annotations

import ast
import os
from typing import Dict, Iterator, List, Optional

import blocklink

PACKAGE_DIR = os.path.dirname(os.path.abspath(blocklink.__file__))


def package_modules(pkg_dir: str = PACKAGE_DIR, name: str = "blocklink") -> Dict[str, str]:
    """Dotted module name -> file, for every .py file under the package."""
    out = {}
    for d, dirs, files in os.walk(pkg_dir):
        dirs[:] = sorted(x for x in dirs if x != "__pycache__")
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(d, f), pkg_dir)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join([name] + rel)] = os.path.join(d, f)
    return out


def imports_of(module: str, path: str, known: Dict[str, str]) -> Iterator[tuple]:
    """(imported module, line) for every import in the file that names a module of the package."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rpartition(".")[0]
                base = ".".join(p for p in (parent, node.module) if p)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in known:
                    yield sub, node.lineno
                elif base in known:
                    yield base, node.lineno


def import_graph(known: Optional[Dict[str, str]] = None) -> Dict[str, Dict[str, int]]:
    """module -> {imported module: first line importing it}."""
    known = known if known is not None else package_modules()
    graph: Dict[str, Dict[str, int]] = {m: {} for m in known}
    for module, path in known.items():
        for target, line in imports_of(module, path, known):
            if target != module:
                graph[module].setdefault(target, line)
    return graph


def find_cycle(graph: Dict[str, Dict[str, int]]) -> Optional[List[str]]:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def describe(cycle: List[str], graph: Dict[str, Dict[str, int]], known: Dict[str, str]) -> str:
    return "import cycle:\n" + "\n".join(
        f"  {a} -> {b}  ({os.path.relpath(known[a], os.path.dirname(PACKAGE_DIR))}:{graph[a][b]})"
        for a, b in zip(cycle, cycle[1:]))


def test_blocklink_has_no_import_cycle() -> None:
    known = package_modules()
    graph = import_graph(known)
    assert len(known) > 50 and graph["blocklink.hostpaths"]  # the walk saw the package and its imports
    cycle = find_cycle(graph)
    assert cycle is None, describe(cycle, graph, known)


def test_the_graph_sees_lazy_relative_and_submodule_imports(tmp_path) -> None:
    """The checker itself: a cycle closed only by an import inside a function, through a relative
    ``from . import sub``, is found and printed."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")  # the submodule pkg.sub.b, not pkg.sub
    (pkg / "sub" / "b.py").write_text("import os\n\ndef f():\n    from .. import a\n    return a\n")
    (pkg / "c.py").write_text("from pkg import a as _a\nfrom pkg.sub import missing_name\n")
    known = package_modules(str(pkg), "pkg")
    graph = import_graph(known)
    assert graph == {"pkg": {}, "pkg.a": {"pkg.sub.b": 1}, "pkg.sub": {}, "pkg.sub.b": {"pkg.a": 4},
                     "pkg.c": {"pkg.a": 1, "pkg.sub": 2}}
    cycle = find_cycle(graph)
    assert cycle is not None and set(cycle) == {"pkg.a", "pkg.sub.b"} and cycle[0] == cycle[-1]
    text = describe(cycle, graph, known)
    assert "pkg.sub.b -> pkg.a" in text and "b.py:4" in text
    del graph["pkg.sub.b"]["pkg.a"]
    assert find_cycle(graph) is None
