"""What every decode loop calls on a model: the decode adapter protocol.

`lmcor.models.gemma.GemmaLM` (decoder-only, left-padded `tokens` + `mask`) and
`lmcor.models.t5.T5LM` (encoder-decoder, `encoder_tokens`) satisfy it;
`lmcor.checkpoints.loader.decode_adapter` makes one for a module or config.
Two members are optional, read with `getattr`: `is_encdec` (`text.is_encdec`
falls back on the class name) and `vocab_map`, a `TaskVocab` for a model with a task vocabulary,
whose ids `runner.decode_batch` maps in and out around the jitted loop.
"""
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class DecodeAdapter(Protocol):
    eos_id: int
    pad_id: int
    vocab_size: int

    def prefill(self, params: Any, batch: dict, max_new_tokens: int) -> tuple[Any, Any]:
        """(logits of the first new token [B, V], cache with room for `max_new_tokens`)."""

    def step(self, params: Any, tokens: Any, cache: Any) -> tuple[Any, Any]:
        """(logits of the token after `tokens` [B], the cache with `tokens` written)."""
