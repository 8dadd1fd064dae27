"""A corrector's inference settings (Gin: `corrector_settings.*`) and the decode shapes they give.

Every batch is padded to one of a fixed set of shapes: rows to a power of two (`row_bucket`)
and input width to one of `CorrectorSettings.widths`, geometrically spaced. A server compiles
each shape before it takes a request (lmcor.serve.decoder), so it never compiles while serving.
"""
import dataclasses
from typing import Tuple

import gin

from lmcor.data.corrector_input import VARIANTS


class InputTooLongError(ValueError):
    """The corrector input exceeds the configured token limit (the server answers 413)."""

    def __init__(self, num_tokens: int, limit: int):
        super().__init__(f"corrector input has {num_tokens} tokens; the limit is {limit} "
                         f"(corrector_settings.max_input_tokens)")
        self.num_tokens, self.limit = num_tokens, limit


@gin.configurable("corrector_settings")
@dataclasses.dataclass(frozen=True)
class CorrectorSettings:
    """Inference settings (beam size, limits, decode widths); Gin binds them as
    `corrector_settings.beam_size = 2` etc."""
    variant: str = "lmcor"
    beam_size: int = 4
    alpha: float = 0.6
    max_decode_tokens: int = 128
    max_input_tokens: int = 1024
    length_bucket: int = 32
    length_growth: float = 1.25
    # A task-vocabulary corrector reads and writes every piece of the inputs it corrects, not
    # only its training data's (Corrector.correct; `widened_vocabulary`).
    widen_vocab: bool = True
    # Decode the longest inputs first, in batches of like lengths (decode.length_order): for
    # inputs of very different lengths (WMT paragraphs). It changes which inputs share a batch.
    order_by_length: bool = False
    # temperature > 0 samples (beam_size 1) instead of searching: a trained corrector as a
    # candidate source of its own (docs/evaluation.md, "Candidate sources"). One draw per input,
    # from the random stream of `seed` and the input's row in its batch, so a sampled decode
    # repeats exactly at the same batch size; another seed gives another sample.
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    # > 0 lowers the end-of-output logit by this much at every step (decode.DecodeConfig), for
    # a corrector whose outputs stop short of the references (E2E: attributes left out).
    eos_penalty: float = 0.0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"corrector_settings.variant={self.variant!r}; expected one of "
                             f"{VARIANTS}")
        for name in ("beam_size", "max_decode_tokens", "max_input_tokens", "length_bucket",
                     "length_growth"):
            if getattr(self, name) < 1:
                raise ValueError(f"corrector_settings.{name}={getattr(self, name)}; expected >= 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"corrector_settings: temperature={self.temperature}, top_p="
                             f"{self.top_p}; expected temperature >= 0 and 0 < top_p <= 1")
        if self.temperature > 0 and self.beam_size > 1:
            raise ValueError(f"corrector_settings: temperature={self.temperature} samples, "
                             f"beam_size={self.beam_size} searches; set beam_size = 1 to sample")

    @property
    def widths(self) -> Tuple[int, ...]:
        """Input widths a batch is padded to: multiples of `length_bucket`, each at least
        `length_growth` times the one before, up to the first that holds `max_input_tokens`.

        Decode time grows with the padded width and start-up compile time with the number of
        widths; geometric spacing bounds the padding to a fraction (growth - 1) of the input
        while the count of widths stays logarithmic in `max_input_tokens`.
        """
        step = self.length_bucket
        top = -(-self.max_input_tokens // step) * step
        widths = [min(step, top)]
        while widths[-1] < top:
            grown = -(-int(widths[-1] * self.length_growth) // step) * step
            widths.append(min(top, max(widths[-1] + step, grown)))
        return tuple(widths)


def row_bucket(n: int, max_rows: int) -> int:
    """Rows a batch of n is padded to: the next power of two, capped at max_rows."""
    rows = 1
    while rows < n:
        rows *= 2
    return max(n, min(rows, max_rows))


def row_buckets(max_rows: int) -> Tuple[int, ...]:
    """Every row count `row_bucket` gives for batches of 1..max_rows."""
    return tuple(sorted({row_bucket(n, max_rows) for n in range(1, max_rows + 1)}))
