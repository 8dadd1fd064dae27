"""Pretrained weights from a checkpoint spec, for every caller (`lmcor generate`, the JAX sampling
backend, the trainer's pretrained starts), and the decode adapter of a model.

A Gemma 3 spec is one of
    gguf:PATH            a llama.cpp GGUF file (lmcor.checkpoints.gguf)
    safetensors:DIR      a HF folder: config.json, *.safetensors, tokenizer.model (hf_gemma)
    PATH                 a path that exists: a `.gguf` file, else a HF folder
    "" or "gemma3-270m"  the bundled Gemma 3 270M Q4_K_M (lmcor.checkpoints.bundled)
A T5 v1.1 spec is the path of a HF safetensors folder or file (lmcor.checkpoints.hf_t5).
"""
import dataclasses
import functools
import os
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from lmcor.checkpoints import gguf, hf_gemma, hf_t5
from lmcor.checkpoints.bundled import BUNDLED, bundled_gemma_gguf_path
from lmcor.decode.adapter import DecodeAdapter
from lmcor.models.gemma import Gemma3, GemmaConfig, GemmaLM, quantize_params
from lmcor.models.t5 import T5, T5Config, T5LM
from lmcor.checkpoints.tokenizer import SentencePieceTokenizer

FORMATS = ("gguf", "safetensors")


class GemmaCheckpoint(NamedTuple):
    format: str  # one of FORMATS
    path: str


def gemma_checkpoint(spec: Union[str, GemmaCheckpoint],
                     where: str = "checkpoint") -> GemmaCheckpoint:
    """The format and path a Gemma spec names (see the module doc); `where` names the setting
    the spec came from in the error for one that names nothing."""
    if isinstance(spec, GemmaCheckpoint):
        return spec
    if spec in ("", BUNDLED):
        return GemmaCheckpoint("gguf", bundled_gemma_gguf_path())
    kind, sep, path = spec.partition(":")
    if sep and kind in FORMATS and path:
        return GemmaCheckpoint(kind, path)
    if os.path.exists(spec):
        return GemmaCheckpoint("gguf" if spec.endswith(".gguf") else "safetensors", spec)
    raise ValueError(f"{where}={spec!r}: expected gguf:PATH or safetensors:DIR, the path of a "
                     f".gguf file or of a HF Gemma 3 folder, or {BUNDLED!r}")


def load_gemma(spec: Union[str, GemmaCheckpoint],
               where: str = "checkpoint") -> tuple[GemmaConfig, dict]:
    """(config, unboxed params) as the checkpoint holds them; GGUF tensors are dequantized to
    float32."""
    ckpt = gemma_checkpoint(spec, where)
    if ckpt.format == "gguf":
        return gguf.load_gemma_gguf(ckpt.path)
    return hf_gemma.load_gemma_safetensors(ckpt.path)


def gemma_tokenizer(spec: Union[str, GemmaCheckpoint],
                    where: str = "checkpoint") -> SentencePieceTokenizer:
    """The checkpoint's own tokenizer: a GGUF's metadata, or a HF folder's tokenizer.model."""
    ckpt = gemma_checkpoint(spec, where)
    importer = gguf if ckpt.format == "gguf" else hf_gemma
    return importer.gemma_tokenizer(ckpt.path)


def load_gemma_lm(spec: Union[str, GemmaCheckpoint] = "", dtype: str = "float32",
                  quantize: Optional[str] = None, where: str = "checkpoint"):
    """(decode adapter, params, tokenizer) of a Gemma checkpoint, ready to decode.

    Weights are cast to `dtype` once, up front, so that no decode step pays for casting them;
    `quantize="int8"` stores the matmul weights as int8 (`gemma.quantize_params`), and `dtype`
    then applies to everything else (activations, norms, KV cache). The last load is kept: a
    process that decodes twice (tests, notebooks) reads the weights once.
    """
    return _decoding_model(gemma_checkpoint(spec, where), dtype, quantize)


@functools.lru_cache(maxsize=1)
def _decoding_model(ckpt: GemmaCheckpoint, dtype: str, quantize: Optional[str]):
    config, params = load_gemma(ckpt)
    if dtype != "float32":
        params = jax.tree.map(lambda x: jnp.asarray(x, dtype), params)
        config = dataclasses.replace(config, dtype=dtype, param_dtype=dtype)
    if quantize:
        config = dataclasses.replace(config, quantize=quantize)
        params = quantize_params(config, params)
    return decode_adapter(config), params, gemma_tokenizer(ckpt)


def load_t5(spec: str, config: Optional[T5Config] = None) -> tuple[T5Config, dict]:
    """(config, unboxed params) of a HF T5 v1.1 checkpoint; without `config`, the one in the
    config.json beside the weights."""
    config = config or hf_t5.t5_config_from_hf(spec)
    return config, hf_t5.load_t5_safetensors(spec, config)


def decode_adapter(model, vocab_map=None) -> DecodeAdapter:
    """The decode adapter of a T5 or Gemma 3 module or config (a decode adapter is returned as
    it is). `vocab_map`: the TaskVocab of a Gemma model cut to a task's vocabulary."""
    if isinstance(model, DecodeAdapter):
        adapter = model
    elif isinstance(model, (T5, T5Config)):
        adapter = T5LM(model)
    elif isinstance(model, (Gemma3, GemmaConfig)):
        return GemmaLM(model, vocab_map=vocab_map)
    else:
        raise TypeError(f"cannot decode with a {type(model).__name__}; pass a T5/Gemma3 module "
                        "or config, or a decode adapter")
    if vocab_map is not None:
        raise ValueError(f"a task vocabulary is for Gemma models, not a {type(model).__name__}")
    return adapter
