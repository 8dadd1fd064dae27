"""Pool record -> corrector input text: candidate selection, the input template, the token budget.

The corrector input is `source: {src} <sep> candidates: {c1} <sep> {c2} ...`. Which candidates,
how many, in what order and how much of each fits are Gin-configurable (`corrector_options`).
`build_corrector_input` is what the SeqIO preprocessor (`preprocessors.corrector_example`) runs
per example and what serving's corrector runs per request, so both see exactly the same text.
Pure Python (no TensorFlow), so serving can build inputs without loading it.

Budget: when `max_input_tokens` is set, what the template leaves is shared by the source and the
candidates by water-filling: short texts keep every token, long ones split the remainder
equally, candidates capped at `max_candidate_tokens`. So every kept candidate keeps at least one
token; only when the budget is smaller than the number of texts are trailing candidates
dropped, and that is counted and logged. In a SeqIO task the budget is at most the `inputs`
sequence length, so SeqIO's own (uncounted) trimming never cuts anything.
"""
import dataclasses
import random
import threading
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import gin
from absl import logging

VARIANTS = ("finetune", "lmcor", "lmcor_single")
# A comparison table's row for the corrector trained on each variant, in table order: the one
# spelling every table, report and pipeline reads.
ROW_NAMES = {"finetune": "fine-tuned", "lmcor_single": "LMCor single", "lmcor": "LMCor"}
SELECTIONS = ("greedy_first", "random", "all")
ORDERS = ("fixed", "shuffled")


@gin.configurable("corrector_options")
@dataclasses.dataclass(frozen=True)
class CorrectorOptions:
    """How a pool record becomes corrector input; Gin binds it as `corrector_options.k = 3`
    etc., read when a dataset is built.

    `output_marker` ends every input (e.g. "<sep> output:"). A decoder-only corrector needs it:
    there the output continues the input text, and an input ending in a candidate's final "."
    leaves a pretrained LM predicting end-of-text, i.e. an empty correction."""
    k: int = 5
    selection: str = "greedy_first"
    order: str = "fixed"
    seed: int = 0
    dedupe: bool = True
    separator: str = "<sep>"
    generators: Optional[Tuple[str, ...]] = None
    max_input_tokens: Optional[int] = None
    max_candidate_tokens: Optional[int] = None
    output_marker: str = ""
    # Training only: the chance that one candidate, at a random place, is replaced by another
    # reference of the same input (never the example's target). A corrector that has only seen
    # candidates worse than its own output learns to rewrite every candidate; this shows it
    # good ones to keep. Only training splits carry the other references (`peer_references`).
    reference_candidate: float = 0.0

    def __post_init__(self):
        if self.generators is not None:  # a Gin list, kept hashable like the other fields
            object.__setattr__(self, "generators", tuple(self.generators))
        if self.selection not in SELECTIONS:
            raise ValueError(f"corrector_options.selection={self.selection!r}; expected one of {SELECTIONS}")
        if self.order not in ORDERS:
            raise ValueError(f"corrector_options.order={self.order!r}; expected one of {ORDERS}")
        if self.k < 1:
            raise ValueError(f"corrector_options.k={self.k}; expected >= 1")
        if not 0.0 <= self.reference_candidate <= 1.0:
            raise ValueError(f"corrector_options.reference_candidate={self.reference_candidate}; "
                             "expected a probability in [0, 1]")
        for name in ("max_input_tokens", "max_candidate_tokens"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"corrector_options.{name}={value}; expected >= 1 or None")


@dataclasses.dataclass
class TruncationReport:
    """What the budget removed from one example (or, summed, from many)."""

    source_tokens_removed: int = 0
    candidate_tokens_removed: int = 0
    truncated_candidates: int = 0
    dropped_candidates: int = 0

    @property
    def truncated_tokens(self) -> int:
        return self.source_tokens_removed + self.candidate_tokens_removed

    def add(self, other: "TruncationReport") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class _Totals:
    """Process-wide truncation counters, logged periodically (tf.data runs us on many threads)."""

    LOG_EVERY = 1000

    def __init__(self):
        self.lock = threading.Lock()
        self.examples = 0
        self.report = TruncationReport()

    def add(self, report: TruncationReport) -> None:
        with self.lock:
            self.examples += 1
            self.report.add(report)
            due = self.examples % self.LOG_EVERY == 0
        if report.dropped_candidates:
            logging.log_first_n(logging.WARNING, "token budget too small: dropped %d trailing "
                                "candidate(s) of one example (raise max_input_tokens)", 10,
                                report.dropped_candidates)
        if due:
            log_truncation_totals()


TOTALS = _Totals()


def log_truncation_totals() -> Dict[str, int]:
    """Log (and return) the truncation counts summed over every example built so far."""
    with TOTALS.lock:
        r = TOTALS.report
        counts = {"examples": TOTALS.examples, "truncated_tokens": r.truncated_tokens,
                  "source_tokens_removed": r.source_tokens_removed,
                  "candidate_tokens_removed": r.candidate_tokens_removed,
                  "truncated_candidates": r.truncated_candidates,
                  "dropped_candidates": r.dropped_candidates}
    logging.info("corrector inputs: %s", counts)
    return counts


def _rng(opts: CorrectorOptions, example_id: str, purpose: str) -> random.Random:
    # Seeded per example id, so the choice does not depend on read order, sharding or source.
    return random.Random(f"{opts.seed}:{purpose}:{example_id}")


def _dedupe(cands: List[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
    seen, kept = set(), []
    for c in cands:
        key = c["text"].strip()
        if key not in seen:
            seen.add(key)
            kept.append(c)
    return kept


def select_candidates(record: Mapping[str, Any], variant: str,
                      opts: CorrectorOptions) -> List[str]:
    """The candidate texts that go into the input, in input order."""
    if variant == "finetune":
        return []
    cands = [c for c in record["candidates"]
             if opts.generators is None or c["generator"] in opts.generators]
    if variant == "lmcor_single":
        greedy = [c for c in cands if c["decoding"] == "greedy"]
        if not greedy:
            raise ValueError(f"record {record['id']!r}: no greedy candidate"
                             + (f" from generators {list(opts.generators)}" if opts.generators else ""))
        # "random": one generator's output per example, so a corrector trained on many systems
        # (WMT) does not learn to correct only the first one.
        pick = _rng(opts, record["id"], "single").choice(greedy) if opts.selection == "random" \
            else greedy[0]
        return [pick["text"]]
    if not cands:
        raise ValueError(f"record {record['id']!r}: no candidates for an lmcor task (point the task "
                         "at a pool written by `lmcor sample`, or check corrector_options.generators)")
    if opts.dedupe:
        cands = _dedupe(cands)
    if opts.selection == "greedy_first":
        cands = sorted(cands, key=lambda c: c["decoding"] != "greedy")[:opts.k]
    elif opts.selection == "random":
        cands = list(cands)
        _rng(opts, record["id"], "select").shuffle(cands)
        cands = cands[:opts.k]
    if opts.order == "shuffled":
        cands = list(cands)
        _rng(opts, record["id"], "order").shuffle(cands)
    return [c["text"] for c in cands]


def plant_peer_reference(record: Mapping[str, Any], cands: List[str],
                         opts: CorrectorOptions) -> List[str]:
    """`cands` with one of them replaced, with probability `opts.reference_candidate`, by one
    of the record's `peer_references` (the references that are not its target). Seeded by the
    record id and target, so each (input, reference) example draws its own."""
    peers = record.get("peer_references") or ()
    if not (cands and peers and opts.reference_candidate):
        return cands
    rng = _rng(opts, f"{record['id']}:{record['references'][0]}", "reference")
    if rng.random() >= opts.reference_candidate:
        return cands
    out = list(cands)
    out[rng.randrange(len(out))] = rng.choice(list(peers))
    return out


def format_input(source: str, candidates: Optional[Sequence[str]], separator: str,
                 marker: str = "") -> str:
    """`source: S` (no-candidate baseline) or `source: S <sep> candidates: c1 <sep> c2`, then
    ` marker` when one is given."""
    if candidates is None:
        text = f"source: {source}"
    else:
        text = f"source: {source} {separator} candidates: " + f" {separator} ".join(candidates)
    return f"{text} {marker}" if marker else text


def water_fill(lengths: Sequence[int], budget: int) -> List[int]:
    """Split `budget` so short items keep all their tokens and long ones share the rest equally."""
    alloc = [0] * len(lengths)
    remaining = budget
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for pos, i in enumerate(order):
        alloc[i] = min(lengths[i], remaining // (len(lengths) - pos))
        remaining -= alloc[i]
    return alloc


def _plan(src_len: int, cand_lens: List[int], opts: CorrectorOptions,
          overhead: Callable[[int], int]) -> Tuple[int, int, List[int]]:
    """(kept source tokens, number of kept candidates, per-candidate token allocation)."""
    cap = opts.max_candidate_tokens or opts.max_input_tokens
    lens = [min(n, cap) for n in cand_lens]
    for n in range(len(lens), -1, -1):
        items = [src_len] + lens[:n]
        budget = opts.max_input_tokens - overhead(n)
        if budget >= sum(1 for x in items if x):
            alloc = water_fill(items, budget)
            return alloc[0], n, alloc[1:]
    raise AssertionError("unreachable: _truncate checked that the source alone fits")


def _cut(vocab, ids: List[int], allowed: int) -> Tuple[str, int]:
    """Text of the longest prefix of `ids` that re-tokenizes to at most `allowed` (>= 1) tokens.

    Decoding a token prefix and re-encoding it can segment the cut word differently, so the
    length is measured on the text that is actually kept.
    """
    for n in range(min(allowed, len(ids)), 0, -1):
        text = vocab.decode(ids[:n])
        length = len(vocab.encode(text))
        if 1 <= length <= allowed:
            return text, length
    text = vocab.decode(ids[:1])
    return text, len(vocab.encode(text))


def _truncate(vocab, source: str, cands: List[str], opts: CorrectorOptions,
              finetune: bool) -> Tuple[str, List[str], TruncationReport]:
    src_ids = list(vocab.encode(source))
    cand_ids = [list(vocab.encode(c)) for c in cands]

    def overhead(n: int) -> int:
        return len(vocab.encode(format_input("", None if finetune else [""] * n, opts.separator,
                                              opts.output_marker)))

    if opts.max_input_tokens - overhead(0) < min(len(src_ids), 1):
        raise ValueError(f"corrector_options.max_input_tokens={opts.max_input_tokens} leaves no room "
                         f"for text: the template alone takes {overhead(0)} tokens")
    src_keep, n, alloc = _plan(len(src_ids), [len(c) for c in cand_ids], opts, overhead)
    report = TruncationReport(dropped_candidates=len(cands) - n)
    new_source = source
    if src_keep < len(src_ids):
        new_source, length = _cut(vocab, src_ids, src_keep) if src_keep else ("", 0)
        report.source_tokens_removed = len(src_ids) - length
    kept = []
    for text, ids, allowed in zip(cands, cand_ids, alloc):
        if allowed < len(ids):
            text, length = _cut(vocab, ids, allowed)
            report.truncated_candidates += 1
            report.candidate_tokens_removed += len(ids) - length
        kept.append(text)
    return new_source, kept, report


def build_corrector_input(record: Mapping[str, Any], variant: str,
                          opts: Optional[CorrectorOptions] = None, vocab=None,
                          allow_no_candidates: bool = False) -> Tuple[str, TruncationReport]:
    """The corrector's input text for one pool record, and what the token budget removed.

    `vocab` (anything with encode/decode, e.g. a seqio vocabulary) is needed only when
    `opts.max_input_tokens` is set. A record with no candidates at all (the pool format allows
    it) is refused unless `allow_no_candidates`: then it reads its source alone, as the
    fine-tuned baseline does (inference has nothing better to give; training data should).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown task variant {variant!r}; expected one of {VARIANTS}")
    opts = opts or CorrectorOptions()
    source_only = variant == "finetune" or (allow_no_candidates and not record["candidates"])
    cands = [] if source_only else plant_peer_reference(
        record, select_candidates(record, variant, opts), opts)
    if opts.max_input_tokens is None:
        text, report = format_input(record["source"], None if source_only else cands,
                                    opts.separator, opts.output_marker), TruncationReport()
    elif vocab is None:
        raise ValueError("corrector_options.max_input_tokens needs a vocabulary to count tokens")
    else:
        text, report = _fit(vocab, record["source"], cands, opts, source_only)
    TOTALS.add(report)
    return text, report


def _fit(vocab, source: str, cands: List[str], opts: CorrectorOptions,
         finetune: bool) -> Tuple[str, TruncationReport]:
    # Texts are measured one by one; joined, they can tokenize a little longer. Shrink the
    # budget by the excess until the whole input fits (one retry is the norm).
    whole = format_input(source, None if finetune else cands, opts.separator, opts.output_marker)
    if len(vocab.encode(whole)) <= opts.max_input_tokens:
        return whole, TruncationReport()  # the common case: one encode, nothing to cut
    budget = opts.max_input_tokens
    for _ in range(8):
        src, kept, report = _truncate(vocab, source, cands,
                                      dataclasses.replace(opts, max_input_tokens=budget), finetune)
        text = format_input(src, None if finetune else kept, opts.separator, opts.output_marker)
        excess = len(vocab.encode(text)) - opts.max_input_tokens
        if excess <= 0:
            return text, report
        budget -= excess
    raise ValueError(f"could not fit an input into max_input_tokens={opts.max_input_tokens}")
