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
