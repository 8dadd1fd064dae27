"""Every evaluation under a run folder as Markdown tables and PNG plots, behind `lmcor report`.

    lmcor report /runs/quickstart [--out=/runs/quickstart/report]
    lmcor report --refresh docs/results.md README.md [--write]

Reads each `results.json` under RUN_DIR (written by `lmcor evaluate`) and the TensorBoard event
files of the training runs (found under RUN_DIR and in the MODEL_DIRs the results name). Writes
into one folder (RUN_DIR/report by default):
  report.md                 the tables, the ablations and links to the plots;
  results.json              every evaluation's scores, intervals, paired p and training
                            summary in compact form (lmcor/evaluation/published.py); docs/results/
                            holds a copy per table;
  rows_<eval>.png           each row's main metric with its bootstrap 95% interval;
  ablation_<dataset>_<name>.png  main metric per row against the ablated value (e.g. the number of
                            candidates), from evaluations tagged `evaluation.tags`;
  curves_<run>.png          training loss and validation metrics against steps;
  learning_<eval>.png       each trained row's validation metric against the training
                            examples it has seen (MODEL_DIR/eval/history.jsonl), one line per
                            row, the selected checkpoint circled.
"""
import glob
import io
import json
import os
import struct
from collections import defaultdict
from typing import Dict, Iterator, List, Mapping, Sequence, Tuple

from lmcor.evaluation import published
from lmcor.io_utils import atomic_write_bytes, atomic_write_text
from lmcor.evaluation.results_table import METRIC_LABELS, markdown_table

Curves = Dict[str, List[Tuple[int, float]]]


def find_results(run_dir: str) -> List[Tuple[str, dict]]:
    """(path relative to run_dir, results) for every results.json, sorted by path."""
    out = []
    for path in sorted(glob.glob(os.path.join(run_dir, "**", "results.json"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            try:
                results = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
        if results.get("format") == published.FORMAT:
            continue  # a report's own summary (RUN_DIR/report/results.json), not an evaluation
        for field in ("rows", "metrics"):
            if field not in results:
                raise ValueError(f"{path}: field {field!r} missing (not written by lmcor evaluate?)")
        out.append((os.path.relpath(os.path.dirname(path), run_dir), results))
    return out


# ---------------------------------------------------------------------- TensorBoard


def _event_records(path: str) -> Iterator[bytes]:
    """The records of an event file (TFRecord framing: length, its masked CRC-32C, the bytes,
    theirs). A record cut short, as a writer killed mid-write leaves it, ends the file, as it
    does for TensorBoard."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12:
                return
            if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                raise ValueError(f"{path}: byte {f.tell() - 12}: not an event record (bad "
                                 "length checksum)")
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return
            yield data


def read_scalars(log_dir: str) -> Curves:
    """tag -> [(step, value)] from every event file directly in log_dir, in step order.
    Handles both classic simple_value summaries and the tensor summaries clu/tf.summary write.
    Reads them with tensorboard's protos, without TensorFlow (which the trainer's writer does
    not import either)."""
    from tensorboard.compat.proto import event_pb2
    from tensorboard.util import tensor_util

    curves: Curves = defaultdict(list)
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for record in _event_records(path):
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    number = float(value.simple_value)
                elif value.HasField("tensor") and not value.tensor.string_val:
                    number = float(tensor_util.make_ndarray(value.tensor))
                else:
                    continue
                curves[value.tag].append((int(event.step), number))
    return {tag: sorted(points) for tag, points in curves.items()}


def training_runs(run_dir: str, results: Sequence[Tuple[str, dict]]) -> Dict[str, Curves]:
    """Run name -> curves, for every folder holding event files under RUN_DIR or the
    MODEL_DIRs the evaluations used."""
    roots = [run_dir] + sorted({d for _, r in results
                                for d in r.get("config", {}).get("model_dirs", {}).values() if d})
    runs: Dict[str, Curves] = {}
    for root in roots:
        pattern = os.path.join(root, "**", "events.out.tfevents.*")
        for log_dir in sorted({os.path.dirname(p) for p in glob.glob(pattern, recursive=True)}):
            curves = read_scalars(log_dir)
            # Training runs only (sampling jobs also write TensorBoard: tokens/s, progress).
            if any(t == "loss" or t.startswith("eval/") for t in curves):
                name = os.path.relpath(log_dir, run_dir if root == run_dir else os.path.dirname(root))
                runs[name] = curves
    return runs


def learning_curves(results: Mapping) -> Tuple[str, Dict[str, List[Tuple[int, float, int]]]]:
    """(validation metric, row -> [(examples seen, value, step)]) for the trained rows of one
    evaluation: the table's main metric when the trainer's evaluator reports it, else the
    first metric both report."""
    from lmcor.training.budget import read_history

    histories = {row: read_history(d)
                 for row, d in results.get("config", {}).get("model_dirs", {}).items() if d}
    histories = {row: h for row, h in histories.items() if h}
    if not histories:
        return "", {}
    names = [set(r["metrics"]) for h in histories.values() for r in h]
    common = set.intersection(*names)
    main = results.get("main_metric", "")
    metric = main if main in common else next(iter(sorted(common)), "")
    if not metric:
        return "", {}
    return metric, {row: [(r["examples_seen"], float(r["metrics"][metric]), r["step"])
                          for r in h] for row, h in histories.items()}


# ---------------------------------------------------------------------- plots


def _save(fig, path: str) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _plt():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt
    return plt


def plot_rows(results: Mapping, title: str, path: str) -> None:
    """Horizontal bars: each row's main metric with its 95% interval as the error bar."""
    plt = _plt()
    main = results["metrics"][0]
    rows = results["rows"]
    scores = [r["metrics"][main]["score"] for r in rows]
    err = [[s - r["metrics"][main]["low"] for s, r in zip(scores, rows)],
           [r["metrics"][main]["high"] - s for s, r in zip(scores, rows)]]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    ax.barh(range(len(rows)), scores, xerr=err, color="#4878a8", capsize=3)
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel(f"{METRIC_LABELS.get(main, main)} (95% bootstrap interval)")
    ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def ablation_key(results: Mapping) -> str:
    """'<dataset> <ablation>' (e.g. 'e2e prompt'): one series per dataset, because the same
    ablation on two tasks has different main metrics and must not share a plot; '' if untagged."""
    tags = results.get("tags") or {}
    return f"{results.get('dataset', '?')} {tags['ablation']}" if "ablation" in tags else ""


def ablation_series(results: Sequence[Tuple[str, dict]]) -> Dict[str, Dict[str, list]]:
    """ablation_key -> row name -> sorted [(value, score, low, high)] of the main metric."""
    series: Dict[str, Dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for _, res in results:
        key = ablation_key(res)
        if not key:
            continue
        main = res["metrics"][0]
        for row in res["rows"]:
            m = row["metrics"][main]
            series[key][row["name"]].append((res["tags"].get("value"), m["score"], m["low"],
                                             m["high"]))
    return {a: {r: sorted(p, key=lambda x: str(x[0]) if not isinstance(x[0], (int, float))
                          else x[0]) for r, p in rows.items()} for a, rows in series.items()}


def plot_ablation(name: str, rows: Mapping[str, list], metric: str, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row, points in rows.items():
        xs = [str(p[0]) for p in points]
        ys = [p[1] for p in points]
        err = [[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=row)
    ax.set_xlabel(name.replace("_", " "))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


def plot_curves(name: str, curves: Curves, path: str) -> None:
    """Loss (left) and eval/* metrics (right) against the training step."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for tag in ("loss", "train/loss"):
        if tag in curves:
            left.plot(*zip(*curves[tag]), label=tag)
    for tag in sorted(t for t in curves if t.startswith("eval/")):
        right.plot(*zip(*curves[tag]), marker="o", label=tag)
    for ax, label in ((left, "loss"), (right, "validation metric")):
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(name)
    _save(fig, path)
    plt.close(fig)


def plot_learning(title: str, metric: str, rows: Mapping[str, list], selected: Mapping[str, int],
                  path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for row, points in rows.items():
        xs, ys, _ = zip(*points)
        line, = ax.plot(xs, ys, marker=".", label=row)
        for x, y, step in points:
            if step == selected.get(row):
                ax.plot([x], [y], "o", ms=11, mfc="none", color=line.get_color())
    ax.set_xlabel("training examples seen")
    ax.set_ylabel(f"validation {METRIC_LABELS.get(metric, metric)}")
    ax.set_title(title)
    ax.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------- the report


def _file_name(prefix: str, name: str) -> str:
    slug = "".join(ch if ch.isalnum() else "_" for ch in name).strip("_") or "run"
    return f"{prefix}_{slug}.png"


def _ablation_table(name: str, rows: Mapping[str, list], metric: str) -> str:
    values = sorted({str(p[0]) for pts in rows.values() for p in pts})
    head = f"| row | " + " | ".join(f"{name} = {v}" for v in values) + " |"
    lines = [head, "|" + "---|" * (len(values) + 1)]
    for row, pts in rows.items():
        by_value = {str(p[0]): f"{p[1]:.2f} [{p[2]:.2f}, {p[3]:.2f}]" for p in pts}
        lines.append(f"| {row} | " + " | ".join(by_value.get(v, "—") for v in values) + " |")
    return f"### Ablation: {name} ({METRIC_LABELS.get(metric, metric)})\n\n" + "\n".join(lines)


def build_report(run_dir: str, out_dir: str) -> str:
    """Writes report.md and the plots into out_dir; returns report.md's path."""
    results = find_results(run_dir)
    if not results:
        raise FileNotFoundError(f"{run_dir}: no results.json found (run lmcor evaluate first)")
    os.makedirs(out_dir, exist_ok=True)
    parts = [f"# lmcor report: {os.path.abspath(run_dir)}\n"]
    learning = {}
    for rel, res in results:
        png = _file_name("rows", rel)
        title = f"{res.get('task', res.get('dataset'))} {res.get('split', '')} ({rel})"
        plot_rows(res, title, os.path.join(out_dir, png))
        notes = "".join(f"\n- {n}" for n in res.get("notes", []))
        parts.append(f"## {title}\n\n{res.get('num_examples', '?')} examples.\n\n"
                     f"{markdown_table(res)}{notes}\n\n![rows]({png})\n")
        metric, curves = learning_curves(res)
        if curves:
            png = _file_name("learning", rel)
            selected = {r["name"]: (r.get("training") or {}).get("best_step")
                        for r in res["rows"]}
            plot_learning(title, metric, curves, selected, os.path.join(out_dir, png))
            learning[rel] = published.learning_summary(metric, curves, selected)
            parts.append(f"Learning curves (validation {METRIC_LABELS.get(metric, metric)}):"
                         f"\n\n![learning]({png})\n")
    metric_of = {ablation_key(r): r["metrics"][0] for _, r in results}
    for name, rows in ablation_series(results).items():
        png = _file_name("ablation", name)
        plot_ablation(name, rows, metric_of[name], os.path.join(out_dir, png))
        parts.append(f"{_ablation_table(name, rows, metric_of[name])}\n\n![{name}]({png})\n")
    for name, curves in training_runs(run_dir, results).items():
        png = _file_name("curves", name)
        plot_curves(name, curves, os.path.join(out_dir, png))
        parts.append(f"## Training: {name}\n\n![curves]({png})\n")
    path = os.path.join(out_dir, "report.md")
    atomic_write_text(path, "\n".join(parts))
    summary = published.summarize(results, run_dir, learning=learning)
    atomic_write_text(os.path.join(out_dir, "results.json"),
                      json.dumps(summary, indent=1, ensure_ascii=False) + "\n")
    return path

