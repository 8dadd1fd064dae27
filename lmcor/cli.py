"""`lmcor <command> ...`: dispatches to `lmcor.<module>.main(argv)`.

Each command lives in its own module (also runnable as `python -m lmcor.<module>`); the table
below only maps names so that importing the CLI stays cheap.
"""
import importlib
import sys

COMMANDS = {
    "generate": "lmcor.generate",
    "score": "lmcor.score",
    "pool": "lmcor.data.pool_cli",
    "train": "lmcor.train",
    "sample": "lmcor.sample",
    "evaluate": "lmcor.evaluate",
    "report": "lmcor.report",
    "quickstart": "lmcor.quickstart",
    "pipeline": "lmcor.quickstart",  # the same runner; named for the README tables' configs
    "serve": "lmcor.serve",
    "export": "lmcor.export",
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        names = ", ".join(sorted(COMMANDS))
        msg = f"usage: lmcor <command> [flags]\ncommands: {names}"
        if argv and argv[0] not in ("-h", "--help"):
            print(f"lmcor: unknown command {argv[0]!r}\n{msg}", file=sys.stderr)
            return 2
        print(msg)
        return 0
    module = importlib.import_module(COMMANDS[argv[0]])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
