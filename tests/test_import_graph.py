"""lmcor's modules import each other without a cycle, in the stage order docs/architecture.md
draws, and no library module imports the command layer; imports made inside functions count.

A function-local import lets Python load two modules that need each other, but the pair still
cannot be understood, tested or moved apart; this test reads the source, so it sees those too.

    python tests/test_import_graph.py [FOLDER]   prints the cycle or out-of-order imports, if
                                                 any, in FOLDER/lmcor
"""
import ast
import pathlib
import sys
from typing import Dict, List, Optional, Set

PACKAGE = "lmcor"
REPO = pathlib.Path(__file__).resolve().parents[1]
# Folders outside lmcor/ that setup.py's package_dir installs as its subpackages.
MAPPED = {"tasks": "lmcor.tasks"}
# The packages in the order they may import each other (docs/architecture.md): each imports only
# the ones before it. The building blocks come first; then the data flow: pools and records,
# sampling (which writes pools), SeqIO tasks, training, inference, evaluation, serving, the
# pipeline that runs the commands, and the commands themselves.
STAGES = ("lmcor.models", "lmcor.decode", "lmcor.checkpoints", "lmcor.metrics", "lmcor.data",
          "lmcor.sampling", "lmcor.tasks", "lmcor.training", "lmcor.inference",
          "lmcor.evaluation", "lmcor.serve", "lmcor.pipeline", "lmcor.cli")
# The only modules outside the packages: small leaves that import nothing of lmcor.
LEAVES = ("lmcor.paths", "lmcor.io_utils", "lmcor.compile_cache")
CLI = "lmcor.cli"


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


def layer(module: str) -> Optional[int]:
    """Where `module` sits in the import order: -1 for a leaf, a STAGES index for a package's
    module, None for the package root `lmcor` and anything unplaced."""
    if module in LEAVES:
        return -1
    return next((i for i, stage in enumerate(STAGES)
                 if module == stage or module.startswith(stage + ".")), None)


def is_entry_point(module: str) -> bool:
    """A `__main__` module runs a command; nothing imports it, so it may call lmcor.cli."""
    return module.rsplit(".", 1)[-1] == "__main__"


def out_of_order(graph: Dict[str, Set[str]]) -> List[str]:
    """`a -> b` for every import of a later stage, of lmcor.cli by library code, or of
    anything by a leaf; `a: not placed` for a module of no stage and no leaf."""
    found = []
    for module in sorted(graph):
        if is_entry_point(module) or module == PACKAGE:
            continue
        here = layer(module)
        if here is None:
            found.append(f"{module}: not placed (a stage package or a leaf module)")
            continue
        for target in sorted(graph[module]):
            there = layer(target)
            same_stage = here >= 0 and there == here
            if not same_stage and (there is None or there >= here):
                found.append(f"{module} -> {target}")
    return found


def test_lmcor_modules_import_in_stage_order():
    graph = import_graph(REPO)
    loose = sorted(m for m, path in module_files(REPO).items()
                   if path.parent == REPO / PACKAGE and path.name != "__init__.py")
    assert loose == sorted(LEAVES), "modules outside the stage packages: " + ", ".join(loose)
    assert set(STAGES) <= set(graph)  # every stage is a package here
    bad = out_of_order(graph)
    assert not bad, "imports out of stage order:\n  " + "\n  ".join(bad)


def test_no_library_module_imports_the_cli():
    graph = import_graph(REPO)
    cli = STAGES.index(CLI)
    library = [m for m in graph if layer(m) != cli and not is_entry_point(m)]
    assert len(library) > 50
    bad = [f"{m} -> {t}" for m in library for t in sorted(graph[m]) if layer(t) == cli]
    assert not bad, "library code imports lmcor.cli: " + ", ".join(bad)


def test_an_import_against_the_stage_order_is_named(tmp_path):
    pkg = tmp_path / "lmcor"
    for sub in ("data", "training", "cli"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "paths.py").write_text("REPO_ROOT = '.'\n")
    (pkg / "data" / "pool.py").write_text("from lmcor import paths\n")
    (pkg / "training" / "loop.py").write_text("from lmcor.data import pool\n")
    (pkg / "cli" / "train_command.py").write_text("from lmcor.training import loop\n")
    assert out_of_order(import_graph(tmp_path)) == []
    # The data stage reaching into training, library code calling the CLI, a leaf importing.
    (pkg / "data" / "pool.py").write_text("def f():\n    from lmcor.training import loop\n")
    (pkg / "training" / "loop.py").write_text("from lmcor.cli import train_command\n")
    (pkg / "paths.py").write_text("from lmcor.data import pool\n")
    (pkg / "stray.py").write_text("")
    assert out_of_order(import_graph(tmp_path)) == [
        "lmcor.data.pool -> lmcor.training.loop", "lmcor.paths -> lmcor.data.pool",
        "lmcor.stray: not placed (a stage package or a leaf module)",
        "lmcor.training.loop -> lmcor.cli.train_command"]


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
    root = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else REPO
    found, order = find_cycle(import_graph(root)), out_of_order(import_graph(root))
    print("import cycle: " + " -> ".join(found) if found else "no import cycle")
    print("\n".join(["out of stage order:", *order]) if order else "stage order kept")
    sys.exit(1 if found or order else 0)
