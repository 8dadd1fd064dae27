"""A released corrector: a trained run's LoRA adapters (and any other trained parameters) in one
small xz-compressed safetensors file, beside what a run folder needs to load them.

    DIR/adapter.safetensors.xz  trained parameters only, flattened names
                              ("layers_12/attn/q/lora_a"); xz takes the E2E adapter's bf16
                              from 2.5 MB to 1.8 MB, losslessly (`xz -d` gives the safetensors)
    DIR/adapter.json          step, dtype, parameter count, sha256 of the .xz file, and
                              the run's training summary
    DIR/config.gin            the run's Gin config (model, vocabulary, corrector options)
    DIR/task_vocab.json       the task vocabulary's id map, if the run used one
    DIR/base_weights.json     the base checkpoint's file name and sha256
    DIR/eval/history.jsonl    the run's validations, for the report's learning curves

`Corrector.from_model_dir(DIR)` loads such a folder like a run folder: the frozen base comes
from the configured base weights (checked against base_weights.json), the adapters from here.
"""
import json
import lzma
import os
import shutil
import tempfile
from typing import Any, Mapping, Optional

import numpy as np
from flax import traverse_util

from lmcor.io_utils import default_mode, file_sha256
from lmcor.models.layers import as_dtype
from lmcor.paths import BASE_WEIGHTS, EVAL_HISTORY, RUN_CONFIG, TASK_VOCAB, TRAIN_SUMMARY

WEIGHTS, MANIFEST = "adapter.safetensors.xz", "adapter.json"
# Copied from the run folder when present, at the same relative path; config.gin is required.
RUN_FILES = (RUN_CONFIG, TASK_VOCAB, BASE_WEIGHTS, TRAIN_SUMMARY, EVAL_HISTORY)
FORMAT = "lmcor-adapter"


class AdapterError(ValueError):
    pass


def is_adapter_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, WEIGHTS))


def save_adapter(params: Any, model_dir: str, out_dir: str, step: int,
                 dtype: str = "bfloat16") -> str:
    """Writes the trained `params` of the run in `model_dir` (restored at `step`) as an adapter
    folder `out_dir` (replaced whole, never left half-written); returns out_dir."""
    from safetensors.numpy import save

    if not os.path.isfile(os.path.join(model_dir, RUN_CONFIG)):
        raise AdapterError(f"{model_dir}: no config.gin (not a finished lmcor train run?)")
    flat = traverse_util.flatten_dict(params, sep="/")
    tensors = {k: np.ascontiguousarray(np.asarray(v, np.float32).astype(as_dtype(dtype)))
               for k, v in flat.items()}
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".adapter-")
    try:
        os.chmod(tmp, default_mode(directory=True))  # a released folder is read by others
        with open(os.path.join(tmp, WEIGHTS), "wb") as f:
            f.write(lzma.compress(save(tensors), preset=9))
        for name in RUN_FILES:
            if os.path.isfile(os.path.join(model_dir, name)):
                os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
                shutil.copyfile(os.path.join(model_dir, name), os.path.join(tmp, name))
        summary = None
        if os.path.isfile(os.path.join(tmp, TRAIN_SUMMARY)):
            with open(os.path.join(tmp, TRAIN_SUMMARY), encoding="utf-8") as f:
                summary = json.load(f)
        manifest = {"format": FORMAT, "version": 1, "step": int(step), "dtype": dtype,
                    "parameters": int(sum(v.size for v in tensors.values())),
                    "bytes": os.path.getsize(os.path.join(tmp, WEIGHTS)),
                    "sha256": file_sha256(os.path.join(tmp, WEIGHTS)), "training": summary}
        with open(os.path.join(tmp, MANIFEST), "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.write("\n")
        if os.path.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def manifest(adapter_dir: str) -> dict:
    path = os.path.join(adapter_dir, MANIFEST)
    with open(path, encoding="utf-8") as f:
        try:
            info = json.load(f)
        except json.JSONDecodeError as e:
            raise AdapterError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    missing = [k for k in ("step", "sha256") if not isinstance(info, dict) or k not in info]
    if missing:
        raise AdapterError(f"{path}: field {missing[0]!r} missing (not written by lmcor export "
                           "--adapter?)")
    return info


def verify(adapter_dir: str) -> dict:
    """The manifest of an adapter folder whose weights are the ones it lists (sha256)."""
    path = os.path.join(adapter_dir, WEIGHTS)
    info = manifest(adapter_dir)
    if file_sha256(path) != info["sha256"]:
        raise AdapterError(f"{path}: sha256 differs from the one in {MANIFEST} (the file was "
                           "changed or is truncated)")
    return info


def load_adapter(adapter_dir: str, template: Mapping) -> dict:
    """The adapter's parameters as float32 arrays in `template`'s tree (the trainable params of
    the configured model, e.g. from `jax.eval_shape(model.init_fn, ...)`). Refuses a file whose
    sha256 differs from the manifest's, and names missing or unexpected parameters."""
    from safetensors.numpy import load_file

    path = os.path.join(adapter_dir, WEIGHTS)
    verify(adapter_dir)
    # safetensors reads bfloat16 from a file but not from bytes: decompress to a scratch file.
    with open(path, "rb") as f, tempfile.TemporaryDirectory() as scratch:
        plain = os.path.join(scratch, "adapter.safetensors")
        with open(plain, "wb") as out:
            out.write(lzma.decompress(f.read()))
        tensors = load_file(plain)
    want = traverse_util.flatten_dict(dict(template), sep="/")
    missing, unexpected = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    wrong = sorted(k for k in set(want) & set(tensors)
                   if tuple(tensors[k].shape) != tuple(want[k].shape))
    if missing or unexpected or wrong:
        raise AdapterError(f"{adapter_dir}: adapter does not fit the configured model (missing "
                           f"{missing[:4]}, unexpected {unexpected[:4]}, wrong shape {wrong[:4]})")
    return traverse_util.unflatten_dict({k: np.asarray(tensors[k], np.float32) for k in want},
                                        sep="/")


def check_size(adapter_dir: str, limit_bytes: Optional[int]) -> None:
    size = os.path.getsize(os.path.join(adapter_dir, WEIGHTS))
    if limit_bytes is not None and size > limit_bytes:
        raise AdapterError(f"{adapter_dir}: {size / 1e6:.1f} MB is over the {limit_bytes / 1e6:.0f}"
                           " MB limit for a released adapter")
