"""Gemma 3 from HF safetensors (names and config.json as published with `Gemma3ForCausalLM`).

`params_from_hf_tensors` is also the last step of the GGUF importer, which renames llama.cpp's
tensors to these HF names first, so both formats share one mapping and one mismatch check.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Callable, Mapping

import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from lmcor.checkpoints.errors import CheckpointMismatchError
from lmcor.models.gemma import GLOBAL, LOCAL, GemmaConfig
from lmcor.models.layers import as_dtype
from lmcor.checkpoints.tokenizer import SentencePieceTokenizer


@dataclasses.dataclass(frozen=True)
class Transform:
    """HF array -> our array when called; `inverse` maps back, for writing HF checkpoints."""
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return self.forward(w)


# HF name -> (our param path, HF shape, HF array -> our array)
Spec = tuple[tuple[str, ...], tuple[int, ...], Transform]
# Prefixes under which multimodal or base-model checkpoints keep the text decoder.
_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
_TIED_HEAD = "lm_head.weight"

_same = Transform(lambda w: w, lambda w: w)
_transpose = Transform(np.transpose, np.transpose)


def _split_out(*dims):
    # torch Linear [out, in] -> our kernel [in, *dims]
    return Transform(lambda w: w.T.reshape(w.shape[1], *dims),
                     lambda k: k.reshape(k.shape[0], -1).T)


def _merge_in(*dims):
    # torch Linear [out, in=prod(dims)] -> our kernel [*dims, out]
    return Transform(lambda w: w.T.reshape(*dims, w.shape[0]),
                     lambda k: k.reshape(-1, k.shape[-1]).T)


def gemma_name_map(c: GemmaConfig) -> dict[str, Spec]:
    """Every tensor a `Gemma3ForCausalLM` checkpoint must hold, keyed by its HF name."""
    d, hd, q, kv = c.d_model, c.head_dim, c.num_heads, c.num_kv_heads
    spec: dict[str, Spec] = {
        "model.embed_tokens.weight": (("embedder", "embedding"), (c.vocab_size, d), _same),
        "model.norm.weight": (("final_norm", "scale"), (d,), _same),
    }
    for i in range(c.num_layers):
        hf, ours = f"model.layers.{i}.", (f"layers_{i}",)
        attn = ours + ("attn",)
        layer = {
            "self_attn.q_proj.weight": (attn + ("q", "kernel"), (q * hd, d), _split_out(q, hd)),
            "self_attn.k_proj.weight": (attn + ("k", "kernel"), (kv * hd, d), _split_out(kv, hd)),
            "self_attn.v_proj.weight": (attn + ("v", "kernel"), (kv * hd, d), _split_out(kv, hd)),
            "self_attn.o_proj.weight": (attn + ("o", "kernel"), (d, q * hd), _merge_in(q, hd)),
            "self_attn.q_norm.weight": (attn + ("q_norm", "scale"), (hd,), _same),
            "self_attn.k_norm.weight": (attn + ("k_norm", "scale"), (hd,), _same),
            "mlp.gate_proj.weight": (ours + ("mlp", "wi_0", "kernel"), (c.d_ff, d), _transpose),
            "mlp.up_proj.weight": (ours + ("mlp", "wi_1", "kernel"), (c.d_ff, d), _transpose),
            "mlp.down_proj.weight": (ours + ("mlp", "wo", "kernel"), (d, c.d_ff), _transpose),
            "input_layernorm.weight": (ours + ("pre_attention_norm", "scale"), (d,), _same),
            "post_attention_layernorm.weight": (ours + ("post_attention_norm", "scale"), (d,), _same),
            "pre_feedforward_layernorm.weight": (ours + ("pre_ffw_norm", "scale"), (d,), _same),
            "post_feedforward_layernorm.weight": (ours + ("post_ffw_norm", "scale"), (d,), _same),
        }
        spec.update({hf + k: v for k, v in layer.items()})
    return spec


def canonical_name(name: str) -> str:
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return "model." + name[len(prefix):]
    return name


def params_from_hf_tensors(tensors: Mapping[str, Callable[[], np.ndarray] | np.ndarray],
                           shapes: Mapping[str, tuple[int, ...]], config: GemmaConfig,
                           source: str) -> dict:
    """Unboxed `params` collection for `Gemma3(config)` (pass as-is or as {"params": ...}).

    `tensors` maps HF names to arrays or zero-argument loaders, so nothing is read before the
    whole checkpoint has been checked against `shapes`.
    """
    spec = gemma_name_map(config)
    names = {n for n in shapes if n != _TIED_HEAD}  # the head is the tied embedding in Gemma 3
    CheckpointMismatchError(
        source, missing=[n for n in spec if n not in names],
        unexpected=[n for n in names if n not in spec],
        mismatched=[(n, s[1], tuple(shapes[n])) for n, s in spec.items()
                    if n in names and tuple(shapes[n]) != s[1]]).raise_if_any()
    params: dict = {}
    dtype = as_dtype(config.param_dtype)
    for name, (path, _, transform) in spec.items():
        value = tensors[name]
        value = np.asarray(value() if callable(value) else value)
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = jnp.asarray(transform(value), dtype=dtype)
    return params


def _rope_settings(hf: dict) -> dict:
    """Local/global RoPE bases and the global linear scaling, from either config format."""
    rope = hf.get("rope_parameters") or {}
    full, sliding = rope.get(GLOBAL) or {}, rope.get(LOCAL) or {}
    scaling = hf.get("rope_scaling") or full
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in ("default", "linear"):
        raise ValueError(f"config.json: rope type {kind!r} is not supported (default or linear)")
    return {"rope_global_base": float(full.get("rope_theta", hf.get("rope_theta", 1e6))),
            "rope_local_base": float(sliding.get("rope_theta",
                                                 hf.get("rope_local_base_freq", 1e4))),
            "rope_global_scaling": float(scaling.get("factor", 1.0)) if kind == "linear" else 1.0}


def config_from_hf(hf: dict, where: str = "config.json") -> GemmaConfig:
    """GemmaConfig from a HF `Gemma3TextConfig` dict (or a `Gemma3Config` with `text_config`)."""
    hf = hf.get("text_config", hf)
    if hf.get("attn_logit_softcapping") is not None:
        raise ValueError(f"{where}: field attn_logit_softcapping is set; Gemma 3 has none and "
                         "lmcor's Gemma does not implement it")
    act = hf.get("hidden_activation", "gelu_pytorch_tanh")
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ValueError(f"{where}: field hidden_activation={act!r}; expected gelu_pytorch_tanh")
    try:
        eos = hf.get("eos_token_id", 1)
        return GemmaConfig(
            vocab_size=hf["vocab_size"], d_model=hf["hidden_size"],
            d_ff=hf["intermediate_size"], num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"], num_kv_heads=hf["num_key_value_heads"],
            head_dim=hf.get("head_dim", 256),
            query_pre_attn_scalar=hf.get("query_pre_attn_scalar", 256),
            sliding_window=hf.get("sliding_window", 4096),
            sliding_window_pattern=hf.get("sliding_window_pattern", 6),
            layer_types=hf.get("layer_types"), rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            final_logit_softcap=hf.get("final_logit_softcapping"),
            max_position_embeddings=hf.get("max_position_embeddings", 131_072),
            pad_id=hf.get("pad_token_id", 0) or 0, bos_id=hf.get("bos_token_id", 2),
            eos_id=eos[0] if isinstance(eos, list) else eos, **_rope_settings(hf))
    except KeyError as err:
        raise ValueError(f"{where}: missing field {err.args[0]}") from None


def _safetensors_index(directory: str) -> dict[str, tuple[str, tuple[int, ...], str]]:
    files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {directory!r}")
    index = {}
    for path in files:
        with safe_open(path, framework="np") as f:
            for key in f.keys():
                index[canonical_name(key)] = (path, tuple(f.get_slice(key).get_shape()), key)
    return index


def load_gemma_safetensors(directory: str) -> tuple[GemmaConfig, dict]:
    """(config, params) from a HF Gemma 3 folder: config.json plus *.safetensors shards."""
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found (a HF Gemma 3 folder needs config.json)")
    with open(config_path, encoding="utf-8") as f:
        config = config_from_hf(json.load(f), config_path)
    index = _safetensors_index(directory)

    def loader(name):
        path, _, key = index[name]

        def load():
            with safe_open(path, framework="np") as f:
                return f.get_tensor(key)
        return load

    params = params_from_hf_tensors({n: loader(n) for n in index},
                                    {n: s for n, (_, s, _) in index.items()}, config, directory)
    return config, params


def gemma_tokenizer(directory: str) -> SentencePieceTokenizer:
    """The folder's own SentencePiece model (`tokenizer.model`), as HF publishes Gemma 3."""
    path = os.path.join(directory, "tokenizer.model")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found; lmcor reads Gemma's SentencePiece model file")
    with open(path, "rb") as f:
        return SentencePieceTokenizer(f.read(), add_bos=True)
