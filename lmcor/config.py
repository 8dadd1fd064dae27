"""T5X-style Gin flags: `--gin_file=F` (repeatable) and `--gin.NAME=VALUE` bindings.

Gin files are looked up as given, then relative to the repository's `gin/` folder, so
`--gin_file=runs/train_corrector.gin` and `--gin_file=gin/runs/train_corrector.gin` both work.
"""
import os
from typing import Sequence

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO_ROOT, "gin")


def split_gin_flags(argv: Sequence[str]):
    """Returns (gin_files, gin_bindings, remaining_argv)."""
    files, bindings, rest = [], [], []
    it = iter(argv)
    for arg in it:
        if arg == "--gin_file":
            files.append(next(it))
        elif arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg.startswith("--gin."):
            body = arg[len("--gin."):]
            if "=" not in body:
                raise ValueError(f"gin binding {arg!r} needs the form --gin.NAME=VALUE")
            bindings.append(body)
        else:
            rest.append(arg)
    return files, bindings, rest


def resolve_gin_file(path: str) -> str:
    for cand in (path, os.path.join(GIN_DIR, path), os.path.join(REPO_ROOT, path)):
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    raise FileNotFoundError(f"gin file not found: {path!r} (also looked under {GIN_DIR})")


def parse_gin(files: Sequence[str], bindings: Sequence[str], finalize: bool = True) -> None:
    """Parses gin files + bindings; errors name the offending file or binding."""
    # gin/ is searched before the working directory: gin tries a relative `include 'runs/x.gin'`
    # as a Python package path first, and crashes (TypeError) when a folder named `runs/` in
    # the working directory imports as a namespace package, as the checkout's output folder does.
    prefixes = gin.config._LOCATION_PREFIXES  # no public API puts a search path first
    for path in (REPO_ROOT, GIN_DIR):
        if path in prefixes:
            prefixes.remove(path)
        prefixes.insert(0, path)
    resolved = [resolve_gin_file(f) for f in files]
    for path in resolved:
        try:
            gin.parse_config_file(path, skip_unknown=False)
        except Exception as e:  # gin raises several types; one message with the file is what users need
            raise ValueError(f"bad gin file {path}: {e}") from e
    for b in bindings:
        try:
            gin.parse_config(b)
        except Exception as e:
            raise ValueError(f"bad gin binding --gin.{b}: {e}") from e
    if finalize:
        gin.finalize()


def gin_only_flags(command: str, argv: Sequence[str]):
    """(gin_files, gin_bindings) for a command that takes nothing but Gin flags; None (after one
    message on stderr) when other arguments were given."""
    import sys

    files, bindings, rest = split_gin_flags(argv)
    if rest:
        print(f"lmcor {command}: unknown arguments {rest}", file=sys.stderr)
        return None
    return files, bindings
