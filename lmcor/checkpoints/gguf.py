"""Gemma 3 from a llama.cpp GGUF file: config and tokenizer from its metadata, dequantized weights.

Tensors are renamed to their HF names and handed to the safetensors importer's mapping, so the two
formats share one name table and one `CheckpointMismatchError` check. transformers' own GGUF
loader is the reference in tests/test_gemma_real.py.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any

import numpy as np
from tqdm import tqdm

from lmcor.checkpoints.gguf_file import GgufFile
from lmcor.checkpoints.hf_gemma import params_from_hf_tensors
from lmcor.models.gemma import GemmaConfig
from lmcor.checkpoints.tokenizer import GgufVocab, SentencePieceTokenizer

SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q5_0", "Q4_K", "Q6_K")
_ARCH = "gemma3"
_GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight",
                 "output_norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm", "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}
_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


def _reader(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path!r} not found")
    return _cached_reader(os.path.abspath(path), os.path.getmtime(path))


@functools.lru_cache(maxsize=2)
def _cached_reader(path: str, mtime: float) -> GgufFile:
    # The weights and the tokenizer are usually loaded together: they share one parse.
    del mtime  # part of the cache key only: a rewritten file is parsed again
    try:
        return GgufFile.read(path)
    except OSError as err:
        raise ValueError(f"{path}: not a readable GGUF file ({err})") from err


def read_metadata(path: str, prefixes: tuple[str, ...] = ("",)) -> dict[str, Any]:
    """Metadata key -> Python value (arrays as lists) for keys starting with one of `prefixes`."""
    return {k: v for k, v in _reader(path).fields.items() if k.startswith(prefixes)}


def hf_name(gguf_name: str) -> str:
    """The HF `Gemma3ForCausalLM` name of a llama.cpp tensor (unknown names pass through)."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    m = _BLOCK.fullmatch(gguf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.weight"
    return gguf_name


def config_from_metadata(meta: dict[str, Any], vocab_size: int, where: str) -> GemmaConfig:
    arch = meta.get("general.architecture")
    if arch != _ARCH:
        raise ValueError(f"{where}: field general.architecture is {arch!r}; expected {_ARCH!r}")

    def get(key, default=None):
        if f"{_ARCH}.{key}" not in meta and default is None:
            raise ValueError(f"{where}: GGUF metadata lacks field {_ARCH}.{key}")
        return meta.get(f"{_ARCH}.{key}", default)

    d_model, heads, layers = int(get("embedding_length")), int(get("attention.head_count")), \
        int(get("block_count"))
    head_dim = int(get("attention.key_length"))
    scaling_type = get("rope.scaling.type", "none")
    if scaling_type not in ("none", "linear"):
        raise ValueError(f"{where}: field {_ARCH}.rope.scaling.type={scaling_type!r} unsupported")
    return GemmaConfig(
        vocab_size=vocab_size, d_model=d_model, d_ff=int(get("feed_forward_length")),
        num_layers=layers, num_heads=heads, num_kv_heads=int(get("attention.head_count_kv")),
        head_dim=head_dim,
        # GGUF has no query_pre_attn_scalar; llama.cpp derives it the same way (27B is the
        # only Gemma 3 whose scalar is d_model / heads instead of head_dim).
        query_pre_attn_scalar=d_model // heads if layers == 62 else head_dim,
        sliding_window=int(get("attention.sliding_window")),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_global_base=float(get("rope.freq_base", 1e6)),
        rope_global_scaling=float(get("rope.scaling.factor", 1.0)) if scaling_type == "linear"
        else 1.0,
        max_position_embeddings=int(get("context_length", 131_072)),
        bos_id=int(meta.get("tokenizer.ggml.bos_token_id", 2)),
        eos_id=int(meta.get("tokenizer.ggml.eos_token_id", 1)),
        pad_id=int(meta.get("tokenizer.ggml.padding_token_id", 0)))


def dequantize(tensor, where: str) -> np.ndarray:
    """float32 array of a GGUF tensor, numpy (row-major, HF) shape."""
    from gguf import quants  # noqa: PLC0415

    kind = tensor.tensor_type.name
    if kind not in SUPPORTED_TYPES:
        raise ValueError(f"{where}: tensor {tensor.name} has type {kind}; supported: "
                         f"{', '.join(SUPPORTED_TYPES)}")
    values = quants.dequantize(tensor.data, tensor.tensor_type)
    return np.asarray(values, np.float32).reshape(tuple(int(n) for n in reversed(tensor.shape)))


def _loader(tensor, hf: str, where: str):
    def load():
        value = dequantize(tensor, where)
        # llama.cpp's converter stores Gemma norms as (1 + w); our RMSNorm adds the 1 itself.
        return value - np.float32(1.0) if hf.endswith("norm.weight") else value
    return load


def load_gemma_gguf(path: str) -> tuple[GemmaConfig, dict]:
    """(config, unboxed params) from a Gemma 3 GGUF; every tensor is dequantized to float32."""
    path = os.fspath(path)
    reader = _reader(path)
    meta = {k: v for k, v in reader.fields.items()
            if not k.startswith("tokenizer.ggml.") or k.endswith("_id")}
    tensors = {hf_name(t.name): t for t in reader.tensors}
    embed = tensors.get("model.embed_tokens.weight")
    vocab_size = int(embed.shape[-1]) if embed is not None else 0
    config = config_from_metadata(meta, vocab_size, path)
    loaders = {name: _loader(t, name, path) for name, t in tensors.items()}
    shapes = {name: tuple(int(n) for n in reversed(t.shape)) for name, t in tensors.items()}
    progress = tqdm(total=len(loaders), desc="dequantizing GGUF", unit="tensor", leave=False)

    def counted(load):
        def run():
            value = load()
            progress.update(1)
            return value
        return run

    try:
        params = params_from_hf_tensors({n: counted(f) for n, f in loaders.items()}, shapes,
                                        config, path)
    finally:
        progress.close()
    return config, params


@functools.lru_cache(maxsize=4)
def gemma_tokenizer(gguf_path: str) -> SentencePieceTokenizer:
    """The tokenizer described by the file's `tokenizer.ggml.*` metadata (contract B)."""
    path = os.fspath(gguf_path)
    meta = read_metadata(path, ("tokenizer.ggml.", "general.architecture"))
    vocab = GgufVocab.from_metadata(meta, path)
    if str(meta.get("general.architecture")).startswith("gemma"):
        vocab = dataclasses.replace(vocab, rank_by_position=True)
    return SentencePieceTokenizer.from_gguf_vocab(vocab)
