"""CoNLL-2014 grammatical error correction from M2 files: one reference per annotator.

M2: `S tok tok ...` then `A start end|||type|||correction|||REQUIRED|||-NONE-|||annotator`
lines, a blank line between sentences. Each annotator's edits are applied to the tokenized
source to give that annotator's reference; an annotator with no edit for a sentence (or a
`noop` edit) leaves it unchanged. Every sentence gets one reference per annotator of the file.
Not shipped here: bind `conll14_data.files = {"test": ".../official-2014.combined.m2", ...}`.
Metric: GLEU (every sentence has the same number of references).
"""
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

import gin

from lmcor import metrics
from lmcor.data.importers import DatasetError
from lmcor.tasks import common

SPLITS = ("train", "validation", "test")
METRIC_FNS = (metrics.seqio_gleu,)
_SKIP_TYPES = {"noop", "UNK", "Um"}  # no correction to apply
Edit = Tuple[int, int, List[str]]


@gin.configurable
def conll14_data(files: Optional[Mapping[str, str]] = None) -> Mapping[str, str]:
    return files or {}


def _parse_edit(line: str, where: str) -> Tuple[int, Optional[Edit]]:
    fields = line[2:].split("|||")
    if len(fields) != 6:
        raise DatasetError(f"{where}: field 'A': expected 6 '|||'-separated fields, got {len(fields)}")
    try:
        start, end = (int(x) for x in fields[0].split())
        annotator = int(fields[5])
    except ValueError as e:
        raise DatasetError(f"{where}: field 'A': bad span or annotator ({e})") from e
    if fields[1] in _SKIP_TYPES or start < 0:
        return annotator, None
    correction = [] if fields[2] in ("-NONE-", "") else fields[2].split()
    return annotator, (start, end, correction)


def apply_edits(tokens: List[str], edits: List[Edit]) -> List[str]:
    out, shift = list(tokens), 0
    for start, end, correction in sorted(edits, key=lambda e: (e[0], e[1])):
        out[start + shift:end + shift] = correction
        shift += len(correction) - (end - start)
    return out


def parse_m2(path: str) -> Iterator[Tuple[List[str], Dict[int, List[Edit]], int]]:
    """(source tokens, edits per annotator, line number) per sentence."""
    tokens, edits, first = None, {}, 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\n")
            if line.startswith("S "):
                if tokens is not None:
                    raise DatasetError(f"{path}:{lineno}: field 'S': no blank line before it")
                tokens, edits, first = line[2:].split(), {}, lineno
            elif line.startswith("A "):
                if tokens is None:
                    raise DatasetError(f"{path}:{lineno}: field 'A': edit before any 'S' line")
                annotator, edit = _parse_edit(line, f"{path}:{lineno}")
                edits.setdefault(annotator, [])
                if edit is not None:
                    edits[annotator].append(edit)
            elif not line.strip():
                if tokens is not None:
                    yield tokens, edits, first
                tokens = None
            else:
                raise DatasetError(f"{path}:{lineno}: field '<line>': expected 'S ', 'A ' or blank")
    if tokens is not None:
        yield tokens, edits, first


def read_m2(path: str, split: str) -> Iterator[dict]:
    sentences = list(parse_m2(path))
    annotators = sorted({a for _, edits, _ in sentences for a in edits}) or [0]
    for i, (tokens, edits, lineno) in enumerate(sentences):
        refs = [" ".join(apply_edits(tokens, edits.get(a, []))) for a in annotators]
        yield {"id": f"conll14-{split}-{i:05d}", "source": " ".join(tokens), "references": refs,
               "candidates": [], "meta": {"dataset": "conll14", "split": split,
                                          "m2": f"{path}:{lineno}", "annotators": annotators}}


def _records(split: str):
    def read():
        files = conll14_data()
        if split not in files:
            raise DatasetError(f"conll14 split {split!r}: no M2 file configured; bind "
                               f"conll14_data.files = {{{split!r}: '/path/file.m2'}}")
        return read_m2(files[split], split)

    return lambda: common.records_or_pool("conll14", split, read)


SOURCE = common.PoolDataSource({s: _records(s) for s in SPLITS})
TASKS = common.register_variants("conll14", SOURCE, METRIC_FNS,
                                 postprocess_fn=common.source_and_references_postprocessor)
