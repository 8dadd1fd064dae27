"""Which examples each host of a multi-host job reads.

Round-robin by example index: host `i` of `n` reads examples `i, i + n, i + 2n, ...`, which is
exactly what `tf.data.Dataset.shard(n, i)` does, so a count, a Python iterable and a tf.data
pipeline split the same way and every example is read by exactly one host per epoch. Hosts may
then hold up to one example more than each other; a trainer that needs equal step counts
repeats its stream (training) or pads its last batch (evaluation) rather than dropping examples.

jax is imported only when the host's place is not given: a count needs none of it.
"""
import itertools
from typing import Any, Iterable, Optional, Union


def _is_tf_dataset(obj: Any) -> bool:
    return type(obj).__module__.startswith("tensorflow") and hasattr(obj, "shard")


def host_shard(data: Union[int, Iterable], process_index: Optional[int] = None,
               process_count: Optional[int] = None):
    """This host's share of `data`, round-robin by example index (see the module docstring).

    `data` is a count (returns a `range` of example indices), a `tf.data.Dataset` (returns
    `data.shard(count, index)`), or any iterable (returns an iterator over its items at this
    host's indices). Index and count default to `jax.process_index()`/`jax.process_count()`.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    index, count = process_index, process_count
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"host_shard: process_index={index} must lie in 0..{count - 1}")
    if isinstance(data, bool):
        raise TypeError("host_shard: expected a count, a tf.data.Dataset or an iterable, "
                        "got a bool")
    if isinstance(data, int):
        if data < 0:
            raise ValueError(f"host_shard: example count must be >= 0, got {data}")
        return range(index, data, count)
    if _is_tf_dataset(data):
        return data.shard(count, index)
    return itertools.islice(data, index, None, count)
