"""A dataset's metrics are the ones its task registration declares, and nothing else: `lmcor
evaluate` scores a newly registered dataset with them, CoNLL-14 with GLEU; and a task or
mixture name registered twice is refused, as SeqIO does."""
import json

import gin
import pytest
import seqio

import lmcor.tasks  # noqa: F401  (registers the tasks)
from lmcor import metrics
from lmcor.cli import evaluate_command
from lmcor.evaluation import evaluate
from lmcor.evaluation.inputs import task_metrics
from lmcor.tasks import common, conll14

# Sentences whose greedy candidate keeps the source's error and whose sample fixes it: GLEU
# tells the two apart where it rewards the edit.
SENTENCES = [("he go to school every days .", "he goes to school every day ."),
             ("she have two cat .", "she has two cats ."),
             ("they was happy yesterday .", "they were happy yesterday ."),
             ("i has an apple .", "i have an apple ."),
             ("we goes home now .", "we go home now ."),
             ("it are raining .", "it is raining .")]


def _records():
    def cand(text, decoding):
        return {"text": text, "generator": "llm", "prompt_id": "p", "decoding": decoding,
                "temperature": 0.0 if decoding == "greedy" else 0.6, "logprob": None}

    return [{"id": f"s{i}", "source": src, "references": [ref, ref],
             "candidates": [cand(src, "greedy"), cand(ref, "sample")], "meta": {}}
            for i, (src, ref) in enumerate(SENTENCES)]


@pytest.fixture(scope="module")
def gleu_dataset():
    """`gleuprobe_*`: a dataset registered here, its task declaring GLEU only."""
    source = common.PoolDataSource({"test": _records})
    return common.register_variants("gleuprobe", source, (metrics.seqio_gleu,),
                                    common.source_and_references_postprocessor)


def test_evaluate_scores_a_registered_dataset_with_the_metrics_its_task_declares(
        gleu_dataset, tmp_path):
    assert task_metrics("gleuprobe_lmcor") == task_metrics("gleuprobe") == ("gleu",)
    try:
        assert evaluate_command.main(["--gin_file=runs/evaluate.gin",
                                      "--gin.MIXTURE_OR_TASK_NAME=gleuprobe_lmcor",
                                      f"--gin.EVAL_DIR={tmp_path}"]) == 0
    finally:
        gin.clear_config()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["metrics"] == ["gleu"] and results["main_metric"] == "gleu"
    greedy = next(r for r in results["rows"] if r["name"] == "LLM greedy")
    refs = [[ref for _, ref in SENTENCES]] * 2
    want = metrics.gleu([s for s, _ in SENTENCES], [s for s, _ in SENTENCES], refs)
    assert set(greedy["metrics"]) == {"gleu"}
    assert greedy["metrics"]["gleu"]["score"] == pytest.approx(want)


def test_conll14_is_scored_with_gleu():
    assert conll14.METRIC_FNS == (metrics.seqio_gleu,)
    for name in ("conll14", "conll14_lmcor", "conll14_finetune", "conll14_lmcor_single"):
        assert task_metrics(name) == ("gleu",), name
    assert evaluate.evaluation(task="conll14_lmcor", out_dir="/tmp/x").metric_names == ("gleu",)


def test_the_tables_metrics_come_from_the_task_registrations():
    assert task_metrics("e2e_lmcor") == ("bleu", "rougeL", "chrf")
    assert task_metrics("jfleg_lmcor") == ("gleu",)
    assert task_metrics("wmt_lmcor") == task_metrics("wmt22") == ("chrf", "bleu")
    assert task_metrics("wmt_lmcor_mix") == ("chrf", "bleu")
    assert task_metrics("xsum_lmcor") == ("rougeL", "bleu")
    with pytest.raises(ValueError, match=r"'no_such_dataset' .*no such task or mixture; its "
                                         r"registered task declares the table's metrics \(or "
                                         r"bind evaluation\.metric_names\)$"):
        task_metrics("no_such_dataset")
    # Given explicitly, the metrics need no registration.
    assert evaluate.evaluation(task="no_such_dataset", out_dir="/tmp/x", pool="/p",
                               metric_names=["ter"]).metric_names == ("ter",)


def test_a_task_or_mixture_registered_twice_is_refused():
    source = common.PoolDataSource({"test": _records})
    with pytest.raises(ValueError, match="duplicate provider: e2e_finetune"):
        common.register_variants("e2e", source, (metrics.seqio_bleu,))
    with pytest.raises(ValueError, match="duplicate provider: wmt_lmcor_mix"):
        common.register_mixture("wmt_lmcor_mix", ["wmt22_lmcor"])
    assert seqio.get_mixture_or_task("e2e_lmcor").source is not source
