"""lmcor's modules import each other without a cycle, counting imports made inside functions.

A function-local import lets Python load two modules that need each other, but the pair still
cannot be understood, tested or moved apart; this test reads the source, so it sees those too.

    python tests/test_import_graph.py [FOLDER]   prints the cycle, if any, in FOLDER/lmcor
"""
import ast
import pathlib
import sys
from typing import Dict, List, Optional, Set

PACKAGE = "lmcor"
REPO = pathlib.Path(__file__).resolve().parents[1]
# Folders outside lmcor/ that setup.py's package_dir installs as its subpackages.
MAPPED = {"tasks": "lmcor.tasks"}


def module_files(root: pathlib.Path, package: str = PACKAGE) -> Dict[str, pathlib.Path]:
    """Dotted module name -> source file, for every .py below root/package and the MAPPED
    folders."""
    folders = [(root / package, package)] + [(root / folder, dotted)
                                             for folder, dotted in MAPPED.items()
                                             if dotted.startswith(package + ".")]
    out = {}
    for folder, dotted in folders:
        for path in sorted(folder.rglob("*.py")):
            parts = [dotted] + list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _base(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module a `from X import ...` statement names, with relative levels resolved."""
    if not node.level:
        return node.module or ""
    here = name.split(".") if is_package else name.split(".")[:-1]
    here = here[: len(here) - (node.level - 1)]
    return ".".join(here + ([node.module] if node.module else []))


def _known(name: str, modules) -> Optional[str]:
    """name, or its longest prefix that is a module (`import a.b.c` of a package a.b)."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in modules:
            return ".".join(parts)
        parts.pop()
    return None


def imports_of(name: str, path: pathlib.Path, modules, package: str = PACKAGE) -> Set[str]:
    """The package's modules that `name` imports anywhere in its source, itself left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(name, is_package, node)
            # `from a import b` imports module a.b when there is one, else a name from a.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            if target == package or target.startswith(package + "."):
                known = _known(target, modules)
                if known and known != name:
                    found.add(known)
    return found


def import_graph(root: pathlib.Path, package: str = PACKAGE) -> Dict[str, Set[str]]:
    modules = module_files(root, package)
    return {name: imports_of(name, path, modules, package) for name, path in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as [a, b, ..., a], or None; depth-first, in sorted order."""
    state: Dict[str, str] = {}  # "open" while on the current path, "done" once fully explored
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_lmcor_has_no_import_cycle():
    graph = import_graph(REPO)
    assert len(graph) > 10 and PACKAGE in graph  # the walk found the package
    assert {"lmcor.tasks", "lmcor.tasks.common"} <= set(graph)  # and tasks/, installed there
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_a_function_local_import_cycle_is_named(tmp_path):
    pkg = tmp_path / "lmcor"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from lmcor.sub.leaf import VALUE\n")
    (pkg / "sub" / "leaf.py").write_text("VALUE = 1\n")
    (pkg / "loop.py").write_text("from lmcor import beam\nfrom lmcor.sub import VALUE\n")
    (pkg / "beam.py").write_text("def f():\n    from .loop import g\n    return g\n")
    graph = import_graph(tmp_path)
    assert graph["lmcor.loop"] == {"lmcor.beam", "lmcor.sub"}
    assert graph["lmcor.sub"] == {"lmcor.sub.leaf"}
    assert find_cycle(graph) == ["lmcor.beam", "lmcor.loop", "lmcor.beam"]
    (pkg / "beam.py").write_text("from lmcor.sub import leaf\n")
    assert import_graph(tmp_path)["lmcor.beam"] == {"lmcor.sub.leaf"}
    assert find_cycle(import_graph(tmp_path)) is None


if __name__ == "__main__":
    found = find_cycle(import_graph(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO))
    print("import cycle: " + " -> ".join(found) if found else "no import cycle")
    sys.exit(1 if found else 0)
