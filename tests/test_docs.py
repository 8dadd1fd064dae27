"""The front page and the docs: every relative link names a file that exists, every file path
and `lmcor.*` module they name exists, and the README stays a front page (its length is part of
the design: details live in docs/)."""
import ast
import glob
import os
import pathlib
import re

import pytest

from lmcor import paths

DOCS = ["README.md", "benchmarks/README.md", "launch/README.md"] + sorted(
    os.path.relpath(p, paths.REPO_ROOT)
    for p in glob.glob(os.path.join(paths.REPO_ROOT, "docs", "*.md")))
_LINK = re.compile(r"\]\(([^)\s]+)\)")
# A repository path in backquotes (placeholders such as <dataset> and globs are skipped), and
# a dotted lmcor name: a module, maybe followed by one of its names.
_PATH = re.compile(r"`((?:lmcor|tasks|tests|gin|benchmarks|scripts|launch|data)/[^`\s<*{]*)`")
_DOTTED = re.compile(r"\blmcor(?:\.[A-Za-z_]\w*)+")


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
    path = os.path.join(paths.REPO_ROOT, doc)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # web links and in-page anchors
        file = target.split("#", 1)[0]
        if not os.path.exists(os.path.join(os.path.dirname(path), file)):
            broken.append(target)
    assert not broken, f"{doc}: links to missing files {broken}"


def test_readme_is_a_front_page():
    with open(os.path.join(paths.REPO_ROOT, "README.md"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 150
    assert "bash scripts/quickstart.sh" in lines and "bash scripts/test.sh" in lines


def _module_file(parts):
    """The source of the dotted module `parts` (lmcor.tasks.* lives in tasks/), or None."""
    tasks = parts[:2] == ["lmcor", "tasks"]
    path = pathlib.Path(paths.REPO_ROOT, "tasks" if tasks else "lmcor", *parts[2 if tasks else 1:])
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level_names(source: pathlib.Path) -> set:
    """What a module defines or imports at its top level (classes and their methods too)."""
    names = set()
    for node in ast.parse(source.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
            names |= {n.name for n in getattr(node, "body", []) if isinstance(n, ast.FunctionDef)}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


@pytest.mark.parametrize("doc", DOCS)
def test_the_files_and_modules_a_doc_names_exist(doc):
    """A page that names a file or module that moved sends its reader nowhere."""
    with open(os.path.join(paths.REPO_ROOT, doc), encoding="utf-8") as f:
        text = f.read()
    missing = [p for p in _PATH.findall(text)
               if not os.path.exists(os.path.join(paths.REPO_ROOT, p.split(":")[0]))]
    for name in sorted(set(_DOTTED.findall(text))):
        parts = name.split(".")
        found = next(((k, _module_file(parts[:k])) for k in range(len(parts), 0, -1)
                      if _module_file(parts[:k])), (0, None))
        k, source = found
        attr = parts[k] if source and k < len(parts) else None
        if source is None or (attr and attr not in _top_level_names(source)):
            missing.append(name)
    assert not missing, f"{doc}: names that do not exist: {missing}"
