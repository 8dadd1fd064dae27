"""Deterministic, resumable batches keyed by step.

Examples are split into `num_shards` data shards (shard s holds examples s, s+S, ...). Each
shard is reshuffled every epoch with a key derived from (seed, shard, epoch), and the global
batch at step t is the concatenation, over shards, of that shard's rows [t*b, (t+1)*b) in its
infinite shuffled stream. So the batch depends only on (seed, step, num_shards): a restarted
run resumes mid-epoch exactly, and a host that owns only some shards produces precisely its
part of the same global batch.
"""
from typing import Dict, List, Sequence

import numpy as np

Arrays = Dict[str, np.ndarray]


def _num_rows(arrays: Arrays) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"feature arrays have different numbers of rows: {sizes}")
    return next(iter(sizes.values()))


def most_loss_tokens(arrays: Arrays) -> int:
    """The largest number of loss-weighted (target) tokens in one row of a batch or shard."""
    return int(np.max(np.sum(np.asarray(arrays["decoder_loss_weights"]) > 0, axis=1)))


class ShardStream:
    """One data shard's infinite shuffled stream of rows."""

    def __init__(self, arrays: Arrays, seed: int, shard: int, shuffle: bool = True):
        self.arrays = arrays
        self.n = _num_rows(arrays)
        if self.n == 0:
            raise ValueError(f"data shard {shard} is empty: too few examples for the shard count")
        self.seed, self.shard, self.shuffle = seed, shard, shuffle
        self._perms = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            rng = np.random.default_rng([self.seed, self.shard, epoch])
            self._perms[epoch] = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        """Positions in this shard of stream rows [start, start + count)."""
        idx = np.empty(count, np.int64)
        for j, pos in enumerate(range(start, start + count)):
            idx[j] = self._perm(pos // self.n)[pos % self.n]
        return idx

    def rows(self, start: int, count: int) -> Arrays:
        idx = self.indices(start, count)
        return {k: v[idx] for k, v in self.arrays.items()}


class BatchSource:
    """The rows of the global batch at a step that belong to the shards this process owns.

    `shards` maps shard index -> that shard's feature arrays (already packed/padded to fixed
    lengths); `num_shards` is the total across all processes; `batch_size` is global.
    """

    def __init__(self, shards: Dict[int, Arrays], num_shards: int, batch_size: int, seed: int,
                 shuffle: bool = True):
        if batch_size % num_shards:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the {num_shards} data shards")
        self.per_shard = batch_size // num_shards
        self.num_shards, self.batch_size, self.seed = num_shards, batch_size, seed
        self.streams: List[ShardStream] = [ShardStream(shards[s], seed, s, shuffle)
                                           for s in sorted(shards)]

    def batch(self, step: int) -> Arrays:
        parts = [s.rows(step * self.per_shard, self.per_shard) for s in self.streams]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def shard_arrays(self) -> List[Arrays]:
        return [s.arrays for s in self.streams]

    def map_features(self, names: Sequence[str], fn) -> None:
        """Rewrites features of every held row in place (e.g. ids into a task vocabulary)."""
        for s in self.streams:
            for name in names:
                s.arrays[name] = np.asarray(fn(s.arrays[name]), s.arrays[name].dtype)

    def row_ids(self, step: int) -> np.ndarray:
        """A stable id per row of `batch(step)`: shard s's i-th row is i * num_shards + s."""
        return np.concatenate([s.indices(step * self.per_shard, self.per_shard) * self.num_shards
                               + s.shard for s in self.streams])

    def most_loss_tokens_per_row(self) -> int:
        """The largest count of loss-weighted tokens in any of this process's rows."""
        return max(most_loss_tokens(s.arrays) for s in self.streams)

    def position(self, step: int) -> dict:
        """What the checkpoint records about the data position (checked again on resume)."""
        return {"step": int(step), "seed": int(self.seed), "num_shards": int(self.num_shards),
                "batch_size": int(self.batch_size),
                "examples_seen": int(step) * int(self.batch_size)}


def split_shards(arrays: Arrays, num_shards: int, owned: Sequence[int]) -> Dict[int, Arrays]:
    """In-memory sharding for data that is already loaded (tests, small pools): shard s gets
    rows s, s+S, ...; only the owned shards are kept."""
    return {s: {k: v[s::num_shards] for k, v in arrays.items()} for s in owned}
