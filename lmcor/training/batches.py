"""Deterministic, resumable batches keyed by step.

Examples are split into `num_shards` data shards (shard s holds examples s, s+S, ...). Each
shard is reshuffled every epoch with a key derived from (seed, shard, epoch), and the global
batch at step t is the concatenation, over shards, of that shard's rows [t*b, (t+1)*b) in its
infinite shuffled stream. So the batch depends only on (seed, step, num_shards): a restarted
run resumes mid-epoch exactly, and a host that owns only some shards produces precisely its
part of the same global batch.

With `length_buckets`, each epoch's order is length-grouped: the shuffled rows are sorted by
length inside windows of `window` batches, cut into batches (aligned with where the epoch
starts in the stream) and the batches shuffled; `batch(step)` then cuts the step's rows to
their bucket (lmcor.training.grouped_rows). An epoch is still a permutation of the rows.
"""
from typing import Dict, List, Optional, Sequence

import numpy as np

from lmcor.training import grouped_rows

Arrays = Dict[str, np.ndarray]


def _num_rows(arrays: Arrays) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"feature arrays have different numbers of rows: {sizes}")
    return next(iter(sizes.values()))


def row_examples(arrays: Arrays) -> np.ndarray:
    """Training examples per row: the packed segments that carry loss (one per row unpacked).

    Budgets and evaluation intervals count these, so rows of different lengths (a source-only
    row packs more examples than a row with five candidates) are compared per example seen."""
    weighted = np.asarray(arrays["decoder_loss_weights"]) > 0
    segments = arrays.get("decoder_segment_ids")
    if segments is None:
        return weighted.any(axis=1).astype(np.int64)
    segments = np.where(weighted, np.asarray(segments), 0)
    return np.array([np.count_nonzero(np.unique(row)) for row in segments], np.int64)


def most_loss_tokens(arrays: Arrays) -> int:
    """The largest number of loss-weighted (target) tokens in one row of a batch or shard."""
    return int(np.max(np.sum(np.asarray(arrays["decoder_loss_weights"]) > 0, axis=1)))


class ShardStream:
    """One data shard's infinite shuffled stream of rows. With `group` > 0, every epoch is
    length-grouped into batches of `group` rows (`length_grouped`)."""

    def __init__(self, arrays: Arrays, seed: int, shard: int, shuffle: bool = True,
                 group: int = 0, window: int = 32):
        self.arrays = arrays
        self.n = _num_rows(arrays)
        if self.n == 0:
            raise ValueError(f"data shard {shard} is empty: too few examples for the shard count")
        self.seed, self.shard, self.shuffle = seed, shard, shuffle
        self.group, self.window = group, window
        self.lengths = grouped_rows.row_lengths(arrays) if group else None
        self._perms = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            rng = np.random.default_rng([self.seed, self.shard, epoch])
            perm = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
            if self.group:
                # The epoch starts `offset` rows before a batch boundary of the stream.
                offset = (-epoch * self.n) % self.group
                perm = length_grouped(perm, self.lengths, self.group, offset,
                                      self.window, rng if self.shuffle else None)
            self._perms[epoch] = perm
        return self._perms[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        """Positions in this shard of stream rows [start, start + count)."""
        pos = np.arange(start, start + count, dtype=np.int64)
        epochs = pos // self.n
        idx = np.empty(count, np.int64)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            idx[at] = self._perm(int(epoch))[pos[at] % self.n]
        return idx

    def rows(self, start: int, count: int) -> Arrays:
        idx = self.indices(start, count)
        return {k: v[idx] for k, v in self.arrays.items()}


def length_grouped(perm: np.ndarray, lengths: np.ndarray, group: int, offset: int, window: int,
                   rng: Optional[np.random.Generator]) -> np.ndarray:
    """`perm` rearranged so that its rows from `offset` on fall into batches of `group` rows of
    similar length: sorted by length inside windows of `window` batches (stably: equal lengths
    keep their shuffled order), and the whole batches shuffled with `rng` (None: kept in order).
    The first `offset` rows (which finish the batch the previous epoch began) and a last
    partial batch keep their places."""
    head, rest = perm[:offset], perm[offset:]
    span = window * group
    rest = np.concatenate([chunk[np.argsort(lengths[chunk], kind="stable")]
                           for chunk in np.split(rest, list(range(span, len(rest), span)))])
    whole = len(rest) // group * group
    batches = rest[:whole].reshape(-1, group)
    if rng is not None:
        batches = batches[rng.permutation(len(batches))]
    return np.concatenate([head, batches.ravel(), rest[whole:]])


class BatchSource:
    """The rows of the global batch at a step that belong to the shards this process owns.

    `shards` maps shard index -> that shard's feature arrays (already packed/padded to fixed
    lengths); `num_shards` is the total across all processes; `batch_size` is global.
    `length_buckets` (decoder-only rows): length-grouped epochs, and batches cut to the bucket
    of their longest row (`batch_shape`, then `batch(step, shape)`).
    """

    def __init__(self, shards: Dict[int, Arrays], num_shards: int, batch_size: int, seed: int,
                 shuffle: bool = True, length_buckets: Optional[Sequence[int]] = None):
        if batch_size % num_shards:
            raise ValueError(f"batch_size {batch_size} must be a multiple of the {num_shards} data shards")
        self.per_shard = batch_size // num_shards
        self.num_shards, self.batch_size, self.seed = num_shards, batch_size, seed
        self.length_buckets = tuple(sorted(length_buckets)) if length_buckets else None
        group = self.per_shard if self.length_buckets else 0
        self.streams: List[ShardStream] = [ShardStream(shards[s], seed, s, shuffle, group)
                                           for s in sorted(shards)]
        self._row_examples = [row_examples(s.arrays) for s in self.streams]

    def _rows(self, step: int) -> Arrays:
        parts = [s.rows(step * self.per_shard, self.per_shard) for s in self.streams]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def batch_shape(self, step: int) -> Optional[tuple]:
        """(length, loss positions) of this process's part of batch(step); None without
        length buckets. Hosts agree on the largest before calling `batch`."""
        if not self.length_buckets:
            return None
        return grouped_rows.batch_shape(self._rows(step), self.length_buckets)

    def batch(self, step: int, shape: Optional[tuple] = None) -> Arrays:
        rows = self._rows(step)
        if not self.length_buckets:
            return rows
        return grouped_rows.cut_batch(rows, *(shape or self.batch_shape(step)))

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

    def num_examples(self) -> int:
        """Examples in this process's shards: one epoch of its part of the data."""
        return int(sum(counts.sum() for counts in self._row_examples))

    def examples_per_step(self, steps: int) -> np.ndarray:
        """Examples (`row_examples`) in this process's part of batch(t), for t < `steps`."""
        total = np.zeros(steps, np.int64)
        for stream, counts in zip(self.streams, self._row_examples):
            idx = stream.indices(0, steps * self.per_shard)
            total += counts[idx].reshape(steps, self.per_shard).sum(axis=1)
        return total

    def most_loss_tokens_per_row(self) -> int:
        """The largest count of loss-weighted tokens in any of this process's rows."""
        return max(most_loss_tokens(s.arrays) for s in self.streams)

    def position(self, step: int) -> dict:
        """What the checkpoint records about the data position (checked again on resume)."""
        return {"step": int(step), "seed": int(self.seed), "num_shards": int(self.num_shards),
                "batch_size": int(self.batch_size)}


def split_shards(arrays: Arrays, num_shards: int, owned: Sequence[int]) -> Dict[int, Arrays]:
    """In-memory sharding for data that is already loaded (tests, small pools): shard s gets
    rows s, s+S, ...; only the owned shards are kept."""
    return {s: {k: v[s::num_shards] for k, v in arrays.items()} for s in owned}
