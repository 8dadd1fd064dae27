"""A corrector's MODEL_DIR, as `lmcor train` leaves it or as a released adapter folder
(lmcor.checkpoints.released_adapter): its Gin config and what it configures (model,
vocabulary, corrector options and settings), the checks made before loading it, and its trained
params.

A run folder holds Orbax checkpoints in `checkpoints/` (read by lmcor.checkpoints.trained_run)
and the run's Gin config in `config.gin` (T5X's operative-config convention).
"""
import os
from typing import Callable, Optional, Sequence

import gin
import jax
from absl import logging
from flax import linen as nn

from lmcor.checkpoints.trained_run import checkpoint_step, restore_params
from lmcor.data.corrector_input import CorrectorOptions
from lmcor.inference.settings import CorrectorSettings
from lmcor.paths import CHECKPOINTS, RUN_CONFIG, TASK_VOCAB


def parse_run_config(model_dir: str, gin_bindings: Sequence[str] = (),
                     overrides: Optional[Callable[[], None]] = None):
    """Parses MODEL_DIR/config.gin, then `gin_bindings` (Gin statements written by the caller,
    e.g. the evaluation's decode settings), then calls `overrides`, which parses what a command
    line adds (lmcor.cli: --gin_file and --gin flags, with its checks) -> the `train.model`
    reference, or None. A run that saved no config needs bindings or overrides."""
    from lmcor.training import loop  # noqa: F401  (registers `train`: its `model` is read)

    run_config = os.path.join(model_dir, RUN_CONFIG)
    if not os.path.isfile(run_config) and not gin_bindings and overrides is None:
        raise FileNotFoundError(f"{run_config}: no such file; pass the run's --gin_file flags")
    if os.path.isfile(run_config):
        # Absolute: gin tries a relative path under each search folder first and logs an ERROR
        # for each one that lacks it. The run's data factories may live in modules serving
        # never imports, and a run saved by an older checkout may import modules that have moved
        # since; skip them.
        try:
            gin.parse_config_file(os.path.abspath(run_config), skip_unknown=True)
        except Exception as e:  # gin raises several types; the file name is what users need
            raise ValueError(f"bad gin file {run_config}: {e}") from e
    for binding in gin_bindings:
        try:
            gin.parse_config(binding)
        except Exception as e:  # gin's reason is its message's first line; the rest is location
            raise ValueError(f"bad gin binding {binding!r}: "
                             f"{str(e).strip().splitlines()[0]}") from e
    if overrides is not None:
        overrides()
    return bound("train.model")


def bound(key: str):
    """The value Gin binds to `key` (through the macros it reads), None when unbound."""
    try:
        value = gin.query_parameter(key)
        for _ in range(16):  # gin refuses cyclic macros; this only bounds the loop
            # A `%NAME` value is a reference to gin's `macro` configurable in scope NAME.
            if not (isinstance(value, gin.config.ConfigurableReference)
                    and value.configurable.selector == "gin.macro"):
                return value
            macro = value.scoped_selector.rsplit("/", 1)[0]
            value = gin.query_parameter(f"{macro}/gin.macro.value")
    except ValueError:
        pass
    return None


def trained_identity(model_dir: str) -> dict:
    """Which trained weights `trained_params(model_dir)` reads: the checkpoint step for a run
    folder (it moves when the run trains on or a better step is validated), the step and
    weights sha256 for a released adapter."""
    from lmcor.checkpoints import released_adapter

    if released_adapter.is_adapter_dir(model_dir):
        info = released_adapter.manifest(model_dir)
        return {"adapter_step": info["step"], "adapter_sha256": info["sha256"]}
    return {"step": checkpoint_step(os.path.join(model_dir, CHECKPOINTS))}


def trained_params(model_dir: str, model, step: Optional[int] = None):
    """The trained params of a run folder (lmcor.checkpoints.trained_run: the step asked for,
    else the best by validation, else the latest) or of a released adapter folder
    (lmcor.checkpoints.released_adapter), which holds one step only."""
    from lmcor.checkpoints import released_adapter

    abstract = nn.unbox(jax.eval_shape(model.init_fn, jax.random.key(0)))
    if not released_adapter.is_adapter_dir(model_dir):
        return restore_params(os.path.join(model_dir, CHECKPOINTS), abstract, step)
    info = released_adapter.manifest(model_dir)
    if step is not None and step != info["step"]:
        raise ValueError(f"{model_dir}: a released adapter holds step {info['step']} only, "
                         f"not {step}")
    logging.info("corrector: adapter of step %d from %s", info["step"], model_dir)
    return released_adapter.load_adapter(model_dir, abstract)


def configured_parts(model_dir: str, gin_bindings: Sequence[str] = (),
                     overrides: Optional[Callable[[], None]] = None):
    """(model factory result, vocabulary, CorrectorOptions, CorrectorSettings) from Gin."""
    from lmcor.data.vocab import task_vocabulary
    from lmcor.training import builders

    ref = parse_run_config(model_dir, gin_bindings, overrides)
    model = ref.scoped_configurable_fn() if ref is not None else builders.t5_model()
    return model, task_vocabulary(), CorrectorOptions(), CorrectorSettings()


def check_model_dir(model_dir: str, gin_bindings: Sequence[str] = (),
                    overrides: Optional[Callable[[], None]] = None) -> None:
    """Refuses, naming the file, a MODEL_DIR that cannot be decoded, from what a load would
    find only after minutes of work: no finished checkpoint, released weights that are not the
    ones released (sha256), a config that does not parse, a task vocabulary that is missing or
    damaged, base weights other than the run's (base_weights.json). Reads no weights (hashes
    the base file); leaves the run's config parsed in Gin."""
    from lmcor.checkpoints import released_adapter
    from lmcor.data.task_vocab import TaskVocab
    from lmcor.training import peft

    if released_adapter.is_adapter_dir(model_dir):
        released_adapter.verify(model_dir)
    else:
        checkpoint_step(os.path.join(model_dir, CHECKPOINTS))
    model = parse_run_config(model_dir, gin_bindings, overrides)
    factory = model.configurable.name if model is not None else None
    if factory != "gemma_model":
        return
    if bound("gemma_model.vocab") == "task":
        if not TaskVocab.exists(model_dir):
            raise FileNotFoundError(f"{os.path.join(model_dir, TASK_VOCAB)}: no such file "
                                    "(the run's config.gin sets gemma_model.vocab = 'task')")
        TaskVocab.load(model_dir)
    base = _configured_base()
    if base is not None:
        peft.check_base(model_dir, peft.base_identity(base))


def _configured_base() -> Optional[str]:
    """The file or folder of the base weights gemma_model loads (builders.gemma_model's spec)."""
    from lmcor.checkpoints.bundled import BUNDLED
    from lmcor.checkpoints.loader import gemma_checkpoint

    gguf, safetensors = bound("gemma_model.gguf"), bound("gemma_model.safetensors")
    if gguf:
        spec = BUNDLED if gguf == "bundled" else f"gguf:{gguf}"
    elif safetensors:
        spec = f"safetensors:{safetensors}"
    else:
        return None
    return gemma_checkpoint(spec, "gemma_model.gguf" if gguf else "gemma_model.safetensors").path
