"""The main metric per group of test inputs (E2E by number of attributes), on real data."""
import collections
import os

import pytest

from lmcor.evaluation import breakdowns, evaluate, inputs, metrics
from lmcor.data.importers import import_e2e

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV_POOL = os.path.join(REPO, "data", "pools", "e2e_dev_e2e_attributes.jsonl.gz")


def test_e2e_test_mrs_by_number_of_attributes(data_dir):
    counts = collections.Counter(breakdowns.e2e_attributes(r)
                                 for r in import_e2e(str(data_dir), "test"))
    # The cleaned test set's 1,847 MRs by number of attributes in their `mr` column.
    assert counts == {"2–4": 236, "5": 293, "6": 407, "7": 554, "8–10": 357}
    assert breakdowns.e2e_attributes({"source": "name[A], eatType[pub], food[Thai], "
                                                "area[riverside], near[The Bakers]"}) == "5"


def test_evaluate_scores_every_row_on_each_group(tmp_path):
    cfg = evaluate.evaluation(task="e2e", out_dir=str(tmp_path), pool=DEV_POOL, max_examples=80,
                              bootstrap_samples=50)
    results = evaluate.evaluate(cfg)
    bd = results["breakdown"]
    assert bd["by"] == "attributes" and sum(g["examples"] for g in bd["groups"]) == 80
    records = inputs.load_records(cfg)
    refs = inputs.reference_streams(records, None)
    for row in results["rows"]:
        hyps = open(tmp_path / row["predictions"], encoding="utf-8").read().splitlines()
        for group in bd["groups"]:
            idx = [i for i, r in enumerate(records)
                   if breakdowns.e2e_attributes(r) == group["label"]]
            want = metrics.bleu([hyps[i] for i in idx], [[s[i] for i in idx] for s in refs])
            assert bd["scores"][row["name"]][group["label"]] == pytest.approx(want)
    table = (tmp_path / "results.md").read_text()
    assert "BLEU by attributes:" in table and "| LLM greedy |" in table.split("by attributes")[1]
    with pytest.raises(ValueError, match="breakdown"):
        evaluate.evaluation(task="e2e", out_dir=str(tmp_path), breakdown="by_color")
