"""`lmcor train`: the T5X-style trainer.

    lmcor train --gin_file=gin/runs/train_corrector.gin --gin_file=gin/tasks/wmt22_en_de.gin \
        --gin.MODEL_DIR="'/tmp/run'" [--gin.TRAIN_STEPS=1000] [--coordinator_address=...]

Gin is the only wiring (`train.*` below, `make_optimizer.*`, `make_schedule.*`, `Checkpointer.*`,
the model and data factories). The state is sharded over a (data, model) mesh by the
logical-axis rules; checkpoints live in MODEL_DIR/checkpoints, TensorBoard in MODEL_DIR/train.
Re-running with the same MODEL_DIR resumes from the latest checkpoint exactly.
"""
import json
import os
import sys
from typing import Callable, Optional

import gin
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from lmcor import config as gin_config
from lmcor import distributed
from lmcor.models import partitioning
from lmcor.training import checkpointing, data as data_lib, state as state_lib, step as step_lib
from lmcor.training import models  # noqa: F401  (registers the model factories with gin)
from lmcor.training.logging import TrainLogger, log_info


class NonFiniteLossError(FloatingPointError):
    pass


def _global_batch(local: dict, mesh) -> dict:
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local.items()}


def _any_host(flag: bool) -> bool:
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _build_source(data_fn: Callable, batch_size: int, seed: int, data_shards: Optional[int]):
    num = data_shards or jax.process_count()
    if num % jax.process_count():
        raise ValueError(f"data_shards={num} must be a multiple of the {jax.process_count()} hosts")
    owned = [s for s in range(num) if s % jax.process_count() == jax.process_index()]
    return data_lib.BatchSource(data_fn(num_shards=num, owned_shards=owned), num, batch_size, seed)


def _restore_or_init(ckpt, state, source):
    latest = ckpt.latest_step()
    if latest is None:
        return state, 0
    state, pos = ckpt.restore(latest, state, expected_position=source.position(latest))
    log_info("resumed from step %d (%d examples seen)", latest, pos["examples_seen"])
    return state, latest


def _check_finite(metrics: dict, step: int, model_dir: str):
    if not bool(metrics["finite"]):
        raise NonFiniteLossError(
            f"step {step}: loss={float(metrics['loss'])} grad_norm={float(metrics['grad_norm'])} "
            f"is not finite; training stopped and this state was not saved (latest good "
            f"checkpoint in {model_dir}/checkpoints). Lower the learning rate, enable z_loss, "
            f"or check the data.")


@gin.configurable(denylist=["preemption"])
def train(model_dir: str = gin.REQUIRED, train_steps: int = gin.REQUIRED, model=gin.REQUIRED,
          data: Callable = gin.REQUIRED, batch_size: int = 8, seed: int = 0,
          mesh_shape=(-1, 1), data_shards: Optional[int] = None, log_every: int = 10,
          eval_every: int = 0, evaluator: Optional[Callable] = None, preemption=None) -> dict:
    """Trains until `train_steps` optimizer updates; returns {"step", "losses", "stopped"}.

    `data(num_shards, owned_shards) -> {shard: {feature: np.ndarray}}` (see training/data.py);
    `evaluator(model, params, step) -> {metric: float}` runs every `eval_every` steps and its
    metrics drive keep-best checkpointing.
    """
    mesh = partitioning.make_mesh(*mesh_shape)
    source = _build_source(data, batch_size, seed, data_shards)
    schedule = state_lib.make_schedule()
    optimizer = state_lib.make_optimizer(schedule)
    state, shardings = state_lib.create_state(model.init_fn, optimizer, mesh, seed, model.rules,
                                              init_params=model.load_pretrained())
    ckpt = checkpointing.Checkpointer(os.path.join(model_dir, "checkpoints"))
    state, start = _restore_or_init(ckpt, state, source)
    step_fn = step_lib.make_train_step(model.logits_fn, optimizer, schedule, shardings, mesh)
    logger = TrainLogger(os.path.join(model_dir, "train"), train_steps, start,
                         distributed.is_main_host())
    losses, stopped = [], "done"
    try:
        with jax.set_mesh(mesh):
            for step in range(start, train_steps):
                state, metrics = step_fn(state, _global_batch(source.batch(step), mesh))
                metrics = jax.device_get(metrics)
                _check_finite(metrics, step, model_dir)
                losses.append(float(metrics["loss"]))
                done = step + 1
                logger.step(done, metrics, log_every)
                evals = None
                if evaluator is not None and eval_every and done % eval_every == 0:
                    evals = evaluator(model, state.params, done)
                    logger.scalars(done, evals, prefix="eval/")
                preempted = _any_host(preemption is not None and preemption.requested)
                ckpt.save(done, state, source.position(done), metrics=evals,
                          force=preempted or done == train_steps or evals is not None)
                if preempted:
                    stopped = "preempted"
                    break
    finally:
        ckpt.close()
        logger.close()
    return {"step": int(jax.device_get(state.step)), "losses": losses, "stopped": stopped}


def run(argv) -> dict:
    """Parses distributed + gin flags, joins the job, trains; returns train()'s summary."""
    dist_kwargs, argv = distributed.split_distributed_flags(list(argv))
    files, bindings, rest = gin_config.split_gin_flags(argv)
    if rest:
        raise ValueError(f"lmcor train: unknown arguments {rest}")
    distributed.initialize(**dist_kwargs)
    gin_config.parse_gin(files, bindings)
    with checkpointing.PreemptionFlag() as flag:
        return train(preemption=flag)


def main(argv=None) -> int:
    summary = run(sys.argv[1:] if argv is None else argv)
    if distributed.is_main_host():
        print(json.dumps({"final_step": summary["step"], "stopped": summary["stopped"],
                          "last_loss": summary["losses"][-1] if summary["losses"] else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
