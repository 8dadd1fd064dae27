"""`lmcor evaluate`: rows, intervals, paired tests, written files and resumption, on a real WMT22
slice with a (random-weight) corrector MODEL_DIR written by the trainer's checkpointer."""
import dataclasses
import json
import os

import gin
import pytest

from lmcor import metrics
from lmcor.evaluation import evaluate, rerank
from lmcor.inference.corrector import Corrector
from lmcor.data.corrector_input import CorrectorOptions
from lmcor.io_utils import read_lines
from lmcor.cli import evaluate_command

from _tiny_corrector import tiny_config, tiny_params, write_model_dir

N = 6


@pytest.fixture(autouse=True)
def clean_gin():
    """An evaluation leaves its correctors' run configs parsed; the next test starts without."""
    yield
    gin.clear_config()


@pytest.fixture(scope="module")
def pool_dir(wmt22_pool):
    return wmt22_pool(N)


@pytest.fixture(scope="module")
def lmcor_dir(tiny_lmcor_dir):
    return tiny_lmcor_dir


def _config(out_dir, pool_dir, lmcor_dir=None, finetune_dir=None):
    return evaluate.evaluation(task="wmt22", out_dir=str(out_dir), pool=pool_dir,
                               lmcor_dir=lmcor_dir, finetune_dir=finetune_dir,
                               greedy_generator="Online-A", max_references=1,
                               bootstrap_samples=200)


def test_rows_scores_and_files(pool_dir, lmcor_dir, tmp_path):
    cfg = _config(tmp_path, pool_dir, lmcor_dir, finetune_dir=str(tmp_path / "missing"))
    results = evaluate.evaluate(cfg)
    names = [r["name"] for r in results["rows"]]
    assert names[:2] == ["LLM greedy", "LLM sample"]
    assert names[2].startswith("best single system (")
    assert names[3:] == ["MBR rerank", "oracle", "LMCor"]
    assert any("fine-tuned" in n and "does not exist" in n for n in results["notes"])
    assert results["metrics"] == ["chrf", "bleu"]

    pred = tmp_path / "predictions"
    refs = [read_lines(pred / "ref.0.txt")]
    for row in results["rows"]:
        hyps = read_lines(tmp_path / row["predictions"])
        assert len(hyps) == N
        chrf = row["metrics"]["chrf"]
        # Saved predictions re-score to the reported number; the interval brackets it.
        assert chrf["score"] == pytest.approx(metrics.chrf(hyps, refs))
        assert chrf["low"] <= chrf["score"] <= chrf["high"]
    greedy = results["rows"][0]["metrics"]["chrf"]
    assert greedy["delta"] == 0.0
    greedy_file = read_lines(pred / "llm_greedy.txt")
    assert greedy_file == rerank.greedy_outputs(_records(pool_dir), "Online-A")

    # The LMCor row is exactly what the corrector decodes from that MODEL_DIR.
    gin.clear_config()
    corrector = Corrector.from_model_dir(lmcor_dir)
    assert read_lines(pred / "lmcor.txt") == [t.replace("\n", " ") for t in
                                              corrector.correct(_records(pool_dir))]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == results["rows"]
    table = (tmp_path / "results.md").read_text().splitlines()
    assert table[0].startswith("| row | chrF | 95% CI | BLEU |")
    assert table[2].startswith("| LLM greedy |")


def _records(pool_dir):
    from lmcor.data.pool import read_pool
    return list(read_pool(pool_dir))


def test_rerun_reuses_corrector_predictions(pool_dir, lmcor_dir, tmp_path, monkeypatch):
    cfg = _config(tmp_path, pool_dir, lmcor_dir)
    first = evaluate.evaluate(cfg)

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again although predictions were on disk")

    monkeypatch.setattr(evaluate, "corrector_outputs", refuse)
    again = evaluate.evaluate(cfg)
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in first["rows"]]


def test_saved_predictions_of_other_inputs_or_settings_are_not_reused(
        pool_dir, lmcor_dir, task_spm_path, tmp_path, monkeypatch):
    """Same EVAL_DIR, same number of inputs, but other decoding settings or another corrector:
    the row is decoded again, and matches a fresh evaluation of that setting."""
    evaluate.evaluate(_config(tmp_path / "shared", pool_dir, lmcor_dir))
    decoded = []
    real = evaluate.corrector_outputs

    def counting(records, variant, model_dir, cfg, *resume):
        decoded.append(model_dir)
        return real(records, variant, model_dir, cfg, *resume)

    monkeypatch.setattr(evaluate, "corrector_outputs", counting)
    short = dataclasses.replace(_config(tmp_path / "shared", pool_dir, lmcor_dir),
                              corrector_bindings=("corrector_settings.max_decode_tokens = 3",))
    shared = evaluate.evaluate(short)
    assert decoded == [lmcor_dir]
    fresh = evaluate.evaluate(dataclasses.replace(short, out_dir=str(tmp_path / "fresh")))
    assert read_lines(tmp_path / "shared" / "predictions" / "lmcor.txt") == \
        read_lines(tmp_path / "fresh" / "predictions" / "lmcor.txt")
    assert shared["rows"][-1]["metrics"] == fresh["rows"][-1]["metrics"]

    other_dir = tmp_path / "other_model"
    write_model_dir(other_dir, task_spm_path, tiny_params(tiny_config(task_spm_path), seed=2))
    trained_on = dataclasses.replace(short, model_dirs={"LMCor": str(other_dir)})
    evaluate.evaluate(trained_on)
    assert decoded[-1] == str(other_dir)

    # The same MODEL_DIR trained on to a new checkpoint: its saved row is stale.
    write_model_dir(other_dir, task_spm_path, tiny_params(tiny_config(task_spm_path), seed=3),
                    step=9)
    n = len(decoded)
    newer = evaluate.evaluate(trained_on)
    assert len(decoded) == n + 1
    fresh = evaluate.evaluate(dataclasses.replace(trained_on, out_dir=str(tmp_path / "fresh9")))
    assert newer["rows"][-1]["metrics"] == fresh["rows"][-1]["metrics"]
    assert len(decoded) == n + 2  # the fresh EVAL_DIR had nothing saved


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="metric_names"):
        evaluate.evaluation(task="e2e_lmcor", out_dir="/tmp/x", metric_names=["meteor"])
    with pytest.raises(ValueError, match="mbr_utility"):
        evaluate.evaluation(task="e2e_lmcor", out_dir="/tmp/x", mbr_utility="ter")
    assert evaluate.evaluation(task="jfleg_lmcor_single", out_dir="/tmp/x").metric_names == ("gleu",)


def test_cli_with_task_gin_files(data_dir, tmp_path, capsys, caplog):
    argv = ["--gin_file=gin/runs/evaluate.gin", "--gin_file=gin/tasks/wmt.gin",
            f"--gin.EVAL_DIR='{tmp_path}'", "--gin.EVAL_MAX_EXAMPLES=8",
            "--gin.EVAL_GREEDY_GENERATOR='GPT4-5shot'",
            "--gin.evaluation.bootstrap_samples=50"]
    try:
        assert evaluate_command.main(argv) == 0
    finally:
        gin.clear_config()
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| row | chrF |")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"] == "wmt_lmcor" and results["num_examples"] == 8
    # The held-out wmt23 test half starts at segment 279 (lmcor.tasks.wmt).
    gpt4 = read_lines(os.path.join(str(data_dir), "wmt_en_de", "wmt23", "systems", "GPT4-5shot.de"))
    assert read_lines(tmp_path / "predictions" / "llm_greedy.txt") == gpt4[279:287]
    assert len(results["notes"]) == 3  # no MODEL_DIRs given: three rows omitted
    # Each printed once, after the table, not logged as well while the rows run.
    assert [line for line in out.splitlines() if "omitted" in line] == \
        [f"note: {note}" for note in results["notes"]]
    assert not [r for r in caplog.records if "omitted" in r.getMessage()]


@pytest.mark.parametrize("name,task,tags", [
    ("num_candidates_3", "e2e", {"ablation": "num_candidates", "value": 3}),
    ("order_shuffled", "e2e", {"ablation": "candidate_order", "value": "shuffled"}),
    ("prompt_mismatch", "e2e", {"ablation": "prompt", "value": "A->B"}),
    ("cross_source_gpt4_only", "wmt", {"ablation": "cross_source", "value": "GPT4-5shot only"}),
])
def test_ablation_gin_files(name, task, tags):
    from lmcor.cli import gin_flags

    bindings = ["EVAL_DIR='/tmp/x'", "POOL_A_DEV='/p/a'", "POOL_B_TEST='/p/b'"]
    try:
        gin_flags.parse_gin(["runs/evaluate.gin", f"tasks/{task}.gin", f"ablations/{name}.gin"],
                             bindings, finalize=False)
        cfg = evaluate.evaluation()
        opts = CorrectorOptions()
    finally:
        gin.clear_config()
    assert cfg.tags == tags
    if name == "num_candidates_3":
        assert cfg.num_candidates == 3 and opts.k == 3
    if name == "order_shuffled":
        assert opts.order == "shuffled"
    if name == "prompt_mismatch":
        assert cfg.pool == "/p/b"
    if name == "cross_source_gpt4_only":
        assert cfg.greedy_generator == "GPT4-5shot" and cfg.max_references == 1
        assert cfg.corrector_bindings == ("corrector_options.generators = ['GPT4-5shot']",)


def test_trained_rows_report_their_training_and_the_paired_test_between_them(
        pool_dir, lmcor_dir, tmp_path):
    import shutil

    from lmcor.evaluation import report

    trained = tmp_path / "trained"
    shutil.copytree(lmcor_dir, trained)
    summary = {"step": 40, "examples_seen": 1234, "train_seconds": 4000.0, "stopped":
               "converged", "best_step": 30, "evaluations": 4}
    (trained / "train_summary.json").write_text(json.dumps(summary))
    history = [{"step": s, "examples_seen": 300 * s // 10, "train_seconds": 100.0 * s,
                "metrics": {"chrf": 10.0 + s / 10, "bleu": 1.0}} for s in (10, 20, 30, 40)]
    (trained / "eval").mkdir()
    (trained / "eval" / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    out = tmp_path / "eval"
    results = evaluate.evaluate(_config(out, pool_dir, str(trained), finetune_dir=lmcor_dir))
    rows = {r["name"]: r for r in results["rows"]}
    assert rows["LMCor"]["training"] == {k: summary[k] for k in
                                         ("examples_seen", "train_seconds", "step", "best_step",
                                          "stopped")}
    assert rows["fine-tuned"]["training"] is None and rows["LLM greedy"]["training"] is None
    [cmp] = results["comparisons"]
    assert (cmp["row"], cmp["against"], cmp["metric"]) == ("LMCor", "fine-tuned", "chrf")
    assert cmp["delta"] == pytest.approx(rows["LMCor"]["metrics"]["chrf"]["score"]
                                         - rows["fine-tuned"]["metrics"]["chrf"]["score"])
    table = (out / "results.md").read_text()
    assert "| examples seen | training time |" in table.splitlines()[0]
    assert "| 1,234 | 1 h 07 min |" in table
    assert "LMCor against fine-tuned: Δ chrF" in table
    # The report draws the LMCor row's learning curve from its history.
    metric, curves = report.learning_curves(results)
    assert metric == "chrf"
    assert curves == {"LMCor": [(r["examples_seen"], r["metrics"]["chrf"], r["step"])
                                for r in history]}
    text = open(report.build_report(str(out), str(tmp_path / "report"))).read()
    assert "![learning](learning_" in text
    # The published summary carries the curves; its Markdown block marks the checkpoint used.
    from lmcor.evaluation import published

    doc = f"<!-- lmcor:learning {tmp_path / 'report' / 'results.json'} . -->\n<!-- /lmcor -->"
    lines = published.refresh(doc, "/").splitlines()
    assert lines[1] == "| row | validation chrF at N training examples seen (used: bold) |"
    assert lines[3] == "| LMCor | 300: 11.00 · 600: 12.00 · **900: 13.00** · 1,200: 14.00 |"


def test_output_length_is_words_per_output_and_against_the_first_references():
    from lmcor.evaluation.results_table import markdown_table

    # Record 3 has no first reference: its output counts in the mean, not in the ratio.
    hyps = ["a b c", "d", "e f g h"]
    refs = [["x y", "z z z", None], ["other reference", None, "w"]]
    got = evaluate.output_length(hyps, refs)
    assert got == {"words": round(8 / 3, 2), "vs_reference": round(4 / 5, 4)}
    row = {"name": "LMCor", "length": got, "training": None,
           "metrics": {"chrf": {"score": 1, "low": 0, "high": 2, "delta": 0, "p_value": 1}}}
    table = markdown_table({"metrics": ["chrf"], "rows": [row]})
    assert "words / ref" in table.splitlines()[0] and "| 0.80 |" in table
    # A results.json written without lengths renders without the column.
    del row["length"]
    assert "words / ref" not in markdown_table({"metrics": ["chrf"], "rows": [row]})
