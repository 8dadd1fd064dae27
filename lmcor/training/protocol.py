"""What the trainer, its evaluation and MODEL_DIR loading call on a model family: the
`TrainModel` protocol (lmcor.training.builders implements it for T5 and Gemma 3).

The methods with a body here are what a model does that trains every parameter and needs
nothing from the data or the run folder; a family subclasses the protocol to take them, and
overrides what it needs.
"""
from typing import Any, Optional, Protocol

from lmcor.decode.adapter import DecodeAdapter


class TrainModel(Protocol):
    config: Any  # the module's config (T5Config, GemmaConfig)
    rules: tuple  # logical axis -> mesh axis rules (lmcor.models.partitioning)
    kind: str  # "encdec" or "decoder"
    # Whether lmcor.training.frozen_cache reuses the frozen bottom stack's output (via
    # `prefix_fn(frozen, batch)`, which such a model then provides).
    cache_frozen: bool = False
    # The base's whole-vocabulary embedding, for a model cut to a task vocabulary: decodes read
    # the rows of input pieces the task vocabulary lacks from it (widen_task_vocab).
    base_embedding: Any = None

    def init_fn(self, rng) -> Any:
        """The boxed parameters that train, freshly initialised."""
        ...

    def load_pretrained(self) -> Optional[Any]:
        """Initial values of the trained parameters, or None for `init_fn`'s."""
        ...

    def loss_inputs(self, params, batch: dict, rng=None, frozen=None) -> tuple:
        """(logits, targets, weights) of a feature-converter batch; `rng` enables dropout."""
        ...

    def decode_adapter(self) -> DecodeAdapter:
        """The adapter that decodes `decode_params(params)` (one object per model, so that
        decoding's compiled loops are reused)."""
        ...

    def decode_params(self, params) -> Any:
        """Plain params for `decode_adapter()` from the trained ones."""
        return params

    def place_frozen(self, mesh) -> tuple:
        """(params that do not train, placed on `mesh`, their shardings), or (None, None)."""
        return None, None

    def check_batch(self, batch: dict) -> None:
        """Raises for a training batch the model cannot take; this default takes every one."""
        return None

    def fit_to_data(self, most_loss_tokens: int) -> "TrainModel":
        """The model with settings that depend on the training rows resolved."""
        return self

    def prepare(self, model_dir: str, source) -> "TrainModel":
        """The model fitted to a run about to train into `model_dir` on `source`'s rows."""
        return self

    def attach(self, model_dir: str) -> "TrainModel":
        """The model as the finished run in `model_dir` trained it (for inference)."""
        return self
