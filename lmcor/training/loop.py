"""The training loop behind `lmcor train` (Gin-configured as `train.*`).

Builds the mesh, this host's step-keyed batches, the sharded state (fresh, imported or restored
from MODEL_DIR/checkpoints), then steps: every step's metrics are checked for finiteness before
anything is saved, evaluation runs every `eval_every` steps or `eval_every_examples` examples
(lmcor.training.budget) and feeds keep-best checkpointing and early stopping, and a SIGTERM on
any host turns into "save this step, stop" on all of them.
"""
import contextlib
import json
import os
import time
from typing import Callable, Optional, Sequence

import gin
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from lmcor.io_utils import atomic_write_text
from lmcor.models import partitioning
from lmcor.training import batches, budget, checkpointing, frozen_cache
from lmcor.training import state as state_lib
from lmcor.training import step as step_lib
from lmcor.training import builders  # noqa: F401  (registers the model builders with gin)
from lmcor.training.logging import TrainLogger, log_info
from lmcor.training.protocol import TrainModel
from lmcor.paths import CHECKPOINTS, RUN_CONFIG, TRAIN_SUMMARY


class NonFiniteLossError(FloatingPointError):
    pass


def _is_main_host() -> bool:
    """Host 0 writes the run's files (config, summaries, TensorBoard); every host trains."""
    return jax.process_index() == 0


def _global_batch(local: dict, mesh) -> dict:
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def _max_over_hosts(value: int) -> int:
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.asarray(value))))


def _any_host(flag: bool) -> bool:
    return bool(_max_over_hosts(int(flag)))


def _build_source(data_fn: Callable, batch_size: int, seed: int, data_shards: Optional[int],
                  length_buckets=None):
    num = data_shards or jax.process_count()
    if num % jax.process_count():
        raise ValueError(f"data_shards={num} must be a multiple of the {jax.process_count()} hosts")
    owned = [s for s in range(num) if s % jax.process_count() == jax.process_index()]
    return batches.BatchSource(data_fn(num_shards=num, owned_shards=owned), num, batch_size, seed,
                                length_buckets=length_buckets)


def _host_batch(source, step: int) -> dict:
    """This host's rows of batch(step); length-grouped batches are cut to the same shape on
    every host (the largest any host asks for)."""
    shape = source.batch_shape(step)
    if shape is not None:
        shape = tuple(_max_over_hosts(x) for x in shape)
    return source.batch(step, shape)


def build_step(model: TrainModel, optimizer, schedule, mesh, seed: int):
    """(initial state, jitted step, frozen params) for a prepared model: what `train` runs, and
    what benchmarks and tests drive directly."""
    state, shardings = state_lib.create_state(model.init_fn, optimizer, mesh, seed, model.rules,
                                              init_params=model.load_pretrained())
    frozen, frozen_shardings = model.place_frozen(mesh)
    step_fn = step_lib.make_train_step(model.loss_inputs, optimizer, schedule, shardings, mesh,
                                       frozen_shardings=frozen_shardings)
    return state, step_fn, frozen


def _log_sizes(state, frozen):
    trained = state_lib.nbytes(state.params)
    log_info("trainable params %.1f MB, optimizer state %.1f MB, frozen params %.1f MB",
             trained / 1e6, state_lib.nbytes(state.opt_state) / 1e6,
             state_lib.nbytes(frozen) / 1e6 if frozen is not None else 0.0)


def _restore_or_init(ckpt, state, source):
    """(state, step, position): the newest intact checkpoint's, or the fresh state at step 0."""
    restored = ckpt.restore_latest(state, expected_position=source.position)
    if restored is None:
        return state, 0, {}
    latest, state, pos = restored
    log_info("resumed from step %d (%d rows seen)", latest, latest * source.batch_size)
    return state, latest, pos


class _TrainClock:
    """Training wall time against an optional budget, with evaluations left out of it."""

    def __init__(self, budget_s: Optional[float], before_s: float = 0.0):
        # `before_s`: what earlier runs of the same MODEL_DIR trained (the budget is this run's).
        self.budget_s, self.start, self.excluded = budget_s, time.monotonic(), 0.0
        self.before_s = before_s

    def this_run(self) -> float:
        return time.monotonic() - self.start - self.excluded

    def used(self) -> float:
        """Training seconds of this MODEL_DIR over all its runs."""
        return self.before_s + self.this_run()

    def expired(self) -> bool:
        return self.budget_s is not None and self.this_run() >= self.budget_s

    @contextlib.contextmanager
    def paused(self):
        t = time.monotonic()
        try:
            yield
        finally:
            self.excluded += time.monotonic() - t


def _write_config(model_dir: str):
    """The run's Gin config, for `lmcor.inference` and for reproducing the run (T5X habit)."""
    if _is_main_host():
        atomic_write_text(os.path.join(model_dir, RUN_CONFIG), gin.config_str())


def _check_finite(metrics: dict, step: int, model_dir: str):
    if not bool(metrics["finite"]):
        raise NonFiniteLossError(
            f"step {step}: loss={float(metrics['loss'])} grad_norm={float(metrics['grad_norm'])} "
            f"is not finite; training stopped and this state was not saved (latest good "
            f"checkpoint in {model_dir}/checkpoints). Lower the learning rate, enable z_loss, "
            f"or check the data.")


def _evaluate_only(model, state, step, evaluator, model_dir):
    if evaluator is None:
        raise ValueError("train.evaluate_only needs train.evaluator")
    results = evaluator(model, state.params, step)
    logger = TrainLogger(os.path.join(model_dir, "eval"), step, step, _is_main_host())
    logger.scalars(step, results, prefix="eval/")
    logger.close()
    return {"step": step, "losses": [], "stopped": "evaluated", "eval": results}


@gin.configurable(denylist=["preemption"])
def train(model_dir: str = gin.REQUIRED, train_steps: int = gin.REQUIRED,
          model: TrainModel = gin.REQUIRED,
          data: Callable = gin.REQUIRED, batch_size: int = 8, seed: int = 0,
          mesh_shape=(-1, 1), data_shards: Optional[int] = None, log_every: int = 10,
          eval_every: int = 0, evaluator: Optional[Callable] = None,
          evaluate_only: bool = False, max_train_seconds: Optional[float] = None,
          train_examples: Optional[int] = None, train_epochs: Optional[float] = None,
          eval_every_examples: int = 0, patience: Optional[int] = None,
          length_buckets: Optional[Sequence[int]] = None, preemption=None) -> dict:
    """Trains until `train_steps` optimizer updates; returns {"step", "losses", "stopped",
    "examples_seen", "train_seconds"}.

    `train_examples` stops it earlier, after the step at which that many training examples
    (packed segments, `data.row_examples`) have been seen; `train_epochs` sets it as a number
    of passes over the training examples. `eval_every_examples` evaluates each
    time that many more have been seen, and at the end of the budget; `patience` then stops the
    run ("converged") once that many evaluations in a row have not improved the keep-best
    metric (`Checkpointer.best_metric`) on the best before them. Every evaluation is appended to
    MODEL_DIR/eval/history.jsonl, and MODEL_DIR/train_summary.json records how the run ended.

    `max_train_seconds` also stops it once this run has trained that long (wall clock, from
    the first step, compilation included; evaluation time not counted), with a checkpoint and,
    when an evaluator is set, a final evaluation: "train for 15 minutes" on a shared machine.

    `length_buckets` (decoder-only rows, e.g. `seqio_train_data.share_inputs`): length-grouped
    batches cut to the bucket of their longest row (training/batches.py), so a step computes
    neither the padding nor attention across the longest row's width.

    `data(num_shards, owned_shards) -> {shard: {feature: np.ndarray}}` (see training/data.py);
    `evaluator(model, params, step) -> {metric: float}` runs every `eval_every` steps and its
    metrics drive keep-best checkpointing.
    """
    _write_config(model_dir)
    mesh = partitioning.make_mesh(*mesh_shape)
    # The cheap, error-prone settings first: a bad schedule fails before minutes of data loading.
    schedule = state_lib.make_schedule()
    optimizer = state_lib.make_optimizer(schedule)
    source = _build_source(data, batch_size, seed, data_shards, length_buckets)
    model = model.prepare(model_dir, source)
    model = model.fit_to_data(_max_over_hosts(source.most_loss_tokens_per_row()))
    state, step_fn, frozen = build_step(model, optimizer, schedule, mesh, seed)
    _log_sizes(state, frozen)
    ckpt = checkpointing.Checkpointer(os.path.join(model_dir, CHECKPOINTS))
    state, start, position = _restore_or_init(ckpt, state, source)
    if evaluate_only:
        return _evaluate_only(model, state, start, evaluator, model_dir)
    plan = budget.ExamplePlan(source, train_steps, train_examples, eval_every_examples, train_epochs)
    if patience is not None and (patience < 1 or not ckpt.best_metric or evaluator is None):
        raise ValueError(f"train.patience={patience} needs patience >= 1, an evaluator and "
                         f"Checkpointer.best_metric (got {ckpt.best_metric!r})")
    history = budget.EvalHistory(model_dir, start, _is_main_host())
    cache = (frozen_cache.FrozenCache(model, model_dir, source, frozen, mesh)
             if model.cache_frozen else None)
    logger = TrainLogger(os.path.join(model_dir, "train"), plan.end, start,
                         _is_main_host())
    losses, stopped = [], "budget" if plan.budgeted else "done"
    end = plan.end
    # Any host: only the main host is sure to hold the history file after a restart.
    if _any_host(history.stalled(ckpt.best_metric, ckpt.best_mode, patience)):
        stopped, end = "converged", start
    if start >= end:
        log_info("nothing to train: the run already ended at step %d (%s)", start, stopped)
    clock = _TrainClock(max_train_seconds, float(position.get("train_seconds", 0.0)))
    trained_s = clock.before_s  # training seconds at the last finished step, over all runs
    try:
        with jax.set_mesh(mesh):
            for step in range(start, end):
                batch = _host_batch(source, step)
                model.check_batch(batch)
                device_batch = _global_batch(batch, mesh)
                if cache is not None:
                    device_batch["frozen_hidden"] = cache.hidden(source.row_ids(step),
                                                                 device_batch)
                state, metrics = step_fn(state, device_batch, frozen)
                metrics = jax.device_get(metrics)
                _check_finite(metrics, step, model_dir)
                losses.append(float(metrics["loss"]))
                done = step + 1
                logger.step(done, metrics, log_every)
                out_of_time = _any_host(clock.expired())
                trained_s = clock.used()
                evals = None
                if evaluator is not None and (
                        (eval_every and done % eval_every == 0) or plan.evaluates(done)
                        or out_of_time):
                    with clock.paused():
                        evals = evaluator(model, state.params, done)
                    logger.scalars(done, evals, prefix="eval/")
                    history.add({"step": done, "examples_seen": plan.examples(done),
                                 "train_seconds": round(trained_s, 1), "metrics": evals})
                preempted = _any_host(preemption is not None and preemption.requested)
                converged = evals is not None and _any_host(history.stalled(
                    ckpt.best_metric, ckpt.best_mode, patience))
                ckpt.save(done, state, {**source.position(done),
                                        "examples_seen": plan.examples(done),
                                        "train_seconds": round(trained_s, 3)},
                          metrics=evals, force=preempted or out_of_time or done == plan.end
                          or evals is not None)
                if preempted or out_of_time or converged:
                    stopped = ("preempted" if preempted else "time_limit" if out_of_time
                               else "converged")
                    break
    finally:
        ckpt.wait()
        best_step = ckpt.best_step()
        ckpt.close()
        logger.close()
    done = int(jax.device_get(state.step))
    summary = {"step": done, "examples_seen": plan.examples(done),
               "train_seconds": round(trained_s, 1), "stopped": stopped,
               "best_step": best_step, "evaluations": len(history.records)}
    if _is_main_host() and stopped != "preempted":
        atomic_write_text(os.path.join(model_dir, TRAIN_SUMMARY),
                          json.dumps(summary, indent=1) + "\n")
    return {**summary, "losses": losses}
