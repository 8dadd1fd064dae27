"""Jit-compiled decoding over the decode adapters (`GemmaLM`, `T5LM`): greedy, sampling and beam
search, each one `lax.while_loop` inside one `jax.jit`.

Modules, each importing only those above it:
  * `adapter`     - `DecodeAdapter`, the protocol of what the loops call on a model;
  * `arrays`      - array helpers every part shares (`NEG_INF`, `repeat_rows`, `round_up`);
  * `samplers`    - the next token from logits: greedy, temperature, top-k, top-p;
  * `beam`        - the beam-search loop and its length penalty;
  * `sample_loop` - the greedy and sampling loop;
  * `executables` - compiled loops cached per adapter, and how many there are;
  * `text`        - prompt batches, stop strings and output text;
  * `runner`      - `DecodeConfig`, `Decoded`, `decode_batch` and `generate`.
"""
from lmcor.decode.beam import length_penalty
from lmcor.decode.executables import compiled_count
from lmcor.decode.runner import DecodeConfig, Decoded, decode_batch, generate
from lmcor.decode.text import (cut_at_stop, in_input_order, is_encdec, length_order,
                                pad_prompts, stop_table, texts_of)

__all__ = ["DecodeConfig", "Decoded", "compiled_count", "cut_at_stop", "decode_batch",
           "generate", "in_input_order", "is_encdec", "length_order", "length_penalty",
           "pad_prompts", "stop_table", "texts_of"]
