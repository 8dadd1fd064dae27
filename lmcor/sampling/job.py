"""The sampling job behind `lmcor sample` (lmcor.cli.sample_command): few-shot prompt an LLM for a
candidate pool (greedy + n samples per input).

    lmcor sample --gin_file=gin/runs/sample.gin --gin_file=gin/tasks/sampling/e2e.gin \
        --gin.OUTPUT_DIR=pools/e2e_test

The inputs are cut into fixed shards by position; each shard is generated, validated and written
atomically as `pool-NNNNN.jsonl`, so a killed job loses at most the shard in flight and a rerun
skips every shard and id already on disk. Prompts and sampling seeds are keyed by (seed, example
id), which makes the pool identical whether it was written in one go, resumed, or split across
hosts. `manifest.json` records the model, prompt, decoding parameters, code version and counts;
with `tensorboard=True`, tokens/s, progress and retries also go to `tensorboard/host<i>/`.
"""
import dataclasses
import glob
import json
import logging
import os
import time
from typing import Dict, List, Optional, Sequence

import gin
from tqdm import tqdm

from lmcor.sampling import prompts
from lmcor.sampling.backends.base import Backend, Request, SamplingParams
from lmcor.data import importers
from lmcor.data.pool import PoolStats, is_shard, pool_stats, read_pool
from lmcor.data.pool_schema import PoolError, validate_record
from lmcor.io_utils import atomic_write_text
from lmcor.paths import MANIFEST, code_version, data_root

log = logging.getLogger("lmcor.sampling")
SHARD_PREFIX = "pool"
# A pool written with other settings must not be silently extended by a rerun.
# The backend's address may change between runs (a restarted server); the model may not.
_RESUME_KEYS = ("task", "split", "demo_split", "max_examples", "subset_seed", "shard_size", "seed",
                "fingerprint", "prompt", "sampling")


class SampleError(ValueError):
    """Bad configuration or inputs for the sampling job."""


def load_split(task: str, data_dir: str, split: str, role: str) -> List[dict]:
    if task not in importers.IMPORTERS:
        raise SampleError(f"unknown task {task!r}; known tasks: {', '.join(importers.IMPORTERS)}")
    try:
        records = list(importers.IMPORTERS[task](data_dir, split))
    except (PoolError, ValueError, OSError) as e:
        raise SampleError(f"task {task!r}: cannot load the {role} split {split!r} from "
                          f"{data_dir}: {e}") from None
    if not records:
        raise SampleError(f"task {task!r}: the {role} split {split!r} in {data_dir} is empty")
    return records


def shard_path(output_dir: str, index: int) -> str:
    return os.path.join(output_dir, f"{SHARD_PREFIX}-{index:05d}.jsonl")


def finished_ids(output_dir: str) -> Dict[str, str]:
    """Ids of every record already written (id -> shard file), validating each shard."""
    done: Dict[str, str] = {}
    paths = sorted(p for p in glob.glob(os.path.join(output_dir, f"{SHARD_PREFIX}-*"))
                   if is_shard(p))
    for path in paths:
        for rec in read_pool(path):
            if rec["id"] in done:
                raise SampleError(f"{path}: id {rec['id']!r} already written in {done[rec['id']]}")
            done[rec["id"]] = path
    return done


def remove_stale_temp_files(output_dir: str) -> int:
    """Temp files of shards whose writer was killed mid-write: never valid, safe to drop."""
    stale = glob.glob(os.path.join(output_dir, f".{SHARD_PREFIX}-*.tmp"))
    for path in stale:
        os.unlink(path)
    return len(stale)


def _check_resumable(output_dir: str, run_config: dict) -> None:
    path = os.path.join(output_dir, MANIFEST)
    if not os.path.exists(path):
        return
    try:
        with open(path, encoding="utf-8") as f:
            old = json.load(f).get("config", {})
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise SampleError(f"{path}: unreadable manifest ({e}); move it away to start over")
    diff = [k for k in _RESUME_KEYS if old.get(k) != run_config.get(k)]
    if diff:
        raise SampleError(f"{output_dir} holds a pool sampled with different settings "
                          f"({', '.join(diff)} differ); use a new OUTPUT_DIR")


def _write_manifest(output_dir: str, run_config: dict, extra: dict) -> None:
    body = {"config": run_config, **extra}
    atomic_write_text(os.path.join(output_dir, MANIFEST),
                      json.dumps(body, indent=2, ensure_ascii=False, sort_keys=True) + "\n")


@dataclasses.dataclass
class _Progress:
    bar: tqdm
    start: float
    writer: Optional[object] = None  # tensorboard.summary.Writer
    tokens: int = 0
    examples: int = 0

    def update(self, n_examples: int, n_tokens: int, backend_stats: dict) -> None:
        self.tokens += n_tokens
        self.examples += n_examples
        rate = self.tokens / max(time.time() - self.start, 1e-9)
        self.bar.set_postfix(tok_s=f"{rate:.1f}", tokens=self.tokens, refresh=False)
        self.bar.update(n_examples)
        if self.writer is not None:
            step = self.bar.n
            self.writer.add_scalar("sample/generated_tokens_per_s", rate, step=step)
            self.writer.add_scalar("sample/examples_done", step, step=step)
            if "retries" in backend_stats:
                self.writer.add_scalar("sample/retries", backend_stats["retries"], step=step)
            self.writer.flush()


def _tensorboard_writer(output_dir: str, process_index: int):
    from tensorboard.summary import Writer  # noqa: PLC0415 (no TensorFlow; ~1 s of imports)

    return Writer(os.path.join(output_dir, "tensorboard", f"host{process_index}"))


class _ShardSampler:
    """Turns the records of one shard into pool records with candidates."""

    def __init__(self, backend: Backend, builder: prompts.PromptBuilder,
                 sampling: SamplingParams, seed: int, task: str, split: str, batch_size: int):
        self.backend, self.builder, self.seed = backend, builder, seed
        self.sampling = sampling.with_stops(builder.stop_sequences())
        self.task, self.split, self.batch_size = task, split, batch_size
        self.empty_outputs = 0

    def run(self, records: Sequence[dict], progress: _Progress) -> List[dict]:
        built = self.builder.build(records)
        # Similar prompt lengths in one batch cut the padding a batched backend pays for.
        order = sorted(range(len(records)), key=lambda i: len(built[i]["prompt"]))
        out: Dict[int, dict] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            reqs = [Request(records[i]["id"], built[i]["prompt"], tuple(built[i]["messages"]),
                            prompts.keyed_seed(self.seed, records[i]["id"])) for i in idx]
            gens = self.backend.generate(reqs, self.sampling)
            for i, g in zip(idx, gens):
                out[i] = self._record(records[i], built[i], g)
            progress.update(len(idx), sum(x.num_tokens for g in gens for x in g),
                            self.backend.stats())
        return [out[i] for i in range(len(records))]

    def _record(self, rec: dict, built: dict, gens) -> dict:
        expected = int(self.sampling.greedy) + self.sampling.num_samples
        if len(gens) != expected:
            raise SampleError(f"backend {self.backend.generator!r} returned {len(gens)} "
                              f"generations for {rec['id']!r}, expected {expected}")
        variant = self.builder.config.variant
        cands = []
        for g in gens:
            text = self.builder.postprocess(g.text, self.sampling.stop)
            self.empty_outputs += not text
            cands.append(g.candidate(self.backend.generator, variant, text))
        meta = {**rec.get("meta", {}), "task": self.task, "split": self.split,
                "prompt_variant": variant, "shot_ids": built["shot_ids"]}
        return validate_record({**rec, "candidates": cands, "meta": meta}, f"example {rec['id']}")


def _write_shard(path: str, records: Sequence[dict]) -> None:
    lines = [json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records]
    atomic_write_text(path, "".join(lines))


def _host_shards(n_shards: int, process_index: int, process_count: int) -> range:
    from lmcor.data.host_shard import host_shard

    return host_shard(n_shards, process_index, process_count)


def choose_inputs(examples: List[dict], max_examples: Optional[int],
                  subset_seed: Optional[int]) -> List[dict]:
    """The inputs a pool is sampled for: the first max_examples, or with subset_seed a uniform
    random subset of that size, kept in the split's order. A split's order is rarely random (E2E
    test lists its MRs restaurant by restaurant: the first 48 name two), so a slice meant to
    stand for the whole test set should be drawn."""
    if max_examples is None or max_examples >= len(examples):
        return list(examples)
    if max_examples < 0:
        raise SampleError(f"sample_pool.max_examples must be >= 0, got {max_examples}")
    if subset_seed is None:
        return examples[:max_examples]
    import numpy as np

    keep = np.random.default_rng(subset_seed).choice(len(examples), max_examples, replace=False)
    return [examples[i] for i in sorted(keep)]


def _prepare(task, split, demo_split, data_dir, prompt, max_examples, subset_seed):
    template = prompts.get_template(prompt.variant)
    if template.task != task:
        raise SampleError(f"prompt variant {prompt.variant!r} is for task {template.task!r}, "
                          f"not {task!r}")
    examples = choose_inputs(load_split(task, data_dir, split, "evaluation"), max_examples,
                             subset_seed)
    builder = prompts.PromptBuilder(prompt, load_split(task, data_dir, demo_split, "training"))
    return examples, builder


def _pending(output_dir, examples, shard_size, mine) -> Dict[int, List[dict]]:
    """Shard index -> its records not on disk yet (whole shards already written are skipped)."""
    done = finished_ids(output_dir)
    todo = {}
    for s in mine:
        recs = [r for r in examples[s * shard_size:(s + 1) * shard_size] if r["id"] not in done]
        if recs and not os.path.exists(shard_path(output_dir, s)):
            todo[s] = recs
    return todo


@gin.configurable
def sample_pool(output_dir: Optional[str] = None, task: str = gin.REQUIRED,
                split: str = gin.REQUIRED, demo_split: str = gin.REQUIRED,
                backend: Backend = gin.REQUIRED, prompt: Optional[prompts.PromptConfig] = None,
                sampling: Optional[SamplingParams] = None, data_dir: Optional[str] = None,
                shard_size: int = 100, batch_size: int = 8, max_examples: Optional[int] = None,
                subset_seed: Optional[int] = None, seed: int = 0, process_index: int = 0,
                process_count: int = 1, tensorboard: bool = False) -> dict:
    """Samples the pool into `output_dir`; returns the manifest. `max_examples` limits the
    inputs to the split's first ones, or with `subset_seed` to a seeded random subset
    (`choose_inputs`)."""
    if not output_dir:
        raise SampleError("no output directory: pass --gin.OUTPUT_DIR=DIR")
    if shard_size < 1 or batch_size < 1:
        raise SampleError("sample_pool: shard_size and batch_size must be >= 1")
    prompt, sampling = prompt or prompts.PromptConfig(), sampling or SamplingParams()
    data_dir = data_dir or data_root()
    examples, builder = _prepare(task, split, demo_split, data_dir, prompt, max_examples,
                                 subset_seed)
    run_config = json.loads(json.dumps({  # compared with the manifest as JSON sees it
        "task": task, "split": split, "demo_split": demo_split, "max_examples": max_examples,
        "subset_seed": subset_seed,
        "shard_size": shard_size, "seed": seed, "fingerprint": backend.fingerprint(),
        "backend": backend.describe(), "sampling": dataclasses.asdict(sampling),
        "prompt": prompts.prompt_summary(prompt, builder.stop_sequences()), "data_dir": data_dir}))
    os.makedirs(output_dir, exist_ok=True)
    _check_resumable(output_dir, run_config)
    if process_count == 1:  # other hosts may be mid-write on a shared filesystem
        remove_stale_temp_files(output_dir)
    if process_index == 0:
        _write_manifest(output_dir, run_config, {"status": "running"})
    mine = list(_host_shards(-(-len(examples) // shard_size), process_index, process_count))
    todo = _pending(output_dir, examples, shard_size, mine)
    sampler = _ShardSampler(backend, builder, sampling, seed, task, split, batch_size)
    total = sum(len(examples[s * shard_size:(s + 1) * shard_size]) for s in mine)
    start = time.time()
    with tqdm(total=total, initial=total - sum(map(len, todo.values())), unit="ex",
              desc=f"sample {task}/{split}", dynamic_ncols=True) as bar:
        writer = _tensorboard_writer(output_dir, process_index) if tensorboard and todo else None
        progress = _Progress(bar, start, writer)
        for s, records in todo.items():
            _write_shard(shard_path(output_dir, s), sampler.run(records, progress))
        if writer is not None:
            writer.close()
    return _finish(output_dir, run_config, backend, sampler, progress, len(examples),
                   len(todo), time.time() - start, process_index)


def _finish(output_dir, run_config, backend, sampler, progress, n_examples, n_written,
            wall_s, process_index) -> dict:
    has_shards = any(is_shard(p) for p in glob.glob(os.path.join(output_dir, "*")))
    stats = pool_stats(output_dir) if has_shards else PoolStats()
    manifest = {
        "status": "complete" if stats.examples == n_examples else "partial",
        "code_version": code_version(), "model": backend.generator,
        "prompt_variant": run_config["prompt"]["variant"],
        "counts": {**stats.to_dict(), "expected_examples": n_examples,
                   "shards_written_this_run": n_written,
                   "examples_sampled_this_run": progress.examples,
                   "generated_tokens_this_run": progress.tokens,
                   "empty_outputs_this_run": sampler.empty_outputs},
        "backend_stats": backend.stats(),
        "wall_s_this_run": round(wall_s, 3),
        "tokens_per_s_this_run": round(progress.tokens / max(wall_s, 1e-9), 3),
    }
    if sampler.empty_outputs:
        log.warning("%d generations were empty after clean-up (kept, counted in the manifest)",
                    sampler.empty_outputs)
    if process_index == 0:
        _write_manifest(output_dir, run_config, manifest)
    log.info("backend stats: %s", manifest["backend_stats"])
    return {"config": run_config, **manifest}

