"""T5 v1.1 encoder-decoder (gated-GELU, RMSNorm, bucketed relative position bias, untied head).

Token id 0 is padding. Packed batches pass segment ids (0 = padding) and per-segment positions;
attention never crosses a segment boundary and relative positions come from `positions`.
`T5LM` is the decode adapter used by `lmcor.decode` (encode once, then a KV-cached decoder step).
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from lmcor.models.layers import (Dense, Embed, GatedMLP, RMSNorm, as_dtype, as_variables,
                                 constrain, dot_product_attention)

# Published T5 v1.1 sizes (google/t5-v1_1-*); "tiny" is for tests only.
_PRESETS = {
    "tiny": dict(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_heads=4,
                 num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0),
    "small": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_heads=6,
                  num_encoder_layers=8, num_decoder_layers=8),
    "base": dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_heads=12,
                 num_encoder_layers=12, num_decoder_layers=12),
    "large": dict(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_heads=16,
                  num_encoder_layers=24, num_decoder_layers=24),
    "xl": dict(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_heads=32,
               num_encoder_layers=24, num_decoder_layers=24),
    "xxl": dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_heads=64,
                num_encoder_layers=24, num_decoder_layers=24),
}


@dataclasses.dataclass(frozen=True)
class T5Config:
    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_heads: int
    num_encoder_layers: int
    num_decoder_layers: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    pad_id: int = 0
    eos_id: int = 1
    decoder_start_id: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    # Recompute each layer's activations in the backward pass: memory for large models on TPU/GPU.
    remat: bool = False

    def __post_init__(self):
        # Gin and CLI flags give dtypes as strings; normalise so equality and hashing behave.
        object.__setattr__(self, "dtype", as_dtype(self.dtype))
        object.__setattr__(self, "param_dtype", as_dtype(self.param_dtype))

    @classmethod
    def preset(cls, name: str = "base", **overrides) -> "T5Config":
        if name not in _PRESETS:
            raise ValueError(f"unknown T5 preset {name!r}; choose from {sorted(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})


def relative_position_bucket(rel: jax.Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> jax.Array:
    """Mesh-TF/HF bucketing of `key_pos - query_pos`: exact for small distances, log-spaced beyond."""
    buckets = jnp.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = (rel > 0).astype(rel.dtype) * num_buckets
        rel = jnp.abs(rel)
    else:
        rel = -jnp.minimum(rel, 0)
    max_exact = num_buckets // 2
    # log(0) would be -inf; those entries take the exact branch anyway.
    scaled = (jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / max_exact)
              / np.log(max_distance / max_exact))
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(rel.dtype)
    large = jnp.minimum(large, num_buckets - 1)
    return buckets + jnp.where(rel < max_exact, rel, large)


class RelativePositionBias(nn.Module):
    """Per-head scalar bias from bucketed relative positions; one table per stack, shared by
    all of its layers (HF keeps it in block 0 only)."""
    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
        c = self.config
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                                         ("relpos_buckets", "heads")),
            (c.relative_attention_num_buckets, c.num_heads), c.param_dtype)
        rel = k_pos[:, None, :].astype(jnp.int32) - q_pos[:, :, None].astype(jnp.int32)
        idx = relative_position_bucket(rel, self.bidirectional, c.relative_attention_num_buckets,
                                       c.relative_attention_max_distance)
        return jnp.take(table, idx, axis=0).astype(c.dtype).transpose(0, 3, 1, 2)  # [B,H,Q,K]


class Attention(nn.Module):
    """Multi-head attention without 1/sqrt(d) scaling (T5 folds it into the query init)."""
    config: T5Config

    def setup(self):
        c = self.config
        kw = dict(dtype=c.dtype, param_dtype=c.param_dtype)
        q_init = nn.initializers.variance_scaling(1.0 / c.d_kv, "fan_in", "truncated_normal",
                                                  in_axis=0, out_axis=(1, 2))
        heads = ((c.num_heads, c.d_kv), ("embed", "heads", "head_dim"))
        self.query = Dense(*heads, kernel_init=q_init, **kw)
        self.key = Dense(*heads, **kw)
        self.value = Dense(*heads, **kw)
        self.out = Dense(c.d_model, ("heads", "head_dim", "embed"), in_axes=2, **kw)
        self.dropout = nn.Dropout(c.dropout_rate)

    def kv(self, x: jax.Array):
        return self.key(x), self.value(x)

    def attend(self, x, k, v, bias, mask, deterministic: bool):
        drop = None if deterministic else (lambda w: self.dropout(w, deterministic=False))
        y = dot_product_attention(self.query(x), k, v, bias=bias, mask=mask, dropout=drop)
        return self.out(constrain(y, ("batch", "length", "heads", "head_dim")))

    def __call__(self, x, x_kv, bias, mask, deterministic: bool):
        k, v = self.kv(x_kv)
        return self.attend(x, k, v, bias, mask, deterministic)


def _norm(c: T5Config, **kw) -> RMSNorm:
    return RMSNorm(c.layer_norm_epsilon, c.dtype, c.param_dtype, **kw)


def _mlp(c: T5Config, **kw) -> GatedMLP:
    return GatedMLP(c.d_ff, "gelu_tanh", c.dropout_rate, c.dtype, c.param_dtype, **kw)


class EncoderLayer(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x, bias, mask, deterministic: bool):
        c = self.config
        drop = nn.Dropout(c.dropout_rate, deterministic=deterministic)
        h = _norm(c, name="pre_attention_layer_norm")(x)
        h = Attention(c, name="attention")(h, h, bias, mask, deterministic)
        x = constrain(x + drop(h), ("batch", "length", "embed"))
        h = _mlp(c, name="mlp")(_norm(c, name="pre_mlp_layer_norm")(x), deterministic)
        return constrain(x + drop(h), ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
    config: T5Config

    def setup(self):
        c = self.config
        self.pre_self_attention_layer_norm = _norm(c)
        self.self_attention = Attention(c)
        self.pre_cross_attention_layer_norm = _norm(c)
        self.encoder_decoder_attention = Attention(c)
        self.pre_mlp_layer_norm = _norm(c)
        self.mlp = _mlp(c)
        self.drop = nn.Dropout(c.dropout_rate)

    def _add(self, x, h, deterministic):
        return constrain(x + self.drop(h, deterministic=deterministic), ("batch", "length", "embed"))

    def _cross_and_mlp(self, x, k, v, cross_mask, deterministic):
        h = self.pre_cross_attention_layer_norm(x)
        h = self.encoder_decoder_attention.attend(h, k, v, None, cross_mask, deterministic)
        x = self._add(x, h, deterministic)
        return self._add(x, self.mlp(self.pre_mlp_layer_norm(x), deterministic), deterministic)

    def __call__(self, x, encoded, bias, mask, cross_mask, deterministic: bool):
        h = self.pre_self_attention_layer_norm(x)
        x = self._add(x, self.self_attention(h, h, bias, mask, deterministic), deterministic)
        k, v = self.cross_kv(encoded)
        return self._cross_and_mlp(x, k, v, cross_mask, deterministic)

    def cross_kv(self, encoded):
        return self.encoder_decoder_attention.kv(encoded)

    def step(self, x, cache: dict, index, bias, mask, cross_mask):
        """One token per row: writes its K/V at `index` into the cache, attends to the cache."""
        h = self.pre_self_attention_layer_norm(x)
        k, v = self.self_attention.kv(h)
        rows = jnp.arange(x.shape[0])
        cache = dict(cache, k=cache["k"].at[rows, index].set(k[:, 0]),
                     v=cache["v"].at[rows, index].set(v[:, 0]))
        x = self._add(x, self.self_attention.attend(h, cache["k"], cache["v"], bias, mask, True), True)
        return self._cross_and_mlp(x, cache["cross_k"], cache["cross_v"], cross_mask, True), cache


class Encoder(nn.Module):
    config: T5Config

    @nn.compact
    def __call__(self, x, positions, mask, deterministic: bool):
        c = self.config
        bias = RelativePositionBias(c, bidirectional=True, name="relpos_bias")(positions, positions)
        x = nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)
        # static_argnums counts `self` as 0: argument 4 is `deterministic`, a Python bool.
        layer = nn.remat(EncoderLayer, static_argnums=(4,)) if c.remat else EncoderLayer
        for i in range(c.num_encoder_layers):
            x = layer(c, name=f"layers_{i}")(x, bias, mask, deterministic)
        x = _norm(c, name="encoder_norm")(x)
        return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
    config: T5Config

    def setup(self):
        c = self.config
        self.relpos_bias = RelativePositionBias(c, bidirectional=False)
        layer = nn.remat(DecoderLayer, static_argnums=(6,)) if c.remat else DecoderLayer
        self.layers = [layer(c) for _ in range(c.num_decoder_layers)]
        self.decoder_norm = _norm(c)
        self.logits_dense = Dense(c.vocab_size, ("embed", "vocab"), dtype=c.dtype,
                                  param_dtype=c.param_dtype)
        self.drop = nn.Dropout(c.dropout_rate)

    def _logits(self, x, deterministic):
        x = self.drop(self.decoder_norm(x), deterministic=deterministic)
        return constrain(self.logits_dense(x).astype(jnp.float32), ("batch", "length", "vocab"))

    def __call__(self, x, encoded, positions, mask, cross_mask, deterministic: bool):
        bias = self.relpos_bias(positions, positions)
        x = self.drop(x, deterministic=deterministic)
        for layer in self.layers:
            x = layer(x, encoded, bias, mask, cross_mask, deterministic)
        return self._logits(x, deterministic)

    def init_cache(self, encoded, enc_valid, max_len: int) -> dict:
        c, b = self.config, encoded.shape[0]
        empty = jnp.zeros((b, max_len, c.num_heads, c.d_kv), c.dtype)
        layers = []
        for layer in self.layers:
            ck, cv = layer.cross_kv(encoded)
            layers.append({"k": empty, "v": empty, "cross_k": ck, "cross_v": cv})
        return {"index": jnp.zeros((b,), jnp.int32), "enc_valid": enc_valid, "layers": layers}

    def step(self, x, cache: dict):
        index = cache["index"]
        max_len = cache["layers"][0]["k"].shape[1]
        bias = self.relpos_bias(index[:, None], jnp.arange(max_len)[None])
        mask = (jnp.arange(max_len)[None, :] <= index[:, None])[:, None, None, :]
        cross_mask = cache["enc_valid"][:, None, None, :]
        new_layers = []
        for layer, lc in zip(self.layers, cache["layers"]):
            x, lc = layer.step(x, lc, index, bias, mask, cross_mask)
            new_layers.append(lc)
        cache = dict(cache, index=index + 1, layers=new_layers)
        return self._logits(x, True)[:, 0], cache


def _positions(tokens, positions):
    return jnp.arange(tokens.shape[1])[None] if positions is None else positions


def _same_segment(q_seg, k_seg):
    return q_seg[:, None, :, None] == k_seg[:, None, None, :]


class T5(nn.Module):
    config: T5Config

    def setup(self):
        c = self.config
        self.token_embedder = Embed(c.vocab_size, c.d_model, c.dtype, c.param_dtype)
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)

    def encode(self, encoder_tokens, *, encoder_segment_ids=None, encoder_positions=None,
               deterministic: bool = True):
        valid = encoder_tokens != self.config.pad_id
        mask = valid[:, None, None, :]
        if encoder_segment_ids is not None:
            mask = mask & _same_segment(encoder_segment_ids, encoder_segment_ids)
        x = constrain(self.token_embedder(encoder_tokens), ("batch", "length", "embed"))
        return self.encoder(x, _positions(encoder_tokens, encoder_positions), mask, deterministic)

    def decode(self, encoded, encoder_tokens, decoder_input_tokens, *, encoder_segment_ids=None,
               decoder_segment_ids=None, decoder_positions=None, deterministic: bool = True):
        # Decoder inputs start with decoder_start_id == pad_id, so padding cannot be read off the
        # tokens: right padding is harmless under the causal mask, packing uses segment ids.
        t = decoder_input_tokens.shape[1]
        mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
        cross_mask = (encoder_tokens != self.config.pad_id)[:, None, None, :]
        if (decoder_segment_ids is None) != (encoder_segment_ids is None):
            raise ValueError("packed T5 inputs need both encoder_segment_ids and decoder_segment_ids")
        if decoder_segment_ids is not None:
            mask = mask & _same_segment(decoder_segment_ids, decoder_segment_ids)
            cross_mask = cross_mask & _same_segment(decoder_segment_ids, encoder_segment_ids)
        x = constrain(self.token_embedder(decoder_input_tokens), ("batch", "length", "embed"))
        return self.decoder(x, encoded, _positions(decoder_input_tokens, decoder_positions), mask,
                            cross_mask, deterministic)

    def __call__(self, encoder_tokens, decoder_input_tokens, *, encoder_segment_ids=None,
                 decoder_segment_ids=None, encoder_positions=None, decoder_positions=None,
                 deterministic: bool = True):
        encoded = self.encode(encoder_tokens, encoder_segment_ids=encoder_segment_ids,
                              encoder_positions=encoder_positions, deterministic=deterministic)
        return self.decode(encoded, encoder_tokens, decoder_input_tokens,
                           encoder_segment_ids=encoder_segment_ids,
                           decoder_segment_ids=decoder_segment_ids,
                           decoder_positions=decoder_positions, deterministic=deterministic)

    def init_cache(self, encoder_tokens, max_len: int) -> dict:
        """Encodes once and precomputes every layer's cross-attention K/V."""
        encoded = self.encode(encoder_tokens)
        return self.decoder.init_cache(encoded, encoder_tokens != self.config.pad_id, max_len)

    def decode_step(self, tokens, cache: dict):
        x = self.token_embedder(tokens[:, None])
        return self.decoder.step(x, cache)


class T5LM:
    """Decode adapter (see lmcor.decode): prefill = encode + the decoder_start step;
    step = one cached decoder step."""
    is_encdec = True

    def __init__(self, model_or_config: "T5 | T5Config"):
        self.module = model_or_config if isinstance(model_or_config, T5) else T5(model_or_config)
        c = self.module.config
        self.eos_id, self.pad_id, self.vocab_size = c.eos_id, c.pad_id, c.vocab_size

    def prefill(self, params, batch: dict, max_new_tokens: int):
        if "encoder_tokens" not in batch:
            raise ValueError("T5LM.prefill needs batch['encoder_tokens'] [B,S]; "
                             f"got keys {sorted(batch)}")
        tokens = jnp.asarray(batch["encoder_tokens"], jnp.int32)
        # +1 so a caller may still feed the last generated token without overrunning the cache.
        cache = self.module.apply(as_variables(params), tokens, max_new_tokens + 1,
                                 method=T5.init_cache)
        start = jnp.full((tokens.shape[0],), self.module.config.decoder_start_id, jnp.int32)
        return self.step(params, start, cache)

    def step(self, params, tokens, cache):
        return self.module.apply(as_variables(params), jnp.asarray(tokens, jnp.int32), cache,
                                method=T5.decode_step)
