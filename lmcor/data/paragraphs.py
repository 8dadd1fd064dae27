"""Paragraph-length records from consecutive sentence-level records of one document.

WMT23's test set is paragraph-level (one segment is a paragraph, median 41 source words),
while wmt21/wmt22 are sentence-level (17-24 words on average): a corrector trained on
sentences learns to write one sentence and stops early on a paragraph. `join_paragraphs`
concatenates runs of consecutive records into paragraphs whose source lengths are drawn from a
target distribution (e.g. wmt23's validation paragraphs), never across a document boundary,
with every reference and every system's candidate joined over the same run, so the pool stays
aligned.

The sentence-level sets carry no document ids; `document_starts` marks a record as a new
document when its source reads as a headline: short, and not ending like a sentence.
"""
from typing import Any, Dict, Iterator, List, Sequence

import numpy as np

_SENTENCE_END = tuple('.!?:;"\'”’»)…')
HEADLINE_MAX_WORDS = 25


def words(text: str) -> int:
    return len(text.split())


def document_starts(sources: Sequence[str]) -> List[bool]:
    """True where a new document begins: the first record, and every headline-like source."""
    starts = []
    for i, text in enumerate(sources):
        text = text.strip()
        headline = bool(text) and not text.endswith(_SENTENCE_END) and words(text) <= HEADLINE_MAX_WORDS
        starts.append(i == 0 or headline)
    return starts


def _join(parts: Sequence[str]) -> str:
    return " ".join(p.strip() for p in parts if p.strip())


def _merge(run: Sequence[Dict[str, Any]], first_index: int) -> Dict[str, Any]:
    head = run[0]
    n_refs = len(head["references"])
    if any(len(r["references"]) != n_refs for r in run):
        raise ValueError(f"record {head['id']!r}: the records of one paragraph have different "
                         "numbers of references")
    generators = [c["generator"] for c in head["candidates"]]
    candidates = []
    for k, generator in enumerate(generators):
        texts = []
        for r in run:
            if [c["generator"] for c in r["candidates"]] != generators:
                raise ValueError(f"record {r['id']!r}: its systems differ from {head['id']!r}'s; "
                                 "a paragraph needs every system aligned")
            texts.append(r["candidates"][k]["text"])
        candidates.append({**head["candidates"][k], "text": _join(texts)})
    last = first_index + len(run) - 1
    meta = {**head.get("meta", {}), "segments": [first_index, last],
            "segment_ids": [r["id"] for r in run]}
    return {"id": f"{head['id']}+{len(run) - 1}", "source": _join([r["source"] for r in run]),
            "references": [_join([r["references"][j] for r in run]) for j in range(n_refs)],
            "candidates": candidates, "meta": meta}


def join_paragraphs(records: Sequence[Dict[str, Any]], target_words: Sequence[int],
                    seed: int = 0) -> Iterator[Dict[str, Any]]:
    """Paragraph records over `records` (in order): each takes consecutive records of one
    document until its source has at least a length drawn from `target_words`, or the
    document ends. Deterministic for a seed."""
    if not len(target_words):
        raise ValueError("join_paragraphs: target_words is empty")
    rng = np.random.default_rng(seed)
    starts = document_starts([r["source"] for r in records])
    i = 0
    while i < len(records):
        want, run, have = int(rng.choice(target_words)), [records[i]], words(records[i]["source"])
        j = i + 1
        while j < len(records) and not starts[j] and have < want:
            run.append(records[j])
            have += words(records[j]["source"])
            j += 1
        yield _merge(run, i)
        i = j
