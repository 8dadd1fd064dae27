"""The XLA-CPU-tuned forms of lmcor.models.xla_tuning compute what their plain formulas do."""
import jax.numpy as jnp
import numpy as np
import pytest

from lmcor.models.xla_tuning import cache_write, int8_matmul


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cache_write_puts_each_row_at_the_shared_slot(dtype):
    # float32 and bfloat16 caches are written by different code.
    rng = np.random.default_rng(4)
    buf = rng.standard_normal((3, 10, 1, 4)).astype(np.float32)
    new = rng.standard_normal((3, 2, 1, 4)).astype(np.float32)
    got = cache_write(jnp.asarray(buf, dtype), jnp.asarray(new, dtype),
                      jnp.full((3,), 5, jnp.int32))
    want = np.array(jnp.asarray(buf, dtype), np.float32)
    want[:, 5:7] = np.asarray(jnp.asarray(new, dtype), np.float32)
    assert got.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got, np.float32), want)


@pytest.mark.parametrize("width", [1000, 1 << 16], ids=["flat", "lm_head_blocks"])
def test_int8_matmul_is_the_rescaled_integer_product(width):
    # 65,536 outputs and more are rescaled in blocks of 512; either way the result must be the
    # int32 product of the quantized operands times both scales.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 16)).astype(np.float32)
    x[1] = 0.0  # an all-zero row takes scale 1 instead of dividing by zero
    q = rng.integers(-127, 128, (width, 16)).astype(np.int8)
    q_scale = rng.uniform(0.001, 0.01, width).astype(np.float32)
    got = np.asarray(int8_matmul(jnp.asarray(x), jnp.asarray(q), jnp.asarray(q_scale)))
    x_scale = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127)
    x_scale[x_scale == 0] = 1
    xq = np.round(x / x_scale).astype(np.int64)
    want = (xq @ q.astype(np.int64).T).astype(np.float32) * x_scale * q_scale
    assert got.shape == (3, width) and not got[1].any()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("x_shape,y_shape,contract", [
    ((5, 7), (7, 3), ((1,), (0,))),              # a Dense kernel
    ((6, 5), (3, 5), ((1,), (1,))),              # against rows (a tied head)
    ((4, 5, 6), (5, 6, 3), ((1, 2), (0, 1))),    # attention's output projection (heads, dim)
    ((2, 5, 6), (6, 2, 3), ((0, 2), (1, 0))),    # contracted dims in another order
])
def test_dot_f32_gradients_are_the_plain_dots(x_shape, y_shape, contract):
    # dot_f32's backward pass is written by hand (float32 out from bf16 operands): its
    # gradients must be autodiff's of the plain dot_general, for any contracted dims.
    import jax
    from jax import lax

    from lmcor.models.xla_tuning import dot_f32

    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal(x_shape), jnp.float32)
    y = jnp.asarray(rng.standard_normal(y_shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(jax.eval_shape(
        lambda: lax.dot_general(x, y, (contract, ((), ())))).shape), jnp.float32)
    ours = jax.grad(lambda x, y: (dot_f32(x, y, contract) * w).sum(), (0, 1))(x, y)
    plain = jax.grad(lambda x, y: (lax.dot_general(x, y, (contract, ((), ()))) * w).sum(),
                     (0, 1))(x, y)
    for a, b in zip(ours, plain):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # bf16 operands: gradients come back in the operands' dtype, near the float32 ones.
    xb, yb = x.astype(jnp.bfloat16), y.astype(jnp.bfloat16)
    gx, gy = jax.grad(lambda x, y: (dot_f32(x, y, contract) * w).sum(), (0, 1))(xb, yb)
    assert gx.dtype == gy.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(gx, np.float32), np.asarray(plain[0]), rtol=0.05,
                               atol=0.05 * float(jnp.abs(plain[0]).max()))
