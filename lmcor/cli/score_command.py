"""`lmcor score`: score a hypothesis file against reference files; prints one JSON object.

  lmcor score --metric=bleu --hyp=out.de --ref=ref.A.de [--ref=ref.B.de]
  lmcor score --metric=gleu --hyp=out.txt --src=test.src --ref=test.ref0 ... --ref=test.ref3
  lmcor score --metric=chrf --hyp=B.de --ref=ref.de --baseline=A.de --bootstrap=1000

Files are plain text, one segment per line, all line-aligned.
"""
import argparse
import json
from typing import Dict, List, Optional

from lmcor.cli.command_errors import report_error
from lmcor import metrics
from lmcor.data.text_files import read_aligned_text

METRICS = ("bleu", "chrf", "ter", "rouge", "gleu")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmcor score", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metric", required=True, choices=METRICS)
    p.add_argument("--hyp", required=True, help="hypothesis file")
    p.add_argument("--ref", required=True, action="append", help="reference file (repeatable)")
    p.add_argument("--src", help="source file (required for gleu)")
    p.add_argument("--baseline", help="second system: its score and the difference, and with "
                   "--bootstrap a paired bootstrap test against it")
    p.add_argument("--bootstrap", type=int, default=0,
                   help="resamples for a 95%% CI (and the paired test); 0 = off")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--tokenize", help="sacreBLEU tokenizer for bleu (default 13a)")
    return p


def _score(metric: str, hyps: List[str], refs: List[List[str]], srcs, tokenize) -> Dict[str, float]:
    if metric == "rouge":
        return metrics.rouge(hyps, refs)
    if metric == "gleu":
        return {"gleu": metrics.gleu(srcs, hyps, refs)}
    kwargs = {"tokenize": tokenize} if tokenize else {}
    return {metric: getattr(metrics, metric)(hyps, refs, **kwargs)}


def _check_flags(args: argparse.Namespace) -> None:
    if args.metric == "gleu" and not args.src:
        raise ValueError("--metric=gleu needs --src (GLEU penalises n-grams kept from the source)")
    if args.bootstrap < 0:
        raise ValueError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.tokenize is not None:
        if args.metric != "bleu":
            # sacreBLEU's chrF and TER take no tokenizer; dropping the flag would mislead.
            raise ValueError(f"--tokenize applies to --metric=bleu only, not {args.metric}")
        if args.tokenize not in metrics.bleu_tokenizers():
            raise ValueError(f"unknown --tokenize {args.tokenize!r}; choose one of "
                             + ", ".join(metrics.bleu_tokenizers()))


def _bootstrap_metric(metric: str) -> str:
    return "rougeLsum" if metric == "rouge" else metric


def run(args: argparse.Namespace) -> Dict[str, object]:
    _check_flags(args)
    paths = [args.hyp] + args.ref + ([args.src] if args.src else [])
    paths += [args.baseline] if args.baseline else []
    columns = read_aligned_text(paths)
    hyps, refs = columns[0], columns[1:1 + len(args.ref)]
    if not hyps:
        # sacreBLEU fails on no segments, ROUGE and GLEU would report 0.0: refuse them all alike.
        raise ValueError(f"{args.hyp}: no lines to score (empty file)")
    srcs: Optional[List[str]] = columns[1 + len(args.ref)] if args.src else None
    result: Dict[str, object] = {k: round(v, 4) for k, v in
                                 _score(args.metric, hyps, refs, srcs, args.tokenize).items()}
    if args.bootstrap > 0:
        name = _bootstrap_metric(args.metric)
        ci = metrics.bootstrap_ci(name, hyps, refs, srcs, n_samples=args.bootstrap, seed=args.seed,
                                  tokenize=args.tokenize)
        result["ci95"] = [round(ci["low"], 4), round(ci["high"], 4)]
        if args.baseline:
            test = metrics.paired_bootstrap(name, columns[-1], hyps, refs, srcs,
                                            n_samples=args.bootstrap, seed=args.seed,
                                            tokenize=args.tokenize)
            result["baseline"] = round(test["a"], 4)
            result["delta"] = round(test["delta"], 4)
            result["p_value"] = round(test["p_value"], 4)
    elif args.baseline:  # both scores and their difference; a p value needs --bootstrap
        name = _bootstrap_metric(args.metric)
        base = _score(args.metric, columns[-1], refs, srcs, args.tokenize)[name]
        result["baseline"] = round(base, 4)
        result["delta"] = round(result[name] - base, 4)
    return result


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = run(args)
    except (OSError, ValueError) as e:
        return report_error("lmcor score", e)
    print(json.dumps(result))
    return 0
