"""T5X-style Gin flags: `--gin_file=F` (repeatable) and `--gin.NAME=VALUE` bindings.

Gin files are looked up as given, then relative to the repository's `gin/` folder, so
`--gin_file=runs/train_corrector.gin` and `--gin_file=gin/runs/train_corrector.gin` both work.

`parse_gin` reads the files as written and each binding with a bare string value quoted
(`gin_values.quote_bare_value`: `--gin.MODEL_DIR=runs/x` is `--gin.MODEL_DIR="'runs/x'"`).
Every Gin mistake is a `gin_errors.GinError` with a one-line message, which a command prints as
`lmcor <command>: error: ...`, exiting 2. While a command runs (`command_line`), a macro its
flags set that nothing parsed reads is such a mistake too (`gin_checks`): gin would bind it and
run with the files' value.
"""
import contextlib
import glob
import os
import tokenize
from typing import List, Optional, Sequence

import gin
from gin import config_parser

from lmcor.cli.gin_checks import check_before_finalize, check_bindings_are_read, check_required
from lmcor.cli.gin_errors import (GIN_FILE_ERRORS, GinError, binding_error, closest, file_error,
                              missing_required)
from lmcor.cli.gin_values import NoLookup, quote_bare_value
from lmcor.paths import GIN_DIR, REPO_ROOT



def split_gin_flags(argv: Sequence[str]):
    """Returns (gin_files, gin_bindings, remaining_argv)."""
    files, bindings, rest = [], [], []
    it = iter(argv)
    for arg in it:
        if arg == "--gin_file":
            path = next(it, None)
            if path is None:
                raise GinError("--gin_file needs a value (--gin_file=FILE)")
            files.append(path)
        elif arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg.startswith("--gin."):
            body = arg[len("--gin."):]
            if "=" not in body:
                raise GinError(f"{arg} needs the form --gin.NAME=VALUE")
            bindings.append(body)
        else:
            rest.append(arg)
    return files, bindings, rest


def _gin_file_names() -> List[str]:
    return [os.path.relpath(p, GIN_DIR)
            for p in glob.glob(os.path.join(GIN_DIR, "**", "*.gin"), recursive=True)]


def resolve_gin_file(path: str) -> str:
    for cand in (path, os.path.join(GIN_DIR, path), os.path.join(REPO_ROOT, path)):
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    # A high cutoff: short names are all somewhat like one of the many files.
    close = closest(path[len("gin/"):] if path.startswith("gin/") else path, _gin_file_names(),
                     cutoff=0.8)
    hint = f"; did you mean {close}?" if close else ""
    raise FileNotFoundError(f"gin file not found: {path!r} (also looked under {GIN_DIR}){hint}")


def _include_path(name: str) -> Optional[str]:
    """Where gin finds an `include` (on the search path parse_gin sets), or None."""
    cands = [name] if os.path.isabs(name) else [os.path.join(p, name)
                                                for p in (REPO_ROOT, GIN_DIR, "")]
    return next((c for c in cands if os.path.isfile(c)), None)


def read_gin_file(path: str) -> Optional[list]:
    """The statements of the gin file `path`, each include's in its place, as gin's parser reads
    them when it runs no import and looks nothing up: so this needs none of the modules a command
    imports, and a syntax error (a GinError) is reported at once. What needs the configurables is
    left to parse_gin, and so is an include not found here (then None: the files may hold more
    than the statements read)."""
    statements, complete = [], True

    def visit(current: str, including: frozenset) -> None:
        nonlocal complete
        try:
            with open(current, encoding="utf-8") as f:
                parsed = list(config_parser.ConfigParser(f, NoLookup()))
        except (SyntaxError, tokenize.TokenError) as e:
            raise GinError(file_error(path, e, current)) from None
        except (OSError, UnicodeDecodeError):  # gin reports it, naming the file
            complete = False
            return
        for statement in parsed:
            if not isinstance(statement, config_parser.IncludeStatement):
                statements.append(statement)
                continue
            found = _include_path(statement.filename)
            found = found and os.path.abspath(found)
            if found is None or found in including:  # not found, or a cycle: gin reports it
                complete = False
            else:
                visit(found, including | {found})

    start = os.path.abspath(path)
    visit(start, frozenset([start]))
    return statements if complete else None


def check_gin_binding(binding: str) -> list:
    """The statements of a --gin binding, parsed looking nothing up (GinError if it does not)."""
    sent = quote_bare_value(binding)
    try:
        return list(config_parser.ConfigParser(sent, NoLookup()))
    except (SyntaxError, tokenize.TokenError) as e:
        raise GinError(binding_error(binding, sent, e)) from None


_COMMAND_LINE: List[bool] = []


@contextlib.contextmanager
def command_line():
    """While a command runs on its own flags. Within, parse_gin's bindings are those flags, so a
    macro they set that nothing parsed reads is a GinError (a typo, which gin would bind and then
    ignore), and gin's call-time error for a REQUIRED parameter left unbound is a GinError
    naming the flag to add. Outside (tests, library callers that bind macros for files they may
    not parse) a binding nothing reads is allowed."""
    _COMMAND_LINE.append(True)
    try:
        yield
    except RuntimeError as e:
        message = missing_required(e)
        if message is None:
            raise
        raise GinError(message) from e
    finally:
        _COMMAND_LINE.pop()


def parse_gin(files: Sequence[str], bindings: Sequence[str], finalize: bool = True) -> None:
    """Parses gin files + bindings (a bare string value is quoted: `quote_bare_value`). A mistake
    is a one-line GinError naming the file or binding; a missing file, FileNotFoundError."""
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
        except GIN_FILE_ERRORS as e:
            raise GinError(file_error(path, e)) from e
    sent = [quote_bare_value(b) for b in bindings]
    for b, text in zip(bindings, sent):
        try:
            gin.parse_config(text)
        except Exception as e:
            raise GinError(binding_error(b, text, e)) from e
    if _COMMAND_LINE:
        check_bindings_are_read(bindings)
    if finalize:
        check_before_finalize()
        try:
            gin.finalize()
        except ValueError as e:  # another finalize hook's check
            raise GinError(str(e).strip().splitlines()[0]) from e
    elif _COMMAND_LINE:
        # Unfinalized, gin hands %gin.REQUIRED on as a value (an `object()`), to fail far from
        # the flag that was forgotten. Parameters are left alone: a file may leave one REQUIRED
        # for a configurable this command never calls.
        check_required(read_macros_only=True)

