"""`lmcor export MODEL_DIR --out=DIR`: a trained Gemma corrector as a plain HF checkpoint, or
(`--adapter`) as a small released adapter folder (lmcor.inference.export).

    lmcor export /runs/e2e_lmcor --out=/exports/e2e_lmcor [--step=N] [--dtype=bfloat16]
    lmcor export /runs/e2e_lmcor --out=data/correctors/e2e --adapter [--max_mb=16]
"""
import argparse
import functools
import os
import sys

from lmcor.cli import gin_flags
from lmcor.cli.command_errors import report_error
from lmcor.cli.gin_command import check_gin_flags, one_line_parser
from lmcor.inference import export
from lmcor.paths import RUN_CONFIG

_GIN_HELP = """Gin: the run's MODEL_DIR/config.gin, then each --gin_file, then each binding
  --gin.NAME=VALUE      a binding read last (repeatable): a macro or configurable.parameter of
                        the run's config, e.g. --gin.task_vocabulary.spm_model=PATH for a run
                        whose vocabulary file moved; a string needs no quotes
"""


def _parser() -> argparse.ArgumentParser:
    p = one_line_parser(prog="lmcor export", description=export.__doc__.split("\n\n")[0],
                        epilog=_GIN_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    p.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    p.add_argument("--step", type=int, default=None, help="default: best, else latest")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="default: float32, bfloat16 with --adapter")
    p.add_argument("--adapter", action="store_true",
                   help="write the trained adapters only (a released corrector folder)")
    p.add_argument("--max_mb", type=float, default=16.0,
                   help="with --adapter: refuse an adapter file larger than this")
    # Only shown here: split_gin_flags takes --gin_file and --gin.* out before argparse runs.
    p.add_argument("--gin_file", action="append", default=[],
                   help="a Gin file read after the run's config.gin (repeatable)")
    return p


def main(argv=None) -> int:
    p = _parser()
    try:
        files, bindings, rest = gin_flags.split_gin_flags(sys.argv[1:] if argv is None else argv)
    except ValueError as err:
        p.error(str(err))
    args = p.parse_args(rest)
    try:  # before the run is loaded: the flags' form, files and macros against its config.gin
        check_gin_flags(files, bindings, os.path.join(args.model_dir, RUN_CONFIG))
    except ValueError as err:
        p.error(str(err))
    overrides = functools.partial(gin_flags.parse_gin, files, bindings, finalize=False) \
        if files or bindings else None
    try:
        with gin_flags.command_line():
            if args.adapter:
                out = export.export_adapter(args.model_dir, args.out, args.step,
                                            args.dtype or "bfloat16", args.max_mb,
                                            overrides=overrides)
            else:
                out = export.export(args.model_dir, args.out, args.step,
                                    args.dtype or "float32", overrides=overrides)
    except (ValueError, FileNotFoundError) as err:
        return report_error("lmcor export", err)
    print(f"lmcor export: wrote {out}")
    return 0
