"""Decoder-only training rows in which one input is read once for all of its references.

A corrector's training examples come one per (input, reference): WMT's paragraphs have 2 or 3
references and E2E's MRs up to 35, and the input (source + candidates) is most of each
example's tokens. A grouped row holds the input once, as a shared prefix, followed by one
continuation per reference:

    decoder_input_tokens   BOS i1 .. i(P-1) | iP t1 .. | iP u1 ..     (P = input length)
    decoder_target_tokens  i1 i2 .. iP      | t1 t2 .. | u1 u2 ..
    decoder_loss_weights   0  ...        0  | 1  ...   | 1  ...
    decoder_segment_ids    1  ...        1  | 2  ...   | 3  ...
    decoder_prefix_ids     0  ...        0  | 1  ...   | 1  ...     (the prefix each one reads)
    decoder_positions      0  ...      P-1  | P  ...   | P  ...

Each continuation attends to the prefix and to itself (lmcor.models.gemma `_attention_masks`),
at the positions it would have after the input alone, so its logits are those of the separate
example (tests/test_grouped_rows.py checks it). Each continuation starts with the input's last
token, as the separate example's first target position does. A group that does not fit one row
is split over several, each with the prefix.

`batch_shape` gives the (length, loss positions) a batch of such rows is cut to, so that a
length-grouped batch (lmcor.training.batches, `length_buckets`) computes neither padding nor the
LM head at prefix positions.
"""
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
            "decoder_segment_ids", "decoder_prefix_ids", "decoder_positions")


def _rows_of_group(inputs: Sequence[int], targets: List[Sequence[int]], max_length: int,
                   bos_id: int) -> List[Dict[str, list]]:
    prefix_len = len(inputs)
    lead = inputs[-1] if prefix_len else bos_id
    rows, row = [], None
    for target in targets:
        need = len(target)
        if prefix_len + need > max_length:
            raise ValueError(f"an input of {prefix_len} tokens with a target of {need} does not "
                             f"fit a row of {max_length} (raise the feature lengths)")
        if row is None or len(row["decoder_input_tokens"]) + need > max_length:
            row = {name: [] for name in FEATURES}
            if prefix_len:
                _extend(row, [bos_id, *inputs[:-1]], inputs, 0, 1, 0, range(prefix_len))
            rows.append(row)
        segment = max(row["decoder_segment_ids"], default=0) + 1
        _extend(row, [lead, *target[:-1]], target, 1, segment, 1 if prefix_len else 0,
                range(prefix_len, prefix_len + need))
    return rows


def _extend(row, fed, predicted, weight, segment, prefix, positions):
    n = len(fed)
    row["decoder_input_tokens"] += fed
    row["decoder_target_tokens"] += list(predicted)
    row["decoder_loss_weights"] += [weight] * n
    row["decoder_segment_ids"] += [segment] * n
    row["decoder_prefix_ids"] += [prefix] * n
    row["decoder_positions"] += list(positions)


def group_examples(examples: Iterable[Tuple[Sequence[int], Sequence[int]]],
                   eos_id: int = 1) -> List[Tuple[Tuple[int, ...], List[Tuple[int, ...]]]]:
    """(inputs, targets) token lists -> [(inputs, [targets, ...])], consecutive examples with
    the same inputs in one group (a SeqIO corrector task yields an input's references in a
    row). The inputs' trailing EOS is dropped, as DecoderOnlyFeatureConverter drops it."""
    groups = []
    for inputs, targets in examples:
        inputs = tuple(int(t) for t in inputs)
        if inputs and inputs[-1] == eos_id:
            inputs = inputs[:-1]
        targets = tuple(int(t) for t in targets)
        if groups and groups[-1][0] == inputs:
            groups[-1][1].append(targets)
        else:
            groups.append((inputs, [targets]))
    return groups


def grouped_rows(groups, max_length: int, bos_id: int) -> Dict[str, np.ndarray]:
    """[rows, max_length] arrays (int32; loss weights float32), zero-padded on the right."""
    rows = [r for inputs, targets in groups
            for r in _rows_of_group(inputs, targets, max_length, bos_id)]
    if not rows:
        raise ValueError("no training examples to group")
    out = {}
    for name in FEATURES:
        dtype = np.float32 if name == "decoder_loss_weights" else np.int32
        array = np.zeros((len(rows), max_length), dtype)
        for i, row in enumerate(rows):
            array[i, :len(row[name])] = row[name]
        out[name] = array
    return out


def row_lengths(arrays: Dict[str, np.ndarray]) -> np.ndarray:
    """Tokens in each row: rows are left-aligned, padding has segment id 0."""
    return np.count_nonzero(np.asarray(arrays["decoder_segment_ids"]), axis=1)


def bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `length` tokens."""
    for b in buckets:
        if length <= b:
            return int(b)
    raise ValueError(f"a row of {length} tokens is longer than the largest length bucket "
                     f"{max(buckets)}; add a bucket (train.length_buckets)")


def batch_shape(batch: Dict[str, np.ndarray], buckets: Sequence[int],
                min_loss_positions: int = 64) -> Tuple[int, int]:
    """(row length, loss positions) to cut `batch` to: its longest row's bucket, and its most
    weighted positions in one row rounded up to a power of two (at least `min_loss_positions`,
    at most the row length). Powers of two keep the (length, positions) shapes, one compiled
    step each, to a few per bucket; the head then runs on at most twice the targets."""
    length = bucket(int(row_lengths(batch).max()), buckets)
    weighted = int(np.max(np.count_nonzero(np.asarray(batch["decoder_loss_weights"]) > 0, 1)))
    positions = max(min_loss_positions, 1 << max(weighted - 1, 0).bit_length())
    return length, min(length, positions)


def cut_batch(batch: Dict[str, np.ndarray], length: int, loss_positions: int) -> Dict[str, np.ndarray]:
    """`batch` cut to `length` columns, with `decoder_loss_index` [rows, loss_positions]: each
    row's weighted positions in order, then its unweighted ones (their weight 0 adds nothing)."""
    out = {k: np.ascontiguousarray(v[:, :length]) for k, v in batch.items()}
    weights = out["decoder_loss_weights"]
    if int(np.count_nonzero(weights, axis=1).max(initial=0)) > loss_positions:
        raise ValueError(f"a row has more than {loss_positions} loss positions")
    order = np.argsort(weights <= 0, axis=1, kind="stable")[:, :loss_positions]
    out["decoder_loss_index"] = order.astype(np.int32)
    return out
