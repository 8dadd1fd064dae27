"""Gemma 3 to a HF `Gemma3ForCausalLM` folder: the inverse of `hf_gemma.load_gemma_safetensors`.

Tensor names, shapes and layouts come from `hf_gemma.gemma_name_map` (each entry's inverse
transform), so import and export cannot drift apart.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any, Sequence

import numpy as np
from flax import linen as nn
from flax import traverse_util
from safetensors.numpy import save_file

from lmcor.checkpoints.errors import CheckpointMismatchError
from lmcor.checkpoints.hf_gemma import gemma_name_map
from lmcor.io_utils import default_mode
from lmcor.models.gemma import GLOBAL, LOCAL, GemmaConfig
from lmcor.models.layers import as_dtype

_DTYPES = ("float32", "bfloat16")
_WEIGHTS, _CONFIG = "model.safetensors", "config.json"


def _query_scalar(config: GemmaConfig) -> int:
    # transformers 5's strict Gemma3TextConfig types query_pre_attn_scalar as int; ours is a float.
    value = config.query_pre_attn_scalar
    if not float(value).is_integer():
        raise ValueError(f"GemmaConfig.query_pre_attn_scalar={value} is not a whole number, which "
                         "transformers' Gemma3TextConfig refuses; no HF config can hold it")
    return int(value)


def config_to_hf(config: GemmaConfig, dtype: str = "float32") -> dict:
    """A `Gemma3TextConfig` dict for `config`, readable by `hf_gemma.config_from_hf`.

    Holds both transformers 5's `rope_parameters` and the older `rope_theta`,
    `rope_local_base_freq` and `rope_scaling` (as published with Gemma 3), so either reads it.
    """
    linear = config.rope_global_scaling != 1.0
    full = {"rope_type": "linear", "factor": float(config.rope_global_scaling)} if linear \
        else {"rope_type": "default"}
    return {
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "vocab_size": config.vocab_size, "hidden_size": config.d_model,
        "intermediate_size": config.d_ff, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "query_pre_attn_scalar": _query_scalar(config),
        "sliding_window": config.sliding_window,
        "sliding_window_pattern": config.sliding_window_pattern,
        "layer_types": [config.layer_type(i) for i in range(config.num_layers)],
        "rope_parameters": {
            GLOBAL: {**full, "rope_theta": float(config.rope_global_base)},
            LOCAL: {"rope_type": "default", "rope_theta": float(config.rope_local_base)}},
        "rope_theta": float(config.rope_global_base),
        "rope_local_base_freq": float(config.rope_local_base),
        "rope_scaling": full if linear else None,
        "rms_norm_eps": config.rms_norm_eps, "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": config.final_logit_softcap, "attn_logit_softcapping": None,
        "attention_bias": False, "use_bidirectional_attention": False,
        "max_position_embeddings": config.max_position_embeddings,
        "pad_token_id": config.pad_id, "bos_token_id": config.bos_id,
        "eos_token_id": config.eos_id, "tie_word_embeddings": True,
        "dtype": dtype, "torch_dtype": dtype,  # transformers 5 reads the first, 4 the second
    }


def hf_tensors(params: Any, config: GemmaConfig, dtype: str = "float32",
               where: str = "params") -> dict[str, np.ndarray]:
    """HF-named numpy arrays from `Gemma3(config)` params (boxed or not, under "params" or not)."""
    tree = nn.unbox(params)
    tree = tree["params"] if "params" in tree else tree
    flat = traverse_util.flatten_dict(tree)
    spec = gemma_name_map(config)
    paths = {path for path, _, _ in spec.values()}
    out, mismatched = {}, []
    for name, (path, shape, transform) in spec.items():
        if path in flat:
            out[name] = np.ascontiguousarray(
                transform.inverse(np.asarray(flat[path])).astype(as_dtype(dtype)))
            if out[name].shape != shape:
                mismatched.append((f"{'/'.join(path)} as {name}", shape, out[name].shape))
    CheckpointMismatchError(
        where, missing=["/".join(p) for p in paths if p not in flat],
        unexpected=["/".join(p) for p in flat if p not in paths],
        mismatched=mismatched).raise_if_any()
    return out


def _fsync(path: str) -> None:
    # Directories too: a rename lives in the parent's entry. Some filesystems refuse those.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if os.path.isdir(path):
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not os.path.isdir(path):
            raise
    finally:
        os.close(fd)


def _write_folder(tmp: str, tensors: dict, hf_config: dict, tokenizer_files: Sequence[str]):
    save_file(tensors, os.path.join(tmp, _WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(tmp, _CONFIG), "w", encoding="utf-8") as f:
        json.dump(hf_config, f, indent=2)
    names = [_WEIGHTS, _CONFIG]
    for src in tokenizer_files:
        name = os.path.basename(os.fspath(src))
        if name in names:
            raise ValueError(f"tokenizer file {src!r}: a file named {name!r} is already in the "
                             "export (each tokenizer file needs its own name)")
        shutil.copyfile(src, os.path.join(tmp, name))
        names.append(name)
    for name in names:
        _fsync(os.path.join(tmp, name))
    _fsync(tmp)


def _swap_in(tmp: str, out_dir: str, overwrite: bool) -> None:
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir!r} is not empty; pass overwrite=True to replace it")
        old = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=".old-")
        aside = os.path.join(old, "dir")
        os.replace(out_dir, aside)
        try:
            os.replace(tmp, out_dir)
        except BaseException:
            os.replace(aside, out_dir)
            raise
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)  # POSIX rename replaces an empty directory atomically
    _fsync(os.path.dirname(out_dir))


def save_gemma_safetensors(params: Any, config: GemmaConfig, out_dir: str | os.PathLike,
                           dtype: str = "float32", tokenizer_files: Sequence[str] = (), *,
                           overwrite: bool = False) -> str:
    """Writes `out_dir` as a HF Gemma 3 folder (model.safetensors, config.json, tokenizer files).

    The folder is built beside `out_dir` and renamed into place, so a reader sees either the
    old folder or the complete new one. Returns `out_dir`.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"save_gemma_safetensors: dtype must be one of {_DTYPES}, got {dtype!r}")
    if config.quantize is not None:
        raise ValueError("save_gemma_safetensors: int8 params have no HF layout; export the float "
                         "params of a config with quantize=None")
    missing = [f for f in tokenizer_files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"tokenizer files not found: {missing}")
    target = os.path.abspath(os.fspath(out_dir))
    hf_config = config_to_hf(config, dtype)
    tensors = hf_tensors(params, config, dtype, where=f"params exported to {target}")
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(target)}.")
    try:
        _write_folder(tmp, tensors, hf_config, tokenizer_files)
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp makes it 0700
        _swap_in(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.fspath(out_dir)
