"""A table's main metric per group of test inputs, e.g. E2E by number of attributes: where a
corrector gains or loses (long MRs need two or three sentences; a corrector that stops after
one loses there first).

A breakdown maps a pool record to a group label; `lmcor evaluate` scores every row on each
group's records (corpus level, the table's main metric) and writes the result beside the
table (results.json "breakdown", and a second table in results.md).
"""
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

_E2E_ATTRIBUTE = re.compile(r"\w+\[[^\]]*\]")
# E2E's cleaned MRs have 1 to 10 attributes; few have fewer than 5 or more than 7.
_E2E_GROUPS = (("2–4", range(0, 5)), ("5", range(5, 6)), ("6", range(6, 7)), ("7", range(7, 8)),
               ("8–10", range(8, 100)))


def e2e_attributes(record: Mapping) -> str:
    n = len(_E2E_ATTRIBUTE.findall(record["source"]))
    return next(label for label, counts in _E2E_GROUPS if n in counts)


# WMT paragraphs run from a few words to several hundred (wmt23: median 41, mean 62): a
# corrector that handles short segments can still lose on the long ones.
_SOURCE_WORDS = (("≤ 25", range(0, 26)), ("26–50", range(26, 51)), ("51–100", range(51, 101)),
                 ("> 100", range(101, 1 << 30)))


def source_words(record: Mapping) -> str:
    n = len(record["source"].split())
    return next(label for label, counts in _SOURCE_WORDS if n in counts)


BREAKDOWNS: Dict[str, Tuple[str, Callable[[Mapping], str], Sequence[str]]] = {
    "e2e_attributes": ("attributes", e2e_attributes, [label for label, _ in _E2E_GROUPS]),
    "source_words": ("source words", source_words, [label for label, _ in _SOURCE_WORDS]),
}
DEFAULT_BY_DATASET = {"e2e": "e2e_attributes", "wmt": "source_words"}


def groups(name: str, records: Sequence[Mapping]) -> Tuple[str, List[Tuple[str, List[int]]]]:
    """(what is counted, [(label, indices of its records)]) in the breakdown's label order,
    empty groups left out."""
    if name not in BREAKDOWNS:
        raise ValueError(f"unknown breakdown {name!r}; known: {sorted(BREAKDOWNS)}")
    what, label_of, order = BREAKDOWNS[name]
    members: Dict[str, List[int]] = {label: [] for label in order}
    for i, record in enumerate(records):
        members[label_of(record)].append(i)
    return what, [(label, idx) for label, idx in members.items() if idx]


def score_groups(name: str, records: Sequence[Mapping], outputs: Mapping[str, Sequence[str]],
                 score: Callable[[Sequence[int], Sequence[str]], float]) -> dict:
    """{"by", "groups": [{"label", "examples"}], "scores": {row: {label: score}}}, where
    `score(indices, hyps)` scores a row's outputs on those records."""
    what, parts = groups(name, records)
    return {"by": what, "name": name,
            "groups": [{"label": label, "examples": len(idx)} for label, idx in parts],
            "scores": {row: {label: score(idx, outs) for label, idx in parts}
                       for row, outs in outputs.items()}}


def markdown(breakdown: Optional[Mapping], metric_label: str) -> str:
    if not breakdown:
        return ""
    head = [f"{breakdown['by']} (inputs)"] + [f"{g['label']} ({g['examples']})"
                                             for g in breakdown["groups"]]
    lines = [f"{metric_label} by {breakdown['by']}:", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row, scores in breakdown["scores"].items():
        lines.append("| " + " | ".join([row] + [f"{scores[g['label']]:.2f}"
                                                 for g in breakdown["groups"]]) + " |")
    return "\n".join(lines) + "\n"


def _candidate_labels(record: Mapping) -> List[str]:
    """A candidate's generator when the record has several, else its decoding (greedy,
    sample): what tells a pool's candidates apart."""
    cands = record["candidates"]
    if len({c["generator"] for c in cands}) > 1:
        return [c["generator"] for c in cands]
    return [c["decoding"] for c in cands]


def closest_candidates(records: Sequence[Mapping], outputs: Mapping[str, Sequence[str]]) -> dict:
    """Per row: for how many records its output is a candidate verbatim (`copies`), for how
    many it holds over twice the words of the longest candidate (`runaway`: a decode that ran
    on, e.g. repeating itself, instead of ending), and which candidate is closest to it by
    sentence chrF (`closest`: label -> count; ties go to the first in pool order). Shows
    whether a corrector rewrites, or picks and from whom."""
    from lmcor.evaluation.rerank import sentence_scores  # loads sacrebleu: only when run

    out = {}
    for row, outs in outputs.items():
        copies, runaway, closest = 0, 0, {}
        for record, output in zip(records, outs):
            texts = [c["text"] for c in record["candidates"]]
            if not texts:
                continue
            copies += output.strip() in {t.strip() for t in texts}
            runaway += len(output.split()) > 2 * max(len(t.split()) for t in texts)
            label = _candidate_labels(record)[int(sentence_scores([output], texts, "chrf")[0].argmax())]
            closest[label] = closest.get(label, 0) + 1
        out[row] = {"copies": copies, "runaway": runaway, "closest": dict(sorted(closest.items()))}
    return out


def closest_markdown(closest: Optional[Mapping]) -> str:
    if not closest:
        return ""
    labels = sorted({label for row in closest.values() for label in row["closest"]})
    lines = ["Closest candidate to each output (sentence chrF), outputs that copy one, and "
             "outputs over twice the longest candidate's words (runaway):", "",
             "| row | copies | runaway | " + " | ".join(labels) + " |",
             "|" + "---|" * (len(labels) + 3)]
    for row, c in closest.items():
        # Results files written before `runaway` was counted have none: shown as "—".
        lines.append(f"| {row} | {c['copies']} | {c.get('runaway', '—')} | "
                     + " | ".join(str(c["closest"].get(label, 0)) for label in labels) + " |")
    return "\n".join(lines) + "\n"
