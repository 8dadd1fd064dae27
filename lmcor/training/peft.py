"""What trains in a corrector and what stays the base model's: LoRA adapters, frozen
embeddings, a frozen bottom stack; and the identity of the base weights a run builds on.

A train state holds only the trainable parameters (and their optimizer moments): the frozen
rest is the base checkpoint's, loaded again at start-up and passed to the step as a separate
argument, so it gets no gradient, no optimizer state and no bytes in a checkpoint. The run
records which base weights it started from (file and sha256, `base_weights.json`), and
restoring against other base weights is an error rather than a silently different model.
"""
import dataclasses
import hashlib
import json
import os
import re
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from lmcor import io_utils
from lmcor.io_utils import atomic_write_text
from lmcor.paths import BASE_WEIGHTS

_LAYER = re.compile(r"layers_(\d+)$")


class BaseWeightsMismatch(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Freezing:
    """Which base parameters train. With LoRA (`lora`), no base parameter trains except the
    embedding when `freeze_embeddings` is False; without it, every layer from `freeze_layers`
    up trains in full."""
    lora: bool = False
    freeze_embeddings: bool = False
    freeze_layers: int = 0

    @property
    def freezes_anything(self) -> bool:
        return self.lora or self.freeze_embeddings or self.freeze_layers > 0

    def trainable(self, path: Tuple[str, ...]) -> bool:
        if path[-1] in ("lora_a", "lora_b"):
            return True
        if path[0] == "embedder":
            return not self.freeze_embeddings
        if self.lora:
            return False
        layer = _LAYER.match(path[0])
        return layer is None or int(layer.group(1)) >= self.freeze_layers


def _walk(tree, prefix=()):
    for k, v in tree.items():
        if hasattr(v, "items") and not hasattr(v, "shape"):  # dict or FrozenDict: a subtree
            yield from _walk(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _build(items) -> dict:
    out: dict = {}
    for path, v in items:
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def split(tree, keep: Callable[[Tuple[str, ...]], bool]) -> Tuple[dict, dict]:
    """(leaves where keep(path), the others), each as a nested dict."""
    items = list(_walk(tree))
    return (_build((p, v) for p, v in items if keep(p)),
            _build((p, v) for p, v in items if not keep(p)))


def merge(*trees) -> dict:
    """One nested dict holding every leaf of the (disjoint) trees."""
    return _build(item for t in trees if t for item in _walk(t))


def merge_lora(params, config):
    """Params with every adapter folded into its kernel (W + scale * A B), and the config
    without LoRA: what decoding, export and serving run, at the base model's speed."""
    if not config.lora_rank:
        return params, config
    scale = config.lora_alpha / config.lora_rank
    out = {}
    for path, v in _walk(params):
        if path[-1] in ("lora_a", "lora_b"):
            continue
        parent = _node(params, path[:-1])
        if path[-1] == "kernel" and "lora_a" in parent:
            a = jnp.asarray(parent["lora_a"], jnp.float32)
            b = jnp.asarray(parent["lora_b"], jnp.float32)
            delta = jnp.tensordot(a, b, axes=1)
            v = (jnp.asarray(v, jnp.float32) + scale * delta).astype(jnp.asarray(v).dtype)
        out[path] = v
    return _build(out.items()), dataclasses.replace(config, lora_rank=0)


def _node(tree, path):
    for k in path:
        tree = tree[k]
    return tree


# ---------------------------------------------------------------------- base weights


_SHA_CACHE: Dict[Tuple[str, int, float], str] = {}


def file_sha256(path: str) -> str:
    """sha256 of a file, cached per (path, size, mtime): a GGUF is hashed once per process."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = io_utils.file_sha256(path)
    return _SHA_CACHE[key]


def base_identity(path: Optional[str]) -> Optional[dict]:
    """{"file", "sha256", "bytes"} of a base checkpoint file, or of a folder's safetensors."""
    if not path:
        return None
    files = ([path] if os.path.isfile(path) else
             sorted(os.path.join(path, f) for f in os.listdir(path)
                    if f.endswith((".safetensors", ".json"))))
    shas = [file_sha256(f) for f in files]
    sha = shas[0] if len(shas) == 1 else hashlib.sha256("".join(shas).encode()).hexdigest()
    return {"file": os.path.basename(os.path.normpath(path)), "sha256": sha,
            "bytes": sum(os.path.getsize(f) for f in files)}


def record_base(model_dir: str, identity: Optional[dict], extra: Optional[dict] = None):
    """Writes the run's base identity, or checks it against the one already there."""
    if identity is None:
        return
    check_base(model_dir, identity)
    path = os.path.join(model_dir, BASE_WEIGHTS)
    if not os.path.exists(path) and jax.process_index() == 0:
        atomic_write_text(path, json.dumps({**identity, **(extra or {})}, indent=1))


def check_base(model_dir: str, identity: Optional[dict]):
    path = os.path.join(model_dir, BASE_WEIGHTS)
    if identity is None or not os.path.exists(path):
        return
    with open(path) as f:
        saved = json.load(f)
    if saved.get("sha256") != identity["sha256"]:
        raise BaseWeightsMismatch(
            f"{model_dir} was trained on base weights {saved.get('file')} (sha256 "
            f"{str(saved.get('sha256'))[:12]}...) but the configured base is {identity['file']} "
            f"(sha256 {identity['sha256'][:12]}...); its adapters only make sense on their own "
            f"base: point gemma_model.gguf / .safetensors at that file")

