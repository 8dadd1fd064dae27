"""Random T5 params for mechanics tests, drawn with numpy: `jax.jit(model.init)` costs ~5 s of
XLA compile per config on CPU, while the tests only need the right (boxed) tree with sane values."""
import jax
import jax.numpy as jnp
import numpy as np

from lmcor.models.t5 import T5, T5Config


def random_t5_variables(config: T5Config, seed: int = 0) -> dict:
    """`{"params": ...}` shaped and boxed exactly like `T5(config).init`, values ~N(0, 0.2)."""
    tokens = jnp.ones((1, 2), jnp.int32)
    abstract = jax.eval_shape(T5(config).init, jax.random.key(0), tokens, tokens)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        noise = rng.normal(0.0, 0.2, leaf.shape)
        # Norm scales multiply activations: keep them near 1 so signals neither vanish nor flip.
        value = 1.0 + 0.5 * noise if jax.tree_util.keystr(path).endswith("['scale']") else noise
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, abstract)
