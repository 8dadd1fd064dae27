"""Loads a Hugging Face T5 v1.1 checkpoint (`T5ForConditionalGeneration`, safetensors).

HF stores linear weights as [out, in]; ours are [in, out], with attention projections split
into [embed, heads, head_dim] (and [heads, head_dim, embed] for the output projection).
Every tensor's name and shape is checked before any data is read, and all problems are reported
in one `CheckpointMismatchError`.
"""
import contextlib
import glob
import json
import logging
import os
from typing import Callable

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from lmcor.checkpoints.errors import CheckpointMismatchError
from lmcor.models.t5 import T5Config

# Written by some HF versions but not part of the model: tied copies of `shared.weight`, and a
# relative-bias table in the first cross-attention that T5 never uses.
_EMBED_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)

Spec = tuple[tuple[str, ...], tuple[int, ...], Callable[[np.ndarray], np.ndarray]]


def _same(w):
    return w


def _linear(w):
    return w.T


def _attention(hf: str, ours: tuple[str, ...], c: T5Config) -> dict[str, Spec]:
    inner = c.num_heads * c.d_kv
    split_in = lambda w: w.T.reshape(c.d_model, c.num_heads, c.d_kv)  # noqa: E731
    split_out = lambda w: w.T.reshape(c.num_heads, c.d_kv, c.d_model)  # noqa: E731
    spec = {f"{hf}.{p}.weight": (ours + (name, "kernel"), (inner, c.d_model), split_in)
            for p, name in (("q", "query"), ("k", "key"), ("v", "value"))}
    spec[f"{hf}.o.weight"] = (ours + ("out", "kernel"), (c.d_model, inner), split_out)
    return spec


def _mlp(hf: str, ours: tuple[str, ...], c: T5Config) -> dict[str, Spec]:
    return {f"{hf}.wi_0.weight": (ours + ("wi_0", "kernel"), (c.d_ff, c.d_model), _linear),
            f"{hf}.wi_1.weight": (ours + ("wi_1", "kernel"), (c.d_ff, c.d_model), _linear),
            f"{hf}.wo.weight": (ours + ("wo", "kernel"), (c.d_model, c.d_ff), _linear)}


def _norm(hf: str, ours: tuple[str, ...], c: T5Config) -> dict[str, Spec]:
    return {f"{hf}.weight": (ours + ("scale",), (c.d_model,), _same)}


def _stack(side: str, c: T5Config) -> dict[str, Spec]:
    """HF names of one stack; decoder layers have self-, cross-attention and MLP sub-layers."""
    n = c.num_encoder_layers if side == "encoder" else c.num_decoder_layers
    spec = {f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight":
            ((side, "relpos_bias", "rel_embedding"),
             (c.relative_attention_num_buckets, c.num_heads), _same)}
    spec.update(_norm(f"{side}.final_layer_norm", (side, f"{side}_norm"), c))
    for i in range(n):
        hf, ours = f"{side}.block.{i}.layer", (side, f"layers_{i}")
        if side == "encoder":
            sub = [("SelfAttention", "attention", "pre_attention_layer_norm")]
        else:
            sub = [("SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                   ("EncDecAttention", "encoder_decoder_attention", "pre_cross_attention_layer_norm")]
        for j, (hf_att, our_att, our_norm) in enumerate(sub):
            spec.update(_attention(f"{hf}.{j}.{hf_att}", ours + (our_att,), c))
            spec.update(_norm(f"{hf}.{j}.layer_norm", ours + (our_norm,), c))
        j = len(sub)
        spec.update(_mlp(f"{hf}.{j}.DenseReluDense", ours + ("mlp",), c))
        spec.update(_norm(f"{hf}.{j}.layer_norm", ours + ("pre_mlp_layer_norm",), c))
    return spec


def t5_name_map(c: T5Config) -> dict[str, Spec]:
    """HF tensor name -> (our param path, expected HF shape, HF->ours transform)."""
    spec = {"shared.weight": (("token_embedder", "embedding"), (c.vocab_size, c.d_model), _same),
            "lm_head.weight": (("decoder", "logits_dense", "kernel"), (c.vocab_size, c.d_model),
                               _linear)}
    spec.update(_stack("encoder", c))
    spec.update(_stack("decoder", c))
    return spec


def _safetensors_files(dir_or_file: str) -> list[str]:
    if os.path.isfile(dir_or_file):
        return [dir_or_file]
    if not os.path.isdir(dir_or_file):
        raise FileNotFoundError(f"no T5 checkpoint at {dir_or_file!r}")
    index = os.path.join(dir_or_file, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(dir_or_file, s) for s in shards]
    files = sorted(glob.glob(os.path.join(dir_or_file, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {dir_or_file!r}")
    return files


def _tensor_index(files: list[str]) -> dict[str, tuple[str, tuple[int, ...], str]]:
    """name -> (file, shape, stored key), read from headers only."""
    index = {}
    for path in files:
        with safe_open(path, framework="np") as f:
            for name in f.keys():
                index[name] = (path, tuple(f.get_slice(name).get_shape()), name)
    return index


def _resolve_embedding(index: dict, source: str) -> None:
    # safetensors stores one copy of tied tensors; which name survives depends on the HF version.
    if "shared.weight" not in index:
        for alias in _EMBED_ALIASES:
            if alias in index:
                index["shared.weight"] = index[alias]
                break
    # transformers 5 ties T5's LM head to the embedding unless the two differ, and then saves only
    # `shared.weight`; such a file means "head = embedding", which is what its own model computes.
    if "lm_head.weight" not in index and "shared.weight" in index:
        logging.info("%s has no lm_head.weight; using the tied embedding as the LM head", source)
        index["lm_head.weight"] = index["shared.weight"]


def _check(index: dict, spec: dict, source: str) -> None:
    missing = [n for n in spec if n not in index]
    unexpected = [n for n in index if n not in spec and n not in _EMBED_ALIASES + _IGNORED]
    mismatched = [(n, s[1], index[n][1]) for n, s in spec.items()
                  if n in index and index[n][1] != s[1]]
    CheckpointMismatchError(source, missing, unexpected, mismatched).raise_if_any()


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _config_path(dir_or_file: str) -> str:
    folder = dir_or_file if os.path.isdir(dir_or_file) else os.path.dirname(dir_or_file)
    return os.path.join(folder, "config.json")


def _hf_field(cfg: dict, key: str, path: str, default=None):
    if cfg.get(key) is not None:  # old HF configs write null for "same as the encoder"
        return cfg[key]
    if default is None:
        raise ValueError(f"{path}: field {key!r} is missing")
    return default


def t5_config_from_hf(dir_or_file: str, **overrides) -> T5Config:
    """Reads an HF `config.json` (next to the weights) into a T5Config; only T5 v1.1 is accepted."""
    path = _config_path(str(dir_or_file))
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read T5 config {path}: {e}") from e
    if cfg.get("feed_forward_proj") != "gated-gelu":
        raise ValueError(f"{path}: field 'feed_forward_proj' is {cfg.get('feed_forward_proj')!r}; "
                         "only T5 v1.1 ('gated-gelu') is supported")
    # v1.1 does not rescale decoder outputs; HF < 5 marks it by untied embeddings, HF 5 explicitly.
    if cfg.get("scale_decoder_outputs", cfg.get("tie_word_embeddings", True)):
        raise ValueError(f"{path}: fields 'scale_decoder_outputs'/'tie_word_embeddings' describe the "
                         "original T5 (tied, rescaled head); only T5 v1.1 is supported")
    get = lambda key, default=None: _hf_field(cfg, key, path, default)  # noqa: E731
    fields = dict(
        vocab_size=get("vocab_size"), d_model=get("d_model"), d_kv=get("d_kv"), d_ff=get("d_ff"),
        num_heads=get("num_heads"), num_encoder_layers=get("num_layers"),
        num_decoder_layers=get("num_decoder_layers", get("num_layers")),
        relative_attention_num_buckets=get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=get("relative_attention_max_distance", 128),
        dropout_rate=get("dropout_rate", 0.1), layer_norm_epsilon=get("layer_norm_epsilon", 1e-6),
        pad_id=get("pad_token_id", 0), eos_id=get("eos_token_id", 1),
        decoder_start_id=get("decoder_start_token_id", get("pad_token_id", 0)))
    return T5Config(**{**fields, **overrides})


def load_t5_safetensors(dir_or_file: str, config: T5Config | None = None) -> dict:
    """Returns the unboxed `params` collection for `T5(config)` (use as `{"params": params}`).

    Without `config`, it is read from the `config.json` beside the weights (`t5_config_from_hf`).
    """
    config = config or t5_config_from_hf(str(dir_or_file))
    files = _safetensors_files(str(dir_or_file))
    index = _tensor_index(files)
    _resolve_embedding(index, str(dir_or_file))
    spec = t5_name_map(config)
    _check(index, spec, str(dir_or_file))
    params: dict = {}
    with contextlib.ExitStack() as stack:
        handles = {path: stack.enter_context(safe_open(path, framework="np")) for path in files}
        for name, (our_path, _, transform) in spec.items():
            file, _, key = index[name]
            value = np.asarray(handles[file].get_tensor(key))
            _set(params, our_path, jnp.asarray(transform(value), dtype=config.param_dtype))
    return params
