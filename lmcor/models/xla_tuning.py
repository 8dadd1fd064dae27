"""The ops of the model code whose form was picked by timing on XLA's CPU backend.

The layer and model modules call these by name; each one is written the way XLA CPU runs it
fastest. All were measured on the development machine (`lscpu`: Intel Xeon, 2 vCPUs, L2 4 MiB
x2, L3 260 MiB, AVX-512 without AVX512-BF16 or AMX; this jaxlib's default YNNPACK dots) from
`jax.profiler` traces of Gemma 3 270M decoding and LoRA training and from
`benchmarks/matmul_dtypes.py` (docs/sampling.md, docs/training.md). Other backends were not
measured: on them these are correct forms, not tuned ones.

- `dot_f32`, `dot_rows_f32`: bf16 operands accumulate into a float32 result. XLA CPU runs a
  bf16-output dot several times slower than bf16 x bf16 -> f32, and it is less precise.
- `int8_kernel_layout`, `int8_kernel_matrix`, `int8_matmul`: the W8A8 decode path. XLA CPU's
  int8 x int8 -> int32 matmul is about twice as fast as its bf16 x bf16 -> f32 one at decode
  batch sizes, where the matmuls are compute-bound (the LM head's bf16 matmul reads its weights
  at ~14 GB/s, half of what a plain sum streams).
- `lora_product`: (x a) b with its backward pass written out.
- `cache_write`: a KV-cache write whose form depends on the cache's dtype.
"""
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

# The LM head's rescale splits its width into rows of this many logits (see `int8_matmul`).
_RESCALE_BLOCK = 512


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dot_f32(x: jax.Array, y: jax.Array, contract=((1,), (0,)), precision=None) -> jax.Array:
    """`lax.dot_general` contracting `contract` (no batch dims), accumulated and returned in
    float32 whatever the operands' dtype.

    The backward pass is written out so that its dots also take the operands' dtype in and give
    float32 out: autodiff's transposes return the operands' dtype, which for bf16 operands is
    the slow bf16-output dot (a bf16 LoRA step's backward ran no faster than float32's)."""
    return _dot(x, y, contract, precision)


def _dot(x, y, contract, precision):
    return lax.dot_general(x, y, (contract, ((), ())), precision=precision,
                           preferred_element_type=jnp.float32)


def _dot_f32_forward(x, y, contract, precision):
    return _dot(x, y, contract, precision), (x, y)


def _dot_f32_backward(contract, precision, res, g):
    x, y = res
    (cx, cy) = contract
    kx = [d for d in range(x.ndim) if d not in cx]  # x's kept dims: g's leading ones
    ky = [d for d in range(y.ndim) if d not in cy]
    gx_dims, gy_dims = list(range(len(kx))), list(range(len(kx), g.ndim))
    # A dot's result dims are the lhs's free dims, then the rhs's, each in its own order; the
    # contracted dims pair up as cx[i] <-> cy[i]. Each result is permuted back to its operand.
    by_cy = [cx[i] for i in sorted(range(len(cy)), key=lambda i: cy[i])]
    by_cx = [cy[i] for i in sorted(range(len(cx)), key=lambda i: cx[i])]
    dx = jnp.transpose(_dot(g.astype(y.dtype), y, (gy_dims, ky), precision),
                       _inverse(kx + by_cy))
    dy = jnp.transpose(_dot(x, g.astype(x.dtype), (kx, gx_dims), precision),
                       _inverse(by_cx + ky))
    return dx.astype(x.dtype), dy.astype(y.dtype)


def _inverse(order):
    out = [0] * len(order)
    for i, d in enumerate(order):
        out[d] = i
    return out


dot_f32.defvjp(_dot_f32_forward, _dot_f32_backward)


def dot_rows_f32(x: jax.Array, rows: jax.Array) -> jax.Array:
    """x [..., d] against every row of rows [v, d] -> [..., v] in float32 (a tied LM head)."""
    return jnp.einsum("...d,vd->...v", x, rows, preferred_element_type=jnp.float32)


def int8_kernel_layout(shape: Sequence[int], in_axes: int, kernel_axes: Sequence[str]):
    """(shape, logical axes, scale shape, scale axes) of the stored int8 form of a float kernel
    of `shape` whose first `in_axes` dims are contracted.

    The kernel is stored as one 2-D [out, in] matrix: XLA CPU's int8 matmul is ~1.4x faster with
    the contraction on the kernel's minor dim, and a kernel with several output or input dims
    (attention q/k/v/o) would be re-laid-out (copied) on every call. Each flattened dim keeps the
    logical name of its outermost dim, so a `heads` split still falls between heads. An
    embedding table [vocab, embed] already has this layout.
    """
    n_out, n_in = math.prod(shape[in_axes:]), math.prod(shape[:in_axes])
    out_axis = kernel_axes[in_axes]
    return (n_out, n_in), (out_axis, kernel_axes[0]), (n_out,), (out_axis,)


def int8_kernel_matrix(kernel: jax.Array, stored_shape: Sequence[int]) -> jax.Array:
    """A float kernel [in..., out...] as the [out, in] matrix of `int8_kernel_layout`."""
    return kernel.reshape(tuple(stored_shape)[::-1]).T


def int8_matmul(x: jax.Array, q: jax.Array, q_scale: jax.Array) -> jax.Array:
    """x [..., in] . dequant(q [out, in]) in float32.

    x is quantized on the fly with one symmetric scale per position; the int8 x int8 product
    accumulates in int32, and both scales are applied to the result. A product at least 65,536
    wide (an LM head: [N, 262144]) is rescaled as [N, width / 512, 512], which XLA CPU splits
    across cores: about 1.6x faster than the flat pass, with the same products.
    """
    x32 = x.astype(jnp.float32)
    x_scale = jnp.max(jnp.abs(x32), axis=-1, keepdims=True) / 127.0
    x_scale = jnp.where(x_scale == 0, 1.0, x_scale)
    xq = jnp.round(x32 / x_scale).astype(jnp.int8)
    acc = lax.dot_general(xq, q, (((x.ndim - 1,), (1,)), ((), ())),
                          preferred_element_type=jnp.int32).astype(jnp.float32)
    q_scale = q_scale.astype(jnp.float32)
    width = acc.shape[-1]
    if width >= 1 << 16 and width % _RESCALE_BLOCK == 0:
        blocks = acc.shape[:-1] + (width // _RESCALE_BLOCK, _RESCALE_BLOCK)
        out = acc.reshape(blocks) * x_scale[..., None] * q_scale.reshape(-1, _RESCALE_BLOCK)
        return out.reshape(acc.shape)
    return acc * x_scale * q_scale


@jax.custom_vjp
def lora_product(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """(x a) b for 2-D x [T, in], a [in, r], b [r, out], accumulated in float32.

    The backward pass is written out because autodiff's version is slow on XLA CPU: for
    dB = (x a)^T g it puts the large gradient g [T, out] first, and XLA then copies g into a
    transposed layout (in Gemma 3 270M's MLP, 1,664 x 2,048 floats per projection and layer,
    a third of a LoRA step). Here the rank-sized operand goes first in every weight gradient,
    so only r x T matrices are transposed.
    """
    return _lora_forward(x, a, b)[0]


def _lora_forward(x, a, b):
    xa = dot_f32(x, a)
    return dot_f32(xa.astype(b.dtype), b), (x, a, b, xa)


def _lora_backward(res, g):
    x, a, b, xa = res
    g = g.astype(b.dtype)
    d_xa = dot_f32(g, b, ((1,), (1,)))                                    # [T, r]
    grad_b = dot_f32(xa.astype(b.dtype), g, ((0,), (0,)))                  # [r, out]
    grad_a = dot_f32(d_xa.astype(x.dtype), x, ((0,), (0,))).T             # [in, r]
    grad_x = dot_f32(d_xa.astype(a.dtype), a, ((1,), (1,)))               # [T, in]
    return grad_x.astype(x.dtype), grad_a.astype(a.dtype), grad_b.astype(b.dtype)


lora_product.defvjp(_lora_forward, _lora_backward)


def cache_write(buf: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """Writes new [B, L, ...] into buf [B, S, ...] at slot index[b] of each row b.

    Every row's index is the same (prompts are left-padded to one width, so every row has
    written as many slots); `index` stays per row so that every cache leaf is batch-major for
    `repeat_rows` and beam gathers. Measured on Gemma 3 270M decoding: a per-row update (a
    scatter) stays in place in float32, while in bfloat16 XLA runs it through float32 and copies
    each layer's cache every step (a third of the step at batch 16), where one slice update at
    the shared slot does not. So float32 caches take the scatter, every other dtype the slice.
    """
    new = new.astype(buf.dtype)
    if buf.dtype == jnp.float32:
        return jax.vmap(lambda b, n, i: jax.lax.dynamic_update_slice_in_dim(b, n, i, axis=0))(
            buf, new, index)
    start = (0, index[0]) + (0,) * (buf.ndim - 2)
    return jax.lax.dynamic_update_slice(buf, new, start)
