"""Building blocks shared by the T5 and Gemma models: RMSNorm, dense, embedding, gated MLP, attention.

Every parameter is created with `nn.with_logical_partitioning` so the one rule table in
`partitioning.py` decides its placement; parameters live in `param_dtype` and are cast to `dtype`
for compute. Norms and softmax always run in float32 because bf16 loses too much there.

`quantize="int8"` (decoding only) stores dense kernels and the embedding as int8 with one float32
scale per output channel, and quantizes each input position to int8 on the fly (one scale per
position), so the matmul runs int8 x int8 -> int32. `quantize_int8` turns float params into
that layout. The matmuls, the int8 layout and the LoRA product are `xla_tuning`'s primitives.
"""
import math
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from lmcor.models import xla_tuning

Dtype = Any
Initializer = Callable[..., jax.Array]


def as_dtype(value) -> jnp.dtype:
    """Accepts "bfloat16", jnp.bfloat16, np.dtype, ... so configs can come from gin strings."""
    return jnp.dtype(value)


def as_variables(params) -> dict:
    """Flax variables from either a bare `params` tree (what loaders return) or `{"params": ...}`."""
    return params if "params" in params else {"params": params}


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Logical sharding hint for an activation; a no-op outside a mesh/rules context."""
    return nn.with_logical_constraint(x, tuple(axes))


def gelu_tanh(x: jax.Array) -> jax.Array:
    # HF "gelu_new" / "gelu_pytorch_tanh": T5 v1.1 and Gemma were trained with the tanh approximation.
    return jax.nn.gelu(x, approximate=True)


ACTIVATIONS = {"gelu_tanh": gelu_tanh, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "relu": jax.nn.relu, "silu": jax.nn.silu}


class RMSNorm(nn.Module):
    """Root-mean-square norm without mean subtraction or bias (T5LayerNorm, Gemma RMSNorm).

    `scale_offset=1.0` with zero init gives Gemma's `x * (1 + w)` parameterisation.
    """
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scale_offset: float = 0.0
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.zeros if self.scale_offset else nn.initializers.ones
        scale = self.param("scale", nn.with_logical_partitioning(init, (self.axis_name,)),
                           (x.shape[-1],), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
        return (y * (scale.astype(jnp.float32) + self.scale_offset)).astype(self.dtype)


def _fan_in_init(n_in: int, n_out: int, scale: float = 1.0) -> Initializer:
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal",
                                            in_axis=tuple(range(n_in)),
                                            out_axis=tuple(range(n_in, n_in + n_out)))


def quantize_int8(params, template):
    """Float params -> the `quantize="int8"` layout given by `template` (its shapes, e.g. from
    `jax.eval_shape` of the quantized module's init).

    Each `kernel` with a `kernel_scale` sibling becomes one int8 [out, in] matrix (input dims and
    output dims each flattened) with a scale per output channel; each `embedding` [vocab, embed]
    gets a scale per row. Scales are max|w| / 127, so every weight is off by at most half a step.
    """
    def channel(w, reduce_axes):
        w32 = jnp.asarray(w, jnp.float32)
        scale = jnp.max(jnp.abs(w32), axis=reduce_axes) / 127.0
        scale = jnp.where(scale == 0, 1.0, scale)
        keep = jnp.expand_dims(scale, reduce_axes)
        return jnp.clip(jnp.round(w32 / keep), -127, 127).astype(jnp.int8), scale

    def walk(p, t):
        if not isinstance(t, dict):
            return p
        out = {k: walk(p[k], t[k]) for k in p if k not in ("kernel", "embedding")}
        if "kernel_scale" in t:  # stored as one [out, in] matrix
            matrix = xla_tuning.int8_kernel_matrix(jnp.asarray(p["kernel"]), t["kernel"].shape)
            out["kernel"], out["kernel_scale"] = channel(matrix, (1,))
        elif "embedding_scale" in t:
            out["embedding"], out["embedding_scale"] = channel(p["embedding"], (1,))
        else:
            out.update({k: p[k] for k in ("kernel", "embedding") if k in p})
        return out

    return walk(dict(params), template)


def _int8_param(module, name, shape, axes, scale_shape, scale_axes):
    """Quantized parameter pair; init gives zeros (quantized weights come from `quantize_int8`)."""
    q = module.param(name, nn.with_logical_partitioning(nn.initializers.zeros, tuple(axes)),
                     shape, jnp.int8)
    scale = module.param(f"{name}_scale",
                         nn.with_logical_partitioning(nn.initializers.ones, tuple(scale_axes)),
                         scale_shape, jnp.float32)
    return q, scale


class Dense(nn.Module):
    """Bias-free linear map contracting the last `in_axes` input dims into `features`.

    The kernel has shape `x.shape[-in_axes:] + features` and logical axes `kernel_axes`, so
    e.g. an attention output projection is `Dense(d_model, ("heads", "head_dim", "embed"), in_axes=2)`.
    """
    features: int | Sequence[int]
    kernel_axes: Sequence[str]
    in_axes: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer | None = None
    precision: Any = None
    quantize: Optional[str] = None  # "int8", or None for float weights
    # LoRA: y = x W + scale * (x A) B with A [in..., r] and B [r, out...]; B starts at zero, so
    # a fresh adapter leaves the layer exactly as it was.
    lora_rank: int = 0
    lora_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        feats = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        shape = tuple(x.shape[-self.in_axes:]) + feats
        if len(shape) != len(self.kernel_axes):
            raise ValueError(f"{self.name}: kernel shape {shape} vs logical axes {self.kernel_axes}")
        lead = x.shape[:x.ndim - self.in_axes]
        if self.quantize == "int8":
            layout = xla_tuning.int8_kernel_layout(shape, self.in_axes, self.kernel_axes)
            q, scale = _int8_param(self, "kernel", *layout)
            out = xla_tuning.int8_matmul(x.reshape(lead + (q.shape[1],)), q, scale)
            return out.reshape(lead + feats).astype(self.dtype)
        init = self.kernel_init or _fan_in_init(self.in_axes, len(feats))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, tuple(self.kernel_axes)),
                            shape, self.param_dtype)
        # Accumulated in float32, then cast to the compute dtype.
        contract = (tuple(range(len(lead), x.ndim)), tuple(range(self.in_axes)))
        out = xla_tuning.dot_f32(x.astype(self.dtype), kernel.astype(self.dtype), contract,
                                 self.precision)
        if self.lora_rank:
            out = out + self._lora(x, shape, feats, contract)
        return out.astype(self.dtype)

    def _lora(self, x, shape, feats, contract):
        r, n_in = self.lora_rank, self.in_axes
        a = self.param("lora_a", nn.with_logical_partitioning(
            _fan_in_init(n_in, 1), tuple(self.kernel_axes[:n_in]) + ("lora",)),
            shape[:n_in] + (r,), self.param_dtype)
        b = self.param("lora_b", nn.with_logical_partitioning(
            nn.initializers.zeros, ("lora",) + tuple(self.kernel_axes[n_in:])),
            (r,) + feats, self.param_dtype)
        n_rows, n_out = math.prod(x.shape[:x.ndim - n_in]), math.prod(feats)
        out = xla_tuning.lora_product(x.astype(self.dtype).reshape(n_rows, -1),
                                      a.astype(self.dtype).reshape(-1, r),
                                      b.astype(self.dtype).reshape(r, n_out))
        return self.lora_scale * out.reshape(x.shape[:x.ndim - n_in] + feats)


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; `attend` is the tied output projection."""
    num_embeddings: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(stddev=1.0)
    quantize: Optional[str] = None  # "int8", or None for float weights

    def setup(self):
        shape = (self.num_embeddings, self.features)
        if self.quantize == "int8":
            self.embedding, self.embedding_scale = _int8_param(
                self, "embedding", shape, ("vocab", "embed"), shape[:1], ("vocab",))
            return
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
            shape, self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        rows = jnp.take(self.embedding, ids, axis=0)
        if self.quantize == "int8":
            rows = rows.astype(jnp.float32) * jnp.take(self.embedding_scale, ids, axis=0)[..., None]
        return rows.astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits in float32 whatever `dtype`."""
        if self.quantize == "int8":
            return xla_tuning.int8_matmul(x, self.embedding, self.embedding_scale)
        return xla_tuning.dot_rows_f32(x.astype(self.dtype), self.embedding.astype(self.dtype))


def lora_settings(lora: tuple, name: str) -> tuple:
    """(rank, scale) of projection `name` in a ((name, rank, scale), ...) table; (0, 1) if absent."""
    return next(((r, a) for n, r, a in lora if n == name), (0, 1.0))


class GatedMLP(nn.Module):
    """act(x W_gate) * (x W_up) W_down — T5 v1.1 "gated-gelu" and Gemma's GeGLU.

    Param names follow T5X (wi_0 = gate, wi_1 = up, wo = down); importers map HF names to them.
    """
    hidden: int
    activation: str = "gelu_tanh"
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    quantize: Optional[str] = None  # "int8", or None for float weights
    lora: tuple = ()  # ((param name, rank, scale), ...) for the projections that carry adapters

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        def dense(feats, axes, name):
            rank, scale = lora_settings(self.lora, name)
            return Dense(feats, axes, dtype=self.dtype, param_dtype=self.param_dtype,
                         quantize=self.quantize, lora_rank=rank, lora_scale=scale, name=name)

        gate = ACTIVATIONS[self.activation](dense(self.hidden, ("embed", "mlp"), "wi_0")(x))
        h = gate * dense(self.hidden, ("embed", "mlp"), "wi_1")(x)
        h = constrain(h, ("batch", "length", "mlp") if h.ndim == 3 else ("batch", "mlp"))
        h = nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
        return dense(x.shape[-1], ("mlp", "embed"), "wo")(h)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, bias: jax.Array | None = None,
                          mask: jax.Array | None = None, dropout: Callable | None = None) -> jax.Array:
    """softmax(q k^T + bias, masked) v with q [B,Q,H,D], k/v [B,K,KH,D] (KH divides H: grouped heads).

    No 1/sqrt(D) scaling here: callers fold their own scale into q. `bias` and `mask` broadcast
    to [B,H,Q,K]. Fully masked rows give a uniform (finite) distribution instead of NaN.
    """
    b, nq, h, d = q.shape
    kh = k.shape[2]
    # Grouped heads without repeating k/v: with a KV cache, a repeat copies the whole cache
    # `groups` times per layer per step, which costs more than the attention itself.
    qg = q.reshape(b, nq, kh, h // kh, d)
    # float32 results: XLA CPU runs bf16 x bf16 -> f32 dots fast and bf16-output ones slowly.
    logits = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32)
    logits = logits.reshape(b, h, nq, k.shape[1])
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    if dropout is not None:
        weights = dropout(weights)
    weights = weights.reshape(b, kh, h // kh, nq, k.shape[1])
    out = jnp.einsum("bkgqs,bskd->bqkgd", weights, v, preferred_element_type=jnp.float32)
    return out.astype(v.dtype).reshape(b, nq, h, d)
