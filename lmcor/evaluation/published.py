"""Published results: one compact JSON file per table, and the Markdown generated from them.

`lmcor report RUN_DIR` writes RUN_DIR/report/results.json (see `summarize`): per evaluation,
per row, per metric the score, its 95 % interval, Δ and paired p against LLM greedy, the
output length against the reference's, and, for trained rows, the examples seen and the
training time; per evaluation, its breakdown and which candidate each row's outputs are
closest to. A copy of that file per table lives in
docs/results/<table>.json.

Markdown files quote those numbers only through generated blocks, so prose and numbers cannot
drift apart. A block is an HTML comment naming what to render, then the generated text, then a
closing comment:

    <!-- lmcor:table docs/results/e2e.json eval -->
    ...generated...
    <!-- /lmcor -->

    <!-- lmcor:headline docs/results/e2e.json:eval docs/results/jfleg.json:eval -->
    ...generated...
    <!-- /lmcor -->

`table FILE KEY` is the whole table of one evaluation (KEY is its folder under RUN_DIR);
`headline FILE:KEY ...` is one line per evaluation with each row's main metric and interval;
`learning FILE KEY` is the learning curves of that evaluation's trained rows (validation
metric at each evaluation's examples seen, the checkpoint the table used in bold), the text
form of the report's learning_<eval>.png. `sources [spread] FILE:KEY[=LABEL] ...` puts
evaluations of one corrector on several candidate sources side by side (`render_sources`).
Paths are relative to the repository root. `lmcor report --refresh DOC.md` prints DOC.md with
every block regenerated (`--write` rewrites it in place); a test checks that the committed
documents equal that output.
"""
import json
import os
import platform
import re
from typing import List, Mapping, Optional, Sequence, Tuple

from lmcor.data.corrector_input import ROW_NAMES
from lmcor.paths import code_version
from lmcor.evaluation.inputs import NO_MODEL_DIR
from lmcor.io_utils import atomic_write_text
from lmcor.evaluation.results_table import METRIC_LABELS, markdown_table

FORMAT = "lmcor-results/1"
# The row columns of the headline table, in the order a reader compares them.
HEADLINE_ROWS = ("LLM greedy", "MBR rerank", "oracle", *ROW_NAMES.values())

_BLOCK = re.compile(r"(?P<open><!-- lmcor:(?P<kind>\w+) (?P<args>[^>]*?) -->\n)(?P<body>.*?)"
                    r"(?P<close><!-- /lmcor -->)", re.S)


def _cpu_model() -> str:
    """The CPU's model name (what a reader needs to compare wall times), else the platform."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def _row(row: Mapping) -> dict:
    out = {"name": row["name"],
           "metrics": {name: {k: m[k] for k in ("score", "low", "high", "delta", "p_value")}
                       for name, m in row["metrics"].items()}}
    if row.get("length"):
        out["length"] = dict(row["length"])  # mean words and their ratio to the reference's
    training = row.get("training")
    if training:
        out["training"] = {k: training.get(k) for k in ("examples_seen", "train_seconds",
                                                        "step", "best_step", "stopped")}
    return out


def _short(commit: Optional[str]) -> Optional[str]:
    return commit[:7] if commit else None


def learning_summary(metric: str, curves: Mapping[str, Sequence[Tuple[int, float, int]]],
                     selected: Mapping[str, Optional[int]]) -> dict:
    """The learning curves of one evaluation (`lmcor.evaluation.report.learning_curves`) as committed:
    per row [examples seen, value, step] and the step its table used."""
    return {"metric": metric,
            "rows": {row: {"points": [list(p) for p in points], "best_step": selected.get(row)}
                     for row, points in curves.items()}}


def summarize(results: Sequence[Tuple[str, Mapping]], run_dir: str,
              machine: Optional[str] = None,
              learning: Optional[Mapping[str, Mapping]] = None) -> dict:
    """The compact, committed form of every evaluation under RUN_DIR, keyed by its folder;
    `learning` maps a folder to its `learning_summary`."""
    report_commit = _short(code_version())
    evaluations = {}
    for rel, res in results:
        evaluations[rel] = {
            "task": res.get("task"), "dataset": res.get("dataset"), "split": res.get("split"),
            "num_examples": res.get("num_examples"), "metrics": list(res["metrics"]),
            "main_metric": res["metrics"][0], "rows": [_row(r) for r in res["rows"]],
            "comparisons": list(res.get("comparisons") or []),
            "breakdown": res.get("breakdown"),
            "closest_candidates": res.get("closest_candidates"),
            "slot_mentions": res.get("slot_mentions"),
            "tags": dict(res.get("tags") or {}),
            "notes": list(res.get("notes") or []),
            "learning": (learning or {}).get(rel),
            # The code that evaluated is what a figure names (the report's checkout if unknown).
            "commit": _short(res.get("commit")) or report_commit}
    return {"format": FORMAT, "run": os.path.basename(os.path.abspath(run_dir)),
            "commit": report_commit,
            "machine": machine or _cpu_model(), "evaluations": evaluations}


def load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from e
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r} "
                         f"(written by `lmcor report`)")
    return data


def _evaluation(data: Mapping, key: str, path: str) -> Mapping:
    evaluations = data["evaluations"]
    if key not in evaluations:
        raise ValueError(f"{path}: no evaluation {key!r}; it has {sorted(evaluations)}")
    return evaluations[key]


def render_table(path: str, key: str) -> str:
    data = load(path)
    ev = _evaluation(data, key, path)
    # A pool-only evaluation leaves the corrector rows out by design: no note needed for that.
    notes = "".join(f"\n- {n}" for n in ev.get("notes", []) if not n.endswith(NO_MODEL_DIR))
    return (f"{markdown_table(ev).rstrip()}{notes}\n\n{ev['num_examples']:,} {ev['split']} inputs of "
            f"{ev['dataset']}; commit {ev.get('commit') or data['commit']}, {data['machine']}.\n")


def _evaluations(specs: Sequence[str], block: str) -> List[Tuple[str, Mapping]]:
    """(KEY, evaluation) for each FILE:KEY."""
    evals = []
    for spec in specs:
        path, _, key = spec.rpartition(":")
        if not path:
            raise ValueError(f"{block} entry {spec!r}: expected FILE.json:KEY")
        evals.append((key, _evaluation(load(path), key, path)))
    return evals


def _cell(m: Mapping) -> str:
    return f"{m['score']:.2f} [{m['low']:.2f}, {m['high']:.2f}]"


def render_headline(specs: Sequence[str]) -> str:
    """One line per FILE:KEY: the main metric [95 % CI] of every headline row it has."""
    evals = _evaluations(specs, "headline")
    present = {r["name"] for _, ev in evals for r in ev["rows"]}
    columns = [name for name in HEADLINE_ROWS if name in present]
    lines = ["| task (test inputs) | metric | " + " | ".join(columns) + " |",
             "|" + "---|" * (len(columns) + 2)]
    for _, ev in evals:
        main = ev["main_metric"]
        by_name = {r["name"]: r["metrics"][main] for r in ev["rows"]}
        # The oracle is an upper bound no system reaches, not a competitor: never the best.
        best = max((by_name[c]["score"] for c in columns if c in by_name and c != "oracle"),
                   default=None)
        cells = []
        for name in columns:
            m = by_name.get(name)
            if m is None:
                cells.append("—")
                continue
            text = _cell(m)
            cells.append(f"**{text}**" if m["score"] == best and name != "oracle" else text)
        lines.append(f"| {ev['dataset']} ({ev['num_examples']:,}) | "
                     f"{METRIC_LABELS.get(main, main)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render_sources(specs: Sequence[str], spread: bool = False) -> str:
    """One corrector over several candidate sources: a column per FILE:KEY, headed by its
    `tags` value or by LABEL where the spec is FILE:KEY=LABEL ("_" read as a space); a row per
    table row with its main metric [95 % CI]; with `spread`, each row's max - min over the
    columns. A last row gives LMCor against the better of the source's greedy and MBR rows,
    and says so where LMCor is below it."""
    labels = [spec.partition("=")[2].replace("_", " ") for spec in specs]
    evals = _evaluations([spec.partition("=")[0] for spec in specs], "sources")
    mains = {ev["main_metric"] for _, ev in evals}
    if len(mains) != 1:
        raise ValueError(f"sources block: evaluations with different main metrics {sorted(mains)}")
    main = mains.pop()
    heads = [label or str((ev.get("tags") or {}).get("value", key))
             for label, (key, ev) in zip(labels, evals)]
    names = list(dict.fromkeys(r["name"] for _, ev in evals for r in ev["rows"]))
    by_eval = [{r["name"]: r["metrics"][main] for r in ev["rows"]} for _, ev in evals]
    label = METRIC_LABELS.get(main, main)
    lines = [f"| row ({label}) | " + " | ".join(heads) + (" | spread |" if spread else " |"),
             "|" + "---|" * (len(heads) + 1 + spread)]
    for name in names:
        cells = [_cell(b[name]) if name in b else "—" for b in by_eval]
        if spread:
            scores = [b[name]["score"] for b in by_eval if name in b]
            cells.append(f"{max(scores) - min(scores):.2f}" if len(scores) > 1 else "—")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lmcor = ROW_NAMES["lmcor"]
    if any(lmcor in b for b in by_eval):
        cells = []
        for b in by_eval:
            rivals = [b[n]["score"] for n in ("LLM greedy", "MBR rerank") if n in b]
            if lmcor not in b or not rivals:
                cells.append("—")
                continue
            gap = b[lmcor]["score"] - max(rivals)
            cells.append(f"{gap:+.2f}" if gap >= 0 else f"**{gap:+.2f}: below**")
        lines.append(f"| {lmcor} − max(greedy, MBR) | " + " | ".join(cells)
                     + (" | — |" if spread else " |"))
    return "\n".join(lines) + "\n"


def render_learning(path: str, key: str) -> str:
    ev = _evaluation(load(path), key, path)
    learning = ev.get("learning")
    if not learning:
        raise ValueError(f"{path}: evaluation {key!r} has no learning curves (its rows were "
                         f"not trained with validation, or the report predates them)")
    label = METRIC_LABELS.get(learning["metric"], learning["metric"])
    lines = [f"| row | validation {label} at N training examples seen (used: bold) |",
             "|---|---|"]
    for row, curve in learning["rows"].items():
        cells = []
        for examples, value, step in curve["points"]:
            cell = f"{examples:,}: {value:.2f}"
            cells.append(f"**{cell}**" if step == curve["best_step"] else cell)
        lines.append(f"| {row} | " + " · ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _learning_block(args: Sequence[str], root: str) -> str:
    if len(args) != 2:
        raise ValueError(f"`lmcor:learning` takes FILE.json KEY, got {' '.join(args)!r}")
    return render_learning(os.path.join(root, args[0]), args[1])


def _table_block(args: Sequence[str], root: str) -> str:
    if len(args) != 2:
        raise ValueError(f"`lmcor:table` takes FILE.json KEY, got {' '.join(args)!r}")
    return render_table(os.path.join(root, args[0]), args[1])


def _headline_block(args: Sequence[str], root: str) -> str:
    return render_headline([os.path.join(root, a) for a in args])


def _sources_block(args: Sequence[str], root: str) -> str:
    spread = bool(args) and args[0] == "spread"
    specs = args[1:] if spread else args
    if len(specs) < 2:
        raise ValueError(f"`lmcor:sources` takes [spread] FILE.json:KEY FILE.json:KEY ..., got "
                         f"{' '.join(args)!r}")
    return render_sources([os.path.join(root, a) for a in specs], spread)


_RENDERERS = {"table": _table_block, "headline": _headline_block,
              "learning": _learning_block, "sources": _sources_block}


def refresh(text: str, root: str) -> str:
    """TEXT with every generated block rendered again from the files it names (relative to
    ROOT; an absolute path stays as it is)."""
    def render(match: "re.Match") -> str:
        kind, args = match.group("kind"), match.group("args").split()
        if kind not in _RENDERERS:
            raise ValueError(f"unknown block <!-- lmcor:{kind} -->; known {sorted(_RENDERERS)}")
        return match.group("open") + _RENDERERS[kind](args, root) + match.group("close")

    opened = text.count("<!-- lmcor:")
    new, blocks = _BLOCK.subn(render, text)
    if blocks != opened:
        raise ValueError(f"{opened - blocks} `<!-- lmcor:... -->` block(s) without a "
                         f"`<!-- /lmcor -->` end")
    return new


def refresh_file(path: str, root: str, write: bool = False) -> str:
    """PATH's text with its blocks regenerated; `write` also saves it (when it changed)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        new = refresh(text, root)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    if write and new != text:
        atomic_write_text(path, new)
    return new
