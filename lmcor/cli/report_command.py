"""`lmcor report RUN_DIR` and `lmcor report --refresh DOC.md ...` (lmcor.evaluation.report and
lmcor.evaluation.published)."""
import argparse
import os
import sys

from lmcor.cli.command_errors import report_error
from lmcor.evaluation import published, report
from lmcor.paths import REPO_ROOT


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="lmcor report", description=report.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--out", help="output folder (default RUN_DIR/report)")
    p.add_argument("--refresh", metavar="DOC.md", nargs="+",
                   help="print each DOC.md with its generated tables rendered again from the "
                        "results files they name (lmcor/evaluation/published.py), instead of a "
                        "report")
    p.add_argument("--write", action="store_true", help="with --refresh: rewrite the files")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if bool(args.run_dir) == bool(args.refresh):
        p.error("give RUN_DIR or --refresh DOC.md, not both")
    try:
        if args.refresh:
            for doc in args.refresh:
                text = published.refresh_file(doc, REPO_ROOT, write=args.write)
                print(doc if args.write else text, end="\n" if args.write else "")
            return 0
        path = report.build_report(args.run_dir,
                                   args.out or os.path.join(args.run_dir, "report"))
    except (OSError, ValueError) as e:
        return report_error("lmcor report", e)
    print(path)
    return 0
