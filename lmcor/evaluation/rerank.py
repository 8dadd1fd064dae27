"""Pool baselines without a trained model: the LLM's greedy output, a random sample, MBR
reranking, the oracle-best candidate, and the best single generator.

MBR picks, per example, the candidate with the highest summed utility against every *other*
candidate of the pool (the pool stands in for samples of the model's distribution; a candidate
is not its own pseudo-reference). The oracle picks the candidate with the highest sentence-level
score against the example's references: an upper bound for any reranker of that pool.

Sentence chrF is computed from character n-gram count matrices, one per order and example, so a
pool of k candidates costs one n-gram extraction per candidate rather than one per pair, and
all k*k scores come out of a few numpy reductions (a WMT system pool in seconds, not minutes);
the values are sacreBLEU's sentence chrF (tests/test_rerank.py compares them). Sentence BLEU is
sacreBLEU's `sentence_score` with effective order.
"""
import hashlib
import random
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from sacrebleu.metrics import BLEU
from tqdm import tqdm

UTILITIES = ("chrf", "bleu")
CHRF_ORDER, CHRF_BETA = 6, 2  # sacreBLEU's chrF defaults (chrF2, character 6-grams)
_BLEU = BLEU(effective_order=True)


def _ngram_keys(windows: np.ndarray, alphabet: int) -> np.ndarray:
    """One sortable value per n-gram (row of `windows`, dense character ids < alphabet): an
    integer in base `alphabet` when it fits in 63 bits, else the raw bytes."""
    n = windows.shape[1]
    if alphabet ** n < 2 ** 63:
        return windows.astype(np.int64) @ (alphabet ** np.arange(n - 1, -1, -1, dtype=np.int64))
    return np.ascontiguousarray(windows).view(np.dtype((np.void, windows.itemsize * n))).ravel()


def _count_matrices(texts: Sequence[str]) -> List[np.ndarray]:
    """Per chrF order n, a [len(texts), vocabulary] matrix of character n-gram counts.

    Whitespace is removed first, as sacreBLEU's chrF does. Characters are renumbered densely
    per call so that an n-gram packs into one integer key for numpy's unique().
    """
    codes = [np.frombuffer("".join(t.split()).encode("utf-32-le"), dtype=np.uint32)
             for t in texts]
    text_of = np.repeat(np.arange(len(texts)), [len(c) for c in codes])
    alphabet, dense = np.unique(np.concatenate(codes + [np.zeros(0, np.uint32)]),
                                return_inverse=True)
    dense = dense.ravel().astype(np.uint32)
    mats = []
    for n in range(1, CHRF_ORDER + 1):
        if len(dense) >= n:
            # Windows over the concatenation; keep those that do not cross two texts.
            inside = text_of[:len(dense) - n + 1] == text_of[n - 1:]
            windows = np.lib.stride_tricks.sliding_window_view(dense, n)[inside]
            rows = text_of[:len(dense) - n + 1][inside]
        else:
            windows, rows = np.zeros((0, n), np.uint32), np.zeros(0, np.int64)
        keys = _ngram_keys(windows, max(len(alphabet), 1))
        ids = np.unique(keys, return_inverse=True)[1].ravel()
        vocab = int(ids.max()) + 1 if len(ids) else 1
        mats.append(np.bincount(rows * vocab + ids, minlength=len(texts) * vocab)
                    .reshape(len(texts), vocab))
    return mats


def _chrf_f_scores(hyp: np.ndarray, ref: np.ndarray, match: np.ndarray) -> np.ndarray:
    """sacreBLEU's sentence chrF (effective-order averaging of precision and recall over the
    orders that have n-grams on both sides) from [..., orders] totals and matches."""
    valid = (hyp > 0) & (ref > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(valid, match / np.maximum(hyp, 1), 0.0).sum(-1)
        rec = np.where(valid, match / np.maximum(ref, 1), 0.0).sum(-1)
    orders = valid.sum(-1)
    prec, rec = prec / np.maximum(orders, 1), rec / np.maximum(orders, 1)
    beta2 = CHRF_BETA ** 2
    denom = beta2 * prec + rec
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(denom > 0, (1 + beta2) * prec * rec / denom, 0.0)
    return 100 * score


def _chrf_from_matrices(mats: List[np.ndarray], hyp_rows: Sequence[int],
                        ref_rows: Sequence[int]) -> np.ndarray:
    """[len(hyp_rows), len(ref_rows)] sentence chrF of each hypothesis row against each ref row."""
    hyp_tot, ref_tot, match = [], [], []
    for mat in mats:
        h, r = mat[list(hyp_rows)], mat[list(ref_rows)]
        match.append(np.minimum(h[:, None, :], r[None, :, :]).sum(-1))
        hyp_tot.append(h.sum(-1))
        ref_tot.append(r.sum(-1))
    hyp = np.stack(hyp_tot, -1)[:, None, :]
    ref = np.stack(ref_tot, -1)[None, :, :]
    return _chrf_f_scores(hyp, ref, np.stack(match, -1))


def sentence_scores(hyps: Sequence[str], refs: Sequence[str], utility: str) -> np.ndarray:
    """[len(hyps), len(refs)] sentence-level utility of every hypothesis against every text."""
    if utility == "chrf":
        mats = _count_matrices(list(hyps) + list(refs))
        return _chrf_from_matrices(mats, range(len(hyps)), range(len(hyps), len(hyps) + len(refs)))
    if utility == "bleu":
        return np.asarray([[_BLEU.sentence_score(h, [r]).score for r in refs] for h in hyps])
    raise ValueError(f"unknown utility {utility!r}; expected one of {UTILITIES}")


def mbr_index(candidates: Sequence[str], utility: str = "chrf") -> int:
    """Index of the candidate with the highest summed utility against the other candidates."""
    if not candidates:
        raise ValueError("MBR needs at least one candidate")
    if len(candidates) == 1:
        return 0
    util = sentence_scores(candidates, candidates, utility)
    np.fill_diagonal(util, 0.0)
    return int(util.sum(axis=1).argmax())  # argmax keeps the first of ties: pool order decides


def oracle_index(candidates: Sequence[str], references: Sequence[str], utility: str = "chrf") -> int:
    """Index of the candidate scoring best against its closest reference."""
    if not candidates:
        raise ValueError("the oracle needs at least one candidate")
    if not references:
        raise ValueError("the oracle needs at least one reference")
    return int(sentence_scores(candidates, references, utility).max(axis=1).argmax())


# ---------------------------------------------------------------------- rows over a pool


# A record whose pool holds no candidate (docs/pool_format.md allows it) has nothing to pick
# from: every pool row outputs this for it, and `lmcor evaluate` counts such records in a note.
NO_CANDIDATE_OUTPUT = ""


class NoGreedyCandidate(ValueError):
    """A record with candidates, none of them greedy (from the generator asked for)."""

    def __init__(self, record_id: str, generator: Optional[str]):
        super().__init__(f"record {record_id!r}: field 'candidates': no greedy candidate"
                         + (f" from generator {generator!r}" if generator else ""))
        self.record_id = record_id


def _texts(rec: Mapping, generators: Optional[Sequence[str]] = None) -> List[str]:
    if not rec["candidates"]:
        return [NO_CANDIDATE_OUTPUT]
    cands = rec["candidates"]
    if generators is not None:
        cands = [c for c in cands if c["generator"] in generators]
    if not cands:
        raise ValueError(f"record {rec['id']!r}: field 'candidates': no candidate"
                         + (f" from generators {list(generators)}" if generators else ""))
    return [c["text"] for c in cands]


def greedy_outputs(records: Sequence[Mapping], generator: Optional[str] = None) -> List[str]:
    """Per record, the first greedy candidate (of `generator` if given): the LLM-greedy row."""
    out = []
    for rec in records:
        if not rec["candidates"]:
            out.append(NO_CANDIDATE_OUTPUT)
            continue
        found = [c["text"] for c in rec["candidates"] if c["decoding"] == "greedy"
                 and (generator is None or c["generator"] == generator)]
        if not found:
            raise NoGreedyCandidate(rec["id"], generator)
        out.append(found[0])
    return out


def random_outputs(records: Sequence[Mapping], seed: int = 0) -> List[str]:
    """Per record, one sampled candidate drawn at random (any candidate when none was sampled,
    as in WMT system pools). Seeded by (seed, record id): independent of order and sharding."""
    out = []
    for rec in records:
        cands = [c["text"] for c in rec["candidates"] if c["decoding"] == "sample"]
        cands = cands or _texts(rec)
        key = hashlib.sha256(f"{seed}:{rec['id']}".encode("utf-8")).hexdigest()
        out.append(random.Random(int(key[:16], 16)).choice(cands))
    return out


def mbr_outputs(records: Sequence[Mapping], utility: str = "chrf",
                generators: Optional[Sequence[str]] = None, progress: bool = True) -> List[str]:
    out = []
    for rec in tqdm(records, desc=f"MBR ({utility})", unit="ex", disable=not progress):
        texts = _texts(rec, generators)
        out.append(texts[mbr_index(texts, utility)])
    return out


def oracle_outputs(records: Sequence[Mapping], utility: str = "chrf",
                   max_references: Optional[int] = None,
                   generators: Optional[Sequence[str]] = None, progress: bool = True) -> List[str]:
    out = []
    for rec in tqdm(records, desc=f"oracle ({utility})", unit="ex", disable=not progress):
        texts = _texts(rec, generators)
        refs = rec["references"][:max_references]
        out.append(texts[oracle_index(texts, refs, utility)])
    return out


def generator_outputs(records: Sequence[Mapping]) -> Dict[str, List[str]]:
    """Each generator's output per record (its first candidate), for generators that produced
    a candidate for every record that has any: the single systems of a WMT pool."""
    pooled = [r for r in records if r["candidates"]]
    names = list(dict.fromkeys(c["generator"] for c in pooled[0]["candidates"])) if pooled else []
    out: Dict[str, List[str]] = {}
    for name in names:
        texts = [[c["text"] for c in r["candidates"] if c["generator"] == name]
                 or ([NO_CANDIDATE_OUTPUT] if not r["candidates"] else []) for r in records]
        if all(texts):
            out[name] = [t[0] for t in texts]
    return out
