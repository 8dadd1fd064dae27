"""Gemma 3 text decoder in Flax, with a static-shape KV cache and the decode adapter `GemmaLM`.

Follows transformers' `Gemma3ForCausalLM` (the parity reference in tests/test_gemma.py):
grouped-query attention with q/k RMSNorm, queries scaled by query_pre_attn_scalar**-0.5,
interleaved sliding-window and global layers with their own RoPE bases, GeGLU MLP, pre- and
post-norms, embeddings scaled by sqrt(d_model), output tied to the embedding.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from lmcor.models import layers
from lmcor.models.layers import (Dense, Embed, GatedMLP, RMSNorm, as_dtype, as_variables,
                                 constrain)
from lmcor.models.xla_tuning import cache_write

GLOBAL, LOCAL = "full_attention", "sliding_attention"  # HF's layer_types spelling
LORA_TARGETS = ("q", "k", "v", "o", "wi_0", "wi_1", "wo")

# Text parts of the published HF configs (google/gemma-3-*); `tiny` is for tests only.
_PRESETS = {
    "tiny": dict(vocab_size=512, d_model=64, d_ff=128, num_layers=7, num_heads=4, num_kv_heads=2,
                 head_dim=16, query_pre_attn_scalar=16, sliding_window=4),
    "270m": dict(vocab_size=262_144, d_model=640, d_ff=2048, num_layers=18, num_heads=4,
                 num_kv_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512),
    "1b": dict(vocab_size=262_144, d_model=1152, d_ff=6912, num_layers=26, num_heads=4,
               num_kv_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512),
    "4b": dict(vocab_size=262_208, d_model=2560, d_ff=10_240, num_layers=34, num_heads=8,
               num_kv_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
               rope_global_scaling=8.0, max_position_embeddings=131_072),
    "12b": dict(vocab_size=262_208, d_model=3840, d_ff=15_360, num_layers=48, num_heads=16,
                num_kv_heads=8, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024,
                rope_global_scaling=8.0, max_position_embeddings=131_072),
    "27b": dict(vocab_size=262_208, d_model=5376, d_ff=21_504, num_layers=62, num_heads=32,
                num_kv_heads=16, head_dim=128, query_pre_attn_scalar=168, sliding_window=1024,
                rope_global_scaling=8.0, max_position_embeddings=131_072),
}


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    vocab_size: int = 262_144
    d_model: int = 640
    d_ff: int = 2048
    num_layers: int = 18
    num_heads: int = 4
    num_kv_heads: int = 1
    head_dim: int = 256
    query_pre_attn_scalar: float = 256.0
    sliding_window: int = 512
    sliding_window_pattern: int = 6  # every 6th layer is global unless layer_types says otherwise
    layer_types: tuple[str, ...] | None = None
    rope_local_base: float = 10_000.0
    rope_global_base: float = 1_000_000.0
    rope_global_scaling: float = 1.0  # HF "linear" rope scaling of the global layers
    rms_norm_eps: float = 1e-6
    final_logit_softcap: float | None = None
    max_position_embeddings: int = 32_768
    pad_id: int = 0
    eos_id: int = 1
    bos_id: int = 2
    dtype: Any = "float32"
    param_dtype: Any = "float32"
    quantize: str | None = None  # "int8": decode with int8 weights (see `quantize_params`)
    # LoRA adapters (training): rank 0 means none. Targets name our projections (HF's
    # q/k/v/o_proj, gate_proj = wi_0, up_proj = wi_1, down_proj = wo); layers below
    # `lora_from_layer` carry none, so a frozen bottom stack stays the base model's.
    lora_rank: int = 0
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = LORA_TARGETS
    lora_from_layer: int = 0

    def __post_init__(self):
        if self.quantize not in (None, "int8"):
            raise ValueError(f"GemmaConfig.quantize must be None or 'int8', got {self.quantize!r}")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        bad = sorted(set(self.lora_targets) - set(LORA_TARGETS))
        if self.lora_rank < 0 or bad or not 0 <= self.lora_from_layer <= self.num_layers:
            raise ValueError(f"GemmaConfig: lora_rank={self.lora_rank} (>= 0), lora_targets "
                             f"unknown {bad} (choose from {LORA_TARGETS}), lora_from_layer="
                             f"{self.lora_from_layer} (0..{self.num_layers})")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"GemmaConfig: quantize={self.quantize!r}; expected 'int8' or None")
        if self.lora_rank and self.quantize:
            raise ValueError("GemmaConfig: LoRA trains float weights; merge adapters "
                             "(lmcor.training.peft) before quantizing")
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
            bad = [t for t in self.layer_types if t not in (GLOBAL, LOCAL)]
            if len(self.layer_types) != self.num_layers or bad:
                raise ValueError(f"GemmaConfig.layer_types must list {self.num_layers} of "
                                 f"{GLOBAL!r}/{LOCAL!r}, got {self.layer_types}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"GemmaConfig: num_heads={self.num_heads} is not a multiple of "
                             f"num_kv_heads={self.num_kv_heads}")

    @classmethod
    def preset(cls, name: str, **overrides) -> "GemmaConfig":
        if name not in _PRESETS:
            raise ValueError(f"unknown Gemma preset {name!r}; choose from {sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})

    def lora(self, layer: int) -> tuple:
        """((projection, rank, scale), ...) of the adapters layer `layer` carries."""
        if not self.lora_rank or layer < self.lora_from_layer:
            return ()
        return tuple((t, self.lora_rank, self.lora_alpha / self.lora_rank)
                     for t in self.lora_targets)

    def layer_type(self, i: int) -> str:
        if self.layer_types is not None:
            return self.layer_types[i]
        return GLOBAL if (i + 1) % self.sliding_window_pattern == 0 else LOCAL


def _rope(x: jax.Array, positions: jax.Array, base: float, scaling: float) -> jax.Array:
    """Rotary embedding on [B, L, H, D], halves rotated (HF `rotate_half`, llama.cpp NEOX)."""
    dim = x.shape[-1]
    inv_freq = 1.0 / (base ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)) / scaling
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, L, D/2]
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _gemma_norm(cfg: GemmaConfig, **kwargs):
    # Gemma's RMSNorm scales by (1 + w); HF and GGUF checkpoints store w (after our -1 for GGUF).
    return functools.partial(RMSNorm, epsilon=cfg.rms_norm_eps, dtype=as_dtype(cfg.dtype),
                             param_dtype=as_dtype(cfg.param_dtype), scale_offset=1.0, **kwargs)


class _LayerPart(nn.Module):
    """A decoder layer or its attention: global or sliding, with the layer's LoRA adapters."""
    config: GemmaConfig
    is_global: bool
    lora: tuple = ()


class GemmaAttention(_LayerPart):
    @nn.compact
    def __call__(self, x, positions, mask, kv_cache=None, write_index=None):
        cfg = self.config
        dt, pdt = as_dtype(cfg.dtype), as_dtype(cfg.param_dtype)
        def dense(features, axes, name, **kwargs):
            rank, scale = layers.lora_settings(self.lora, name)
            return Dense(features, axes, dtype=dt, param_dtype=pdt,
                         quantize=cfg.quantize, lora_rank=rank, lora_scale=scale,
                         name=name, **kwargs)

        norm = _gemma_norm(cfg, axis_name="head_dim")
        q = dense((cfg.num_heads, cfg.head_dim), ("embed", "heads", "head_dim"), "q")(x)
        k = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), "k")(x)
        v = dense((cfg.num_kv_heads, cfg.head_dim), ("embed", "kv_heads", "head_dim"), "v")(x)
        q, k = norm(name="q_norm")(q), norm(name="k_norm")(k)
        base = cfg.rope_global_base if self.is_global else cfg.rope_local_base
        scaling = cfg.rope_global_scaling if self.is_global else 1.0
        q = _rope(q, positions, base, scaling) * jnp.asarray(cfg.query_pre_attn_scalar ** -0.5, dt)
        k = _rope(k, positions, base, scaling)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        new_cache = None
        if kv_cache is not None:
            k = cache_write(kv_cache["k"], k, write_index)
            v = cache_write(kv_cache["v"], v, write_index)
            new_cache = {"k": k, "v": v}
        k = constrain(k, ("batch", "kv_length", "kv_heads", "head_dim"))
        v = constrain(v, ("batch", "kv_length", "kv_heads", "head_dim"))
        out = layers.dot_product_attention(q, k, v, mask=mask)
        out = dense(cfg.d_model, ("heads", "head_dim", "embed"), "o", in_axes=2)(out)
        return out, new_cache


class GemmaBlock(_LayerPart):
    @nn.compact
    def __call__(self, x, positions, mask, kv_cache=None, write_index=None):
        cfg = self.config
        norm = _gemma_norm(cfg)
        h, new_cache = GemmaAttention(cfg, self.is_global, self.lora, name="attn")(
            norm(name="pre_attention_norm")(x), positions, mask, kv_cache, write_index)
        x = x + norm(name="post_attention_norm")(h)
        h = GatedMLP(cfg.d_ff, "gelu_tanh", dtype=as_dtype(cfg.dtype),
                     param_dtype=as_dtype(cfg.param_dtype), quantize=cfg.quantize,
                     lora=self.lora, name="mlp")(
            norm(name="pre_ffw_norm")(x))
        x = x + norm(name="post_ffw_norm")(h)
        return constrain(x, ("batch", "length", "embed")), new_cache


def _attention_masks(cfg, q_pos, q_seg, k_pos, k_seg, q_prefix=None):
    """[B,1,Q,K] masks for global and sliding layers: same segment, causal, inside the window.

    `q_prefix` [B,Q] (0 = none) names, per query, one more segment it reads: a prefix shared by
    several continuations in one row (lmcor.training.grouped_rows). Their positions start after
    the prefix's, so each continuation sees exactly what it would see alone after the prefix."""
    same = q_seg[:, :, None] == k_seg[:, None, :]
    if q_prefix is not None:
        same = same | (q_prefix[:, :, None] == k_seg[:, None, :])
    allowed = same & (k_seg[:, None, :] != 0) & (k_pos[:, None, :] <= q_pos[:, :, None])
    local = allowed & (q_pos[:, :, None] - k_pos[:, None, :] < cfg.sliding_window)
    return {GLOBAL: allowed[:, None], LOCAL: local[:, None]}


def init_cache(config: GemmaConfig, batch: int, max_len: int) -> dict:
    """Empty KV cache: every leaf is batch-major; `slot_pos` -1 marks slots holding no token."""
    shape = (batch, max_len, config.num_kv_heads, config.head_dim)
    dt = as_dtype(config.dtype)
    return {"layers": [{"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt)}
                       for _ in range(config.num_layers)],
            "slot_pos": jnp.full((batch, max_len), -1, jnp.int32),
            "index": jnp.zeros((batch,), jnp.int32),
            "next_pos": jnp.zeros((batch,), jnp.int32)}


class Gemma3(nn.Module):
    config: GemmaConfig

    def setup(self):
        cfg = self.config
        self.embedder = Embed(cfg.vocab_size, cfg.d_model, dtype=as_dtype(cfg.dtype),
                              param_dtype=as_dtype(cfg.param_dtype),
                              embedding_init=nn.initializers.normal(stddev=0.02),
                              quantize=cfg.quantize)
        self.blocks = [GemmaBlock(cfg, cfg.layer_type(i) == GLOBAL, cfg.lora(i),
                                  name=f"layers_{i}") for i in range(cfg.num_layers)]
        self.final_norm = _gemma_norm(cfg)()

    def __call__(self, tokens, *, positions=None, segment_ids=None, cache=None,
                 deterministic=True):
        hidden, new_cache = self.hidden_states(tokens, positions=positions,
                                               segment_ids=segment_ids, cache=cache)
        logits = self.logits(hidden)
        return logits if cache is None else (logits, new_cache)

    def hidden_states(self, tokens, *, positions=None, segment_ids=None, cache=None,
                      start_layer: int = 0, stop_layer: int | None = None, start=None,
                      prefix_ids=None):
        """Final-normed hidden states [B,L,D] (and the updated cache when one is given).

        `prefix_ids` [B,L]: per token, the segment of a shared prefix it also attends to (0:
        none; see `_attention_masks`).

        `stop_layer=N` returns the un-normed stream after the first N layers instead, and
        `start=` that stream with `start_layer=N` continues from it: a frozen bottom stack's
        output can be computed once and reused (lmcor.training.frozen_cache). Without a cache.
        """
        cfg = self.config
        batch, length = tokens.shape[:2]
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        if cache is None:
            masks = _attention_masks(cfg, positions, segment_ids, positions, segment_ids,
                                     prefix_ids)
        else:
            # Every valid token of a row is one sequence; padding gets slot_pos -1 and is never seen.
            slot_pos = cache_write(cache["slot_pos"], jnp.where(segment_ids != 0, positions, -1),
                                   cache["index"])
            ones = jnp.ones_like(slot_pos)
            masks = _attention_masks(cfg, positions, jnp.ones_like(positions), slot_pos,
                                     jnp.where(slot_pos >= 0, ones, 0))
        if start is None:
            x = self.embedder(tokens) * jnp.asarray(math.sqrt(cfg.d_model), as_dtype(cfg.dtype))
        else:
            x = start.astype(as_dtype(cfg.dtype))
        x = constrain(x, ("batch", "length", "embed"))
        new_layers = []
        stop = cfg.num_layers if stop_layer is None else stop_layer
        for i in range(start_layer, stop):
            layer_cache = None if cache is None else cache["layers"][i]
            write_index = None if cache is None else cache["index"]
            x, c = self.blocks[i](x, positions, masks[cfg.layer_type(i)], layer_cache,
                                  write_index)
            new_layers.append(c)
        if stop_layer is not None:
            return x, None
        x = self.final_norm(x)
        if cache is None:
            return x, None
        return x, {"layers": new_layers, "slot_pos": slot_pos, "index": cache["index"] + length,
                   "next_pos": positions[:, -1] + 1}

    def logits(self, hidden):
        """Tied LM head: one matmul against the embedding table, float32 out."""
        logits = self.embedder.attend(hidden).astype(jnp.float32)
        if self.config.final_logit_softcap is not None:
            cap = self.config.final_logit_softcap
            logits = jnp.tanh(logits / cap) * cap
        axes = ("batch", "length", "vocab") if logits.ndim == 3 else ("batch", "vocab")
        return constrain(logits, axes)


def quantize_params(config: GemmaConfig, params) -> dict:
    """Float Gemma params -> int8 kernels and embedding for `config` with quantize="int8".

    Per output channel scales for the weights, per token scales for the activations (taken at
    run time): W8A8, for decoding only; training needs float params.
    """
    if config.quantize != "int8":
        raise ValueError("quantize_params needs a config with quantize='int8'")
    dummy = jnp.zeros((1, 1), jnp.int32)
    template = jax.eval_shape(lambda: Gemma3(config).init(jax.random.key(0), dummy))["params"]
    return layers.quantize_int8(params, nn.unbox(template))


class GemmaLM:
    """Decode adapter (contract A): prefill a left-padded batch, then one token per `step`.

    With a `vocab_map` (lmcor.data.task_vocab.TaskVocab) the module has the task's compact
    vocabulary; `lmcor.decode.decode_batch` maps prompts into it and the output back, outside the
    jitted loop. Special ids are the same in both spaces.
    """

    def __init__(self, model: Gemma3 | GemmaConfig, vocab_map=None):
        self.module = model if isinstance(model, Gemma3) else Gemma3(model)
        cfg = self.module.config
        self.eos_id, self.pad_id, self.vocab_size = cfg.eos_id, cfg.pad_id, cfg.vocab_size
        self.vocab_map = vocab_map

    def prefill(self, params, batch, max_new_tokens: int):
        tokens = jnp.asarray(batch["tokens"], jnp.int32)
        mask = jnp.asarray(batch["mask"], bool)
        return _prefill(self.module, as_variables(params), tokens, mask, int(max_new_tokens))

    def step(self, params, tokens, cache):
        return _step(self.module, as_variables(params), jnp.asarray(tokens, jnp.int32), cache)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _prefill(module, params, tokens, mask, max_new_tokens):
    batch, length = tokens.shape
    positions = jnp.maximum(jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1, 0)
    cache = init_cache(module.config, batch, length + max_new_tokens)
    hidden, cache = module.apply(params, tokens, positions=positions,
                                 segment_ids=mask.astype(jnp.int32), cache=cache,
                                 method=Gemma3.hidden_states)
    # Left padding puts every row's last prompt token in the last column: only it needs logits.
    logits = module.apply(params, hidden[:, -1], method=Gemma3.logits)
    return logits, cache


@functools.partial(jax.jit, static_argnums=(0,))
def _step(module, params, tokens, cache):
    hidden, cache = module.apply(params, tokens[:, None], positions=cache["next_pos"][:, None],
                                 cache=cache, method=Gemma3.hidden_states)
    return module.apply(params, hidden[:, 0], method=Gemma3.logits), cache
