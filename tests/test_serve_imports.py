"""Importing the serving package, or any of its modules, loads no TensorFlow (nor JAX): the
corrector, which pulls both in, is loaded only when the server starts, so `lmcor serve --help`
and its flag checks answer at once."""
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "lmcor" / "serve"

# `__main__` is left out: importing it runs the command.
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE)]) if m.name != "__main__")


def test_the_package_docstring_lists_every_module():
    doc = (PACKAGE / "__init__.py").read_text(encoding="utf-8")
    listed = re.findall(r"^  \* `(\w+)`", doc, re.M)
    assert sorted(listed) == MODULES and len(MODULES) >= 5, (listed, MODULES)


@pytest.mark.parametrize("module", ["lmcor.serve", *(f"lmcor.serve.{m}" for m in MODULES)])
def test_importing_loads_no_tensorflow(module):
    probe = (f"import lmcor.serve, sys; import {module}; "
             "heavy = [m for m in ('tensorflow', 'jax', 'lmcor.inference.corrector') "
             "if m in sys.modules]; "
             f"assert {module!r} in sys.modules; "
             "assert 'tensorflow' not in sys.modules, heavy; print(heavy)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]", done.stdout
