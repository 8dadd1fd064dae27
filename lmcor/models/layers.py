"""Building blocks shared by the T5 and Gemma models: RMSNorm, dense, embedding, gated MLP, attention.

Every parameter is created with `nn.with_logical_partitioning` so the one rule table in
`partitioning.py` decides its placement; parameters live in `param_dtype` and are cast to `dtype`
for compute. Norms and softmax always run in float32 because bf16 loses too much there.
"""
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

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

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        feats = (self.features,) if isinstance(self.features, int) else tuple(self.features)
        shape = tuple(x.shape[-self.in_axes:]) + feats
        if len(shape) != len(self.kernel_axes):
            raise ValueError(f"{self.name}: kernel shape {shape} vs logical axes {self.kernel_axes}")
        init = self.kernel_init or _fan_in_init(self.in_axes, len(feats))
        kernel = self.param("kernel", nn.with_logical_partitioning(init, tuple(self.kernel_axes)),
                            shape, self.param_dtype)
        contract_x = tuple(range(x.ndim - self.in_axes, x.ndim))
        contract_k = tuple(range(self.in_axes))
        # f32 accumulation, then the compute dtype: on XLA CPU a bf16-output dot is several
        # times slower than a bf16 x bf16 -> f32 one, and less precise.
        out = lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                              ((contract_x, contract_k), ((), ())), precision=self.precision,
                              preferred_element_type=jnp.float32)
        return out.astype(self.dtype)


class Embed(nn.Module):
    """Token embedding table [vocab, embed]; `attend` is the tied output projection."""
    num_embeddings: int
    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    embedding_init: Initializer = nn.initializers.normal(stddev=1.0)

    def setup(self):
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(self.embedding_init, ("vocab", "embed")),
            (self.num_embeddings, self.features), self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, ids, axis=0).astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """Logits in float32 whatever `dtype`: accumulating a bf16 product in f32 is both more
        precise and, on XLA CPU, several times faster than a bf16-output dot."""
        return jnp.einsum("...d,vd->...v", x.astype(self.dtype), self.embedding.astype(self.dtype),
                          preferred_element_type=jnp.float32)


class GatedMLP(nn.Module):
    """act(x W_gate) * (x W_up) W_down — T5 v1.1 "gated-gelu" and Gemma's GeGLU.

    Param names follow T5X (wi_0 = gate, wi_1 = up, wo = down); importers map HF names to them.
    """
    hidden: int
    activation: str = "gelu_tanh"
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        def dense(feats, axes, name):
            return Dense(feats, axes, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

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
    logits = jnp.einsum("bqkgd,bskd->bkgqs", qg, k).astype(jnp.float32)
    logits = logits.reshape(b, h, nq, k.shape[1])
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    if dropout is not None:
        weights = dropout(weights)
    weights = weights.reshape(b, kh, h // kh, nq, k.shape[1])
    return jnp.einsum("bkgqs,bskd->bqkgd", weights, v).reshape(b, nq, h, d)
