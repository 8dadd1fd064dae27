"""Helpers shared by the decode loops, the token choice and the batch driver.

This module imports no other `lmcor.decode` module, so everything else in the package can build
on it without an import cycle.
"""
import jax
import jax.numpy as jnp

# Stands in for -inf in log-probs, scores and masked logits: finite, so that sums and
# differences of masked entries stay finite instead of turning into NaN.
NEG_INF = -1e30


def round_up(n: int, multiple: int) -> int:
    """n rounded up to a multiple of `multiple`, and at least one multiple."""
    return max(multiple, -(-n // multiple) * multiple)


def repeat_rows(tree, n: int):
    """Repeats every row of every leaf n times (row b -> rows b*n ... b*n+n-1)."""
    if n == 1:
        return tree
    return jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), tree)
