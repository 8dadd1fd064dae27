"""The front page and the docs: every relative link names a file that exists, and the README
stays a front page (its length is part of the design: details live in docs/)."""
import glob
import os
import re

import pytest

from lmcor import paths

DOCS = ["README.md", "benchmarks/README.md", "launch/README.md"] + sorted(
    os.path.relpath(p, paths.REPO_ROOT)
    for p in glob.glob(os.path.join(paths.REPO_ROOT, "docs", "*.md")))
_LINK = re.compile(r"\]\(([^)\s]+)\)")


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
