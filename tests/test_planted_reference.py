"""The keep-a-good-candidate probe (`evaluation.plant_reference`): an input's first reference
replaces the greedy candidate and leaves the references that every row is scored against."""
import os

from lmcor.evaluation import evaluate, inputs, rerank

from _pool_records import cand, record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV_POOL = os.path.join(REPO, "data", "pools", "e2e_dev_e2e_attributes.jsonl.gz")


def test_probe_plants_each_first_reference_as_the_greedy_candidate(tmp_path):
    plain = inputs.load_records(evaluate.evaluation(task="e2e", out_dir=str(tmp_path),
                                                    pool=DEV_POOL))
    probe = inputs.load_records(evaluate.evaluation(task="e2e", out_dir=str(tmp_path),
                                                    pool=DEV_POOL, max_examples=40,
                                                    plant_reference=True))
    eligible = [r for r in plain if len(r["references"]) >= 2]
    assert len(eligible) < len(plain), "the pool has single-reference inputs to skip"
    assert [r["id"] for r in probe] == [r["id"] for r in eligible[:40]]
    for got, was in zip(probe, eligible):
        assert got["references"] == was["references"][1:]
        assert rerank.greedy_outputs([got]) == [was["references"][0]]
        assert [c for c in got["candidates"] if c["decoding"] != "greedy"] == \
            [c for c in was["candidates"] if c["decoding"] != "greedy"]


def test_probe_plants_into_the_named_generators_greedy_candidate_only():
    rec = record(cands=[cand("a", "greedy", "A"), cand("b", "greedy", "B"), cand("s")],
                 refs=("r0", "r1", "r2"))
    got = inputs.planted(rec, "B")
    assert [c["text"] for c in got["candidates"]] == ["a", "r0", "s"]
    assert got["references"] == ["r1", "r2"] and rec["candidates"][1]["text"] == "b"
    assert inputs.planted(rec, "C") is None
    assert inputs.planted(record(refs=("only",))) is None
