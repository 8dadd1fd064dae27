"""`lmcor report`: tables, ablation and row plots, and training curves from real evaluations of
a WMT22 slice (MBR/oracle over its first k systems) and TensorBoard files the trainer's own
logger (lmcor.training.logging.TrainLogger) wrote."""
import itertools
import json
import os

import numpy as np
import pytest
from matplotlib import image

from lmcor import paths
from lmcor.evaluation import evaluate, published, report
from lmcor.data.importers import import_wmt
from lmcor.data.pool import write_pool
from lmcor.training.logging import TrainLogger
from lmcor.cli import report_command

N = 8


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    pool = run / "pool"
    write_pool(itertools.islice(import_wmt(data_dir, "wmt22"), N), str(pool))
    model_dir = run / "lmcor"
    logger = TrainLogger(str(model_dir / "train"), total_steps=3, start_step=0, main_host=True)
    for step in (1, 2, 3):
        logger.step(step, {"loss": 4.0 / step, "learning_rate": 1e-3, "target_tokens": 8.0},
                    log_every=1)
    logger.scalars(3, {"chrf": 12.5}, prefix="eval/")
    logger.close()
    for k in (1, 3, 9):
        cfg = evaluate.evaluation(task="wmt22", out_dir=str(run / "ablations" / f"k{k}"),
                                  pool=str(pool), max_references=1, num_candidates=k,
                                  bootstrap_samples=100,
                                  tags={"ablation": "num_candidates", "value": k})
        evaluate.evaluate(cfg)
    return run


def test_read_scalars_returns_what_was_written(run_dir):
    curves = report.read_scalars(str(run_dir / "lmcor" / "train"))
    assert [s for s, _ in curves["loss"]] == [1, 2, 3]
    np.testing.assert_allclose([v for _, v in curves["loss"]], [4.0, 2.0, 4.0 / 3], rtol=1e-6)
    assert curves["eval/chrf"] == [(3, 12.5)]


def test_read_scalars_reads_tensor_summaries_without_tensorflow(run_dir, tmp_path):
    """The trainer writes its event files without TensorFlow; the report reads them (and the
    tensor summaries clu and tf.summary write) without it too."""
    import subprocess
    import sys

    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter
    from tensorboard.util import tensor_util

    with open(tmp_path / "events.out.tfevents.1.host", "wb") as f:
        writer = RecordWriter(f)
        for step, value in ((7, 0.25), (3, 0.5)):
            summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
                tag="eval/bleu", tensor=tensor_util.make_tensor_proto(value))])
            writer.write(event_pb2.Event(step=step, summary=summary).SerializeToString())
        f.write(b"\x05\x00")  # a record cut short, as a killed writer leaves one
    probe = ("import sys; from lmcor.evaluation import report; "
             f"print(report.read_scalars({str(tmp_path)!r}), "
             f"report.read_scalars({str(run_dir / 'lmcor' / 'train')!r})['eval/chrf'], "
             "'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out == "{'eval/bleu': [(3, 0.5), (7, 0.25)]} [(3, 12.5)] False", out


def test_ablation_series_follow_the_evaluations(run_dir):
    found = report.find_results(str(run_dir))
    series = report.ablation_series(found)["wmt22 num_candidates"]
    oracle = series["oracle"]
    assert [p[0] for p in oracle] == [1, 3, 9]
    # With one candidate the oracle is the greedy output; more candidates can only help it.
    assert oracle[0][1] == pytest.approx(series["LLM greedy"][0][1])
    assert oracle[0][1] <= oracle[1][1] <= oracle[2][1]
    k9 = json.loads((run_dir / "ablations" / "k9" / "results.json").read_text())
    assert oracle[2][1] == next(r for r in k9["rows"] if r["name"] == "oracle")["metrics"]["chrf"]["score"]


def test_report_writes_markdown_and_pngs(run_dir):
    assert report_command.main([str(run_dir)]) == 0
    out = run_dir / "report"
    text = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "ablation_wmt22_num_candidates.png" in pngs
    assert "curves_lmcor_train.png" in pngs
    assert sum(p.startswith("rows_") for p in pngs) == 3
    for name in pngs:
        assert f"]({name})" in text
        assert image.imread(str(out / name)).shape[0] > 100
    assert "### Ablation: wmt22 num_candidates (chrF)" in text
    assert "| oracle |" in text


def test_one_ablation_on_two_datasets_gives_two_series(run_dir, tmp_path):
    # The prompt-robustness evaluations tag E2E (BLEU) and JFLEG (GLEU) alike: one shared plot
    # would put two metrics on one axis. Here: the same slice as "wmt22" (chrF) and "wmt23" (BLEU).
    for task, metric in (("wmt22", "chrf"), ("wmt23", "bleu")):
        for value in ("A->A", "A->B"):
            evaluate.evaluate(evaluate.evaluation(
                task=task, out_dir=str(tmp_path / task / value.replace("->", "")),
                pool=str(run_dir / "pool"), max_references=1, metric_names=[metric],
                num_candidates=1 if value == "A->A" else 3, bootstrap_samples=50,
                tags={"ablation": "prompt", "value": value}))
    series = report.ablation_series(report.find_results(str(tmp_path)))
    assert sorted(series) == ["wmt22 prompt", "wmt23 prompt"]
    bleu_k3 = json.loads((tmp_path / "wmt23" / "AB" / "results.json").read_text())
    assert series["wmt23 prompt"]["oracle"][1][1] == next(
        r for r in bleu_k3["rows"] if r["name"] == "oracle")["metrics"]["bleu"]["score"]
    text = open(report.build_report(str(tmp_path), str(tmp_path / "report"))).read()
    assert "### Ablation: wmt22 prompt (chrF)" in text
    assert "### Ablation: wmt23 prompt (BLEU)" in text


def test_report_errors(tmp_path):
    assert report_command.main([str(tmp_path)]) == 2
    bad = tmp_path / "x" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"rows": [}')
    with pytest.raises(ValueError, match="results.json:1"):
        report.find_results(str(tmp_path))


# ---------------------------------------------------------------------- published results


def test_report_publishes_a_compact_summary_of_every_evaluation(run_dir, tmp_path):
    out = tmp_path / "report"
    report.build_report(str(run_dir), str(out))
    summary = published.load(str(out / "results.json"))
    assert sorted(summary["evaluations"]) == ["ablations/k1", "ablations/k3", "ablations/k9"]
    for key, ev in summary["evaluations"].items():
        full = json.loads((run_dir / key / "results.json").read_text())
        assert [r["name"] for r in ev["rows"]] == [r["name"] for r in full["rows"]]
        for small, big in zip(ev["rows"], full["rows"]):
            for metric in full["metrics"]:
                for field in ("score", "low", "high", "delta", "p_value"):
                    assert small["metrics"][metric][field] == big["metrics"][metric][field]
            # Output length against the reference's is published for every row.
            assert small["length"] == big["length"] and small["length"]["vs_reference"] > 0
        assert ev["closest_candidates"] == full.get("closest_candidates")
    assert summary["commit"] and summary["machine"]
    # A second report over the same folder reads evaluations only, not that summary.
    report.build_report(str(run_dir), str(run_dir / "report"))
    assert report.build_report(str(run_dir), str(run_dir / "report"))


def _published(run_dir, tmp_path):
    report.build_report(str(run_dir), str(tmp_path / "report"))
    return str(tmp_path / "report" / "results.json")


def test_refresh_regenerates_stale_tables_from_the_results_file(run_dir, tmp_path):
    path = _published(run_dir, tmp_path)
    k9 = json.loads((run_dir / "ablations" / "k9" / "results.json").read_text())
    oracle = next(r for r in k9["rows"] if r["name"] == "oracle")["metrics"]["chrf"]
    doc = (f"# Results\n\nProse stays.\n\n<!-- lmcor:table {path} ablations/k9 -->\n"
           f"| a stale table |\n<!-- /lmcor -->\n\nMore prose.\n")
    new = published.refresh(doc, str(tmp_path))
    assert "a stale table" not in new
    assert new.startswith("# Results\n\nProse stays.\n\n<!-- lmcor:table ")
    assert new.endswith("<!-- /lmcor -->\n\nMore prose.\n")
    assert f"| oracle | {oracle['score']:.2f} | [{oracle['low']:.2f}, {oracle['high']:.2f}] |" in new
    assert published.refresh(new, str(tmp_path)) == new  # regenerating is stable


def test_headline_marks_the_best_row_but_never_the_oracle(run_dir, tmp_path):
    path = _published(run_dir, tmp_path)
    text = published.render_headline([f"{path}:ablations/k9", f"{path}:ablations/k1"])
    head, _, k9, k1 = [[c.strip() for c in line.strip("|").split("|")]
                       for line in text.splitlines()]
    assert head == ["task (test inputs)", "metric", "LLM greedy", "MBR rerank", "oracle"]
    assert k9[:2] == ["wmt22 (8)", "chrF"] and k1[:2] == ["wmt22 (8)", "chrF"]
    scores = [float(c.strip("*").split()[0]) for c in k9[2:]]
    assert scores[2] > max(scores[:2])  # over 9 systems the oracle leads ...
    assert not k9[4].startswith("**")  # ... and is never marked
    best = 2 + max(range(2), key=lambda i: scores[i])
    assert [c.startswith("**") for c in k9[2:4]] == [i + 2 == best for i in range(2)]


def test_refresh_errors_name_the_problem(run_dir, tmp_path):
    path = _published(run_dir, tmp_path)
    with pytest.raises(ValueError, match="no evaluation 'eval'; it has"):
        published.refresh(f"<!-- lmcor:table {path} eval -->\n<!-- /lmcor -->", "/")
    with pytest.raises(ValueError, match="without a `<!-- /lmcor -->` end"):
        published.refresh(f"<!-- lmcor:table {path} ablations/k1 -->\nno end\n", "/")
    with pytest.raises(ValueError, match="unknown block"):
        published.refresh("<!-- lmcor:chart x -->\n<!-- /lmcor -->", "/")
    bad = tmp_path / "old.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(ValueError, match="expected 'lmcor-results/1'"):
        published.load(str(bad))


@pytest.mark.parametrize("doc", ["README.md", "docs/results.md"])
def test_committed_documents_equal_their_regenerated_form(doc):
    # The numbers in the README and the results report come from docs/results/*.json only.
    path = os.path.join(paths.REPO_ROOT, doc)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert "<!-- lmcor:" in text
    assert published.refresh_file(path, paths.REPO_ROOT) == text, (
        f"{doc} is stale: run `lmcor report --refresh {doc} --write`")


def _source_eval(value, scores):
    rows = [{"name": name, "metrics": {"bleu": {"score": s, "low": s - 1, "high": s + 1}}}
            for name, s in scores.items()]
    return {"main_metric": "bleu", "tags": {"ablation": "source", "value": value}, "rows": rows}


def test_sources_block_sets_sources_side_by_side_and_says_where_lmcor_is_below(tmp_path):
    path = tmp_path / "sources.json"
    path.write_text(json.dumps({"format": published.FORMAT, "evaluations": {
        "eval": _source_eval("A", {"LLM greedy": 20.0, "MBR rerank": 19.0, "fine-tuned": 28.0,
                                   "LMCor": 33.5}),
        "variants/b/eval": _source_eval("B", {"LLM greedy": 24.0, "MBR rerank": 21.0,
                                              "LMCor": 33.0}),
        "variants/probe/eval": _source_eval("probe", {"LLM greedy": 53.0, "MBR rerank": 22.0,
                                                      "LMCor": 41.0})}}))
    doc = (f"<!-- lmcor:sources spread sources.json:eval sources.json:variants/b/eval -->\n"
           f"<!-- /lmcor -->\n<!-- lmcor:sources sources.json:eval=first_source "
           f"sources.json:variants/probe/eval -->\n<!-- /lmcor -->\n")
    cells = [[c.strip() for c in line.strip("|").split("|")]
             for line in published.refresh(doc, str(tmp_path)).splitlines()
             if line.startswith("|")]
    assert cells[0] == ["row (BLEU)", "A", "B", "spread"]
    assert cells[2] == ["LLM greedy", "20.00 [19.00, 21.00]", "24.00 [23.00, 25.00]", "4.00"]
    assert cells[4] == ["fine-tuned", "28.00 [27.00, 29.00]", "—", "—"]
    assert cells[5] == ["LMCor", "33.50 [32.50, 34.50]", "33.00 [32.00, 34.00]", "0.50"]
    assert cells[6] == ["LMCor − max(greedy, MBR)", "+13.50", "+9.00", "—"]
    assert cells[7] == ["row (BLEU)", "first source", "probe"]
    assert cells[-1] == ["LMCor − max(greedy, MBR)", "+13.50", "**-12.00: below**"]
    with pytest.raises(ValueError, match="takes \\[spread\\] FILE.json:KEY"):
        published.refresh("<!-- lmcor:sources spread sources.json:eval -->\n<!-- /lmcor -->",
                          str(tmp_path))
