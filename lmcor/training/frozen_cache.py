"""The output of a frozen bottom stack, computed once per training row and reused every epoch.

When the lowest N layers of a corrector and its embedding are frozen and carry no adapters
(`gemma_model.freeze_layers = N`, `freeze_embeddings = True`), layer N's input for a training
row is the same in every epoch. `gemma_model.cache_frozen = True` stores it (bfloat16, one
memory-mapped file per run and host under MODEL_DIR/frozen_cache/), filling it the first time
each row is drawn, so the first epoch costs what training without the cache costs and every
later one runs only the layers that train.

The file is keyed by the base weights, N, the task vocabulary and the rows' own tokens, so a
changed dataset or base never reads stale states. A row is marked done only after its states
are flushed to disk, so a killed run leaves at worst rows to recompute, never wrong ones.
"""
import hashlib
import io
import json
import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lmcor.io_utils import atomic_write_bytes

_KEY_FEATURES = ("decoder_input_tokens", "decoder_positions", "decoder_segment_ids",
                 "decoder_prefix_ids")


def cache_key(model, source) -> str:
    h = hashlib.sha256(json.dumps({
        "base": (model.base or {}).get("sha256"), "layers": model.freezing.freeze_layers,
        "vocab": model.task_vocab.fingerprint() if model.task_vocab else None,
        "dtype": str(model.config.dtype), "host": jax.process_index(),
        "num_shards": source.num_shards}, sort_keys=True).encode())
    for arrays in source.shard_arrays():
        for name in _KEY_FEATURES:
            if name in arrays:
                h.update(np.ascontiguousarray(arrays[name]).tobytes())
    return h.hexdigest()[:24]


class FrozenCache:
    def __init__(self, model, model_dir: str, source, frozen, mesh):
        if jax.process_count() > 1:
            raise ValueError("gemma_model.cache_frozen runs on one host (each host would need "
                             "its own rows' states); turn it off for multi-host training")
        rows = max(len(a["decoder_input_tokens"]) for a in source.shard_arrays())
        length = source.shard_arrays()[0]["decoder_input_tokens"].shape[1]
        self.capacity = rows * source.num_shards
        directory = os.path.join(model_dir, "frozen_cache")
        os.makedirs(directory, exist_ok=True)
        key = cache_key(model, source)
        self.path = os.path.join(directory, f"{key}.npy")
        self.done_path = os.path.join(directory, f"{key}.done.npy")
        shape = (self.capacity, length, model.config.d_model)
        mode = "r+" if os.path.exists(self.path) else "w+"
        self.states = np.lib.format.open_memmap(self.path, mode=mode, dtype=np.uint16,
                                                shape=shape)
        self.done = (np.load(self.done_path) if os.path.exists(self.done_path)
                     else np.zeros(self.capacity, bool))
        self.frozen, self.mesh = frozen, mesh
        self._prefix = jax.jit(lambda f, b: model.prefix_fn(f, b).astype(jnp.bfloat16))
        self.filled = 0

    def hidden(self, row_ids: np.ndarray, device_batch: dict) -> jax.Array:
        """Layer N's input for the batch's rows, as a batch-sharded bfloat16 array. A batch cut
        to fewer columns (length buckets) reads and writes only those: the rest is padding."""
        missing = ~self.done[row_ids]
        length = device_batch["decoder_input_tokens"].shape[1]
        if missing.any():
            states = np.asarray(jax.device_get(self._prefix(self.frozen, device_batch)))
            fresh = row_ids[missing]
            self.states[fresh, :length] = states[missing].view(np.uint16)
            self.states.flush()
            self.done[fresh] = True
            self.filled += len(fresh)
            atomic_write_bytes(self.done_path, _npy_bytes(self.done))
        out = np.asarray(self.states[row_ids, :length]).view(ml_dtypes.bfloat16)
        sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        return jax.make_array_from_process_local_data(sharding, out)

    def fraction_done(self) -> float:
        return float(self.done.mean())


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
