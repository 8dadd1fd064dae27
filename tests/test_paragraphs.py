"""Paragraph-length WMT training records: consecutive segments of one document, every
reference and system joined over the same run, lengths following wmt23's paragraphs."""
import statistics

import pytest

from lmcor.data import paragraphs


def _record(i, source, systems=("S1", "S2"), refs=2):
    return {"id": f"r{i}", "source": source,
            "references": [f"ref{j}-{i}" for j in range(refs)],
            "candidates": [{"text": f"{s}-{i}", "generator": s, "decoding": "greedy"}
                           for s in systems], "meta": {"dataset": "toy"}}


def test_headlines_start_documents():
    sources = ["Storm hits coast", "The storm came at night.", "Many were hurt.",
               "Markets fall on Monday", "Shares fell 3%.", ""]
    assert paragraphs.document_starts(sources) == [True, False, False, True, False, False]


def test_runs_stay_in_their_document_and_keep_every_system_aligned():
    sources = ["Title one", "a b c.", "d e f.", "g h i.", "Title two", "j k l.", "m n o."]
    records = [_record(i, s) for i, s in enumerate(sources)]
    out = list(paragraphs.join_paragraphs(records, target_words=[5], seed=0))
    runs = [p["meta"]["segments"] for p in out]
    # Every record is used once, in order, and no run crosses "Title two" (record 4).
    assert [i for a, b in runs for i in range(a, b + 1)] == list(range(len(records)))
    assert all(not (a < 4 <= b) for a, b in runs)
    for p in out:
        a, b = p["meta"]["segments"]
        span = range(a, b + 1)
        assert p["source"] == " ".join(sources[i] for i in span)
        assert p["references"] == [" ".join(f"ref{j}-{i}" for i in span) for j in range(2)]
        assert [c["text"] for c in p["candidates"]] == [" ".join(f"{s}-{i}" for i in span)
                                                        for s in ("S1", "S2")]
        # A run stops once it reaches the drawn length, or when its document ends.
        assert paragraphs.words(p["source"]) >= 5 or b + 1 in (4, len(records))
    assert out == list(paragraphs.join_paragraphs(records, target_words=[5], seed=0))


def test_misaligned_systems_are_refused():
    records = [_record(0, "a b."), _record(1, "c d.", systems=("S1", "S3"))]
    with pytest.raises(ValueError, match="aligned"):
        list(paragraphs.join_paragraphs(records, target_words=[100]))


def test_wmt_training_paragraphs_match_wmt23_paragraph_lengths(data_dir):
    from lmcor.tasks import wmt

    train = [paragraphs.words(r["source"]) for r in wmt.train_records()]
    heldout = [paragraphs.words(r["source"]) for r in wmt._half(True)]
    sentences = [paragraphs.words(r["source"]) for y in wmt.TRAIN_YEARS
                 for r in wmt.year_records(y)]
    assert statistics.median(sentences) < 0.5 * statistics.median(heldout)
    assert statistics.median(train) == pytest.approx(statistics.median(heldout), rel=0.2)
    assert statistics.mean(train) == pytest.approx(statistics.mean(heldout), rel=0.15)
    # Every training segment is in exactly one paragraph.
    assert sum(len(r["meta"]["segment_ids"]) for r in wmt.train_records()) == len(sentences)
