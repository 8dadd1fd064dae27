"""Between text and the decode loops: prompt batches in, stop tables for the loop, text out."""
from typing import List, Sequence

import numpy as np

from lmcor.decode.arrays import round_up


def stop_table(tokenizer, stop: Sequence[str]) -> np.ndarray:
    """Token ids of each stop string, left-padded with -1 (wildcard) to one width.

    The in-loop check only ends rows early; the exact cut happens on the decoded text, so a stop
    string the model spells with different tokens is still cut, just not stopped early. The table
    is rounded up to 4 rows x 8 columns (unused rows hold -3, which no token equals) so that
    changing the stop strings rarely changes the compiled shape.
    """
    seqs = [s for s in (tokenizer.encode(x) for x in stop if x) if s]
    width = round_up(max([len(s) for s in seqs], default=1), 8)
    table = np.full((round_up(len(seqs), 4), width), -3, np.int32)
    for r, s in enumerate(seqs):
        table[r] = [-1] * (width - len(s)) + list(s)
    return table


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to (not including) the earliest occurrence of any stop string."""
    cuts = [text.find(s) for s in stop if s]
    cuts = [c for c in cuts if c >= 0]
    return text[: min(cuts)] if cuts else text


def is_encdec(lm) -> bool:
    """T5LM takes `encoder_tokens`; decoder-only adapters take left-padded `tokens` + `mask`."""
    flag = getattr(lm, "is_encdec", None)
    return bool(flag) if flag is not None else type(lm).__name__ == "T5LM"


def pad_prompts(token_lists: Sequence[Sequence[int]], *, encdec: bool, pad_id: int,
                bucket: int = 16, rows: int | None = None) -> dict:
    """Adapter batch from token lists; length rounded up to `bucket`, rows padded to `rows`.

    Rounding both keeps the set of compiled shapes small: a new prompt length only recompiles
    when it crosses a bucket boundary.
    """
    rows = rows or len(token_lists)
    if any(len(t) == 0 for t in token_lists):
        raise ValueError("pad_prompts: empty prompt (decoder-only models need at least BOS)")
    width = round_up(max(len(t) for t in token_lists), bucket)
    tokens = np.full((rows, width), 0 if encdec else pad_id, np.int32)
    mask = np.zeros((rows, width), bool)
    for r, ids in enumerate(token_lists):
        span = slice(0, len(ids)) if encdec else slice(width - len(ids), width)
        tokens[r, span], mask[r, span] = ids, True
    for r in range(len(token_lists), rows):  # filler rows copy row 0 so they stay well-formed
        tokens[r], mask[r] = tokens[0], mask[0]
    if encdec:
        return {"encoder_tokens": tokens}
    return {"tokens": tokens, "mask": mask}


def texts_of(tokenizer, decoded, eos_ids: Sequence[int], stop: Sequence[str]):
    """Decoded continuations: tokens up to the row's length, EOS dropped, cut at stop strings.

    `decoded` is a `Decoded` (anything with `tokens` and `lengths` rows)."""
    out = []
    for ids, n in zip(decoded.tokens, decoded.lengths):
        ids = [int(t) for t in ids[: int(n)]]
        while ids and ids[-1] in eos_ids:
            ids.pop()
        out.append(cut_at_stop(tokenizer.decode(ids), stop))
    return out


def length_order(token_lists: Sequence[Sequence[int]], by_length: bool) -> List[int]:
    """The order to decode prompts in: longest first when `by_length` (so each batch pads to
    widths alike and its loop runs about as long for every row: long paragraphs do not hold up
    a batch of short ones), else as given. Stable: equal lengths keep their order."""
    idx = list(range(len(token_lists)))
    return sorted(idx, key=lambda i: -len(token_lists[i])) if by_length else idx


def in_input_order(outputs: Sequence, order: Sequence[int]) -> list:
    """`outputs[j]` belongs to input `order[j]`: the outputs back in input order."""
    out = [None] * len(order)
    for j, i in enumerate(order):
        out[i] = outputs[j]
    return out
