"""Copies of a saved HF checkpoint with faults put in, and the check of the mismatch report, for
the importer tests of every model family (tests/test_gemma.py, tests/test_t5.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lmcor.checkpoints.errors import CheckpointMismatchError


def save_tampered(src: Path, dst: Path, *, drop: str, add: dict[str, np.ndarray]) -> dict:
    """Writes dst/model.safetensors: src's tensors less `drop`, with `add` put in (new names, or
    old names at another shape). Returns src's tensors as loaded."""
    tensors = load_file(str(src / "model.safetensors"))
    if drop not in tensors:  # the test would then check nothing about missing tensors
        raise KeyError(f"{src} has no tensor {drop}")
    save_file({**{k: v for k, v in tensors.items() if k != drop}, **add},
              str(dst / "model.safetensors"))
    return tensors


def assert_lists_every_problem(load, *, missing: str, unexpected: str,
                               misshaped: tuple[str, tuple, tuple]) -> None:
    """`load()` raises one CheckpointMismatchError naming the missing tensor, the unexpected one
    and the mis-shaped one (name, shape the model wants, shape the file has)."""
    with pytest.raises(CheckpointMismatchError) as err:
        load()
    text = str(err.value)
    assert f"missing tensor: {missing}" in text
    assert f"unexpected tensor: {unexpected}" in text
    name, expected, found = misshaped
    assert f"mis-shaped tensor: {name}: expected {expected}, found {found}" in text


def write_config(src: Path, dst: Path, *, drop: tuple[str, ...] = (), **fields) -> None:
    """Writes dst/config.json: src's config.json less the fields in `drop`, with `fields` set."""
    cfg = json.loads((src / "config.json").read_text())
    for name in drop:
        del cfg[name]
    (dst / "config.json").write_text(json.dumps({**cfg, **fields}))
