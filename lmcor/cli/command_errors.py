"""How every command reports a mistake in what it was given: one line on stderr,
`lmcor <command>: error: ...`, and exit status 2. The traceback is printed too only when
debugging (`LMCOR_DEBUG=1`, which the Gin commands' `--debug` sets): users need the file, line and
field at fault, not the stack that found it.
"""
import os
import sys
import traceback

DEBUG_ENV = "LMCOR_DEBUG"
# Gin adds where an error was raised on a line of its own ("In call to configurable 'x' (...)");
# the message before it already says what is wrong.
_GIN_CONTEXT = "In call to configurable"


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def one_line(err) -> str:
    """The message of `err` on one line: its lines joined by '; ' (a checkpoint mismatch lists
    a tensor per line), gin's context lines left out."""
    lines = [line.strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line and not line.startswith(_GIN_CONTEXT)]
    return "; ".join(lines) or type(err).__name__


def _end_progress_bars() -> None:
    # A bar that an error interrupted still holds its line: closing it ends that line, so the
    # error starts a line of its own. tqdm is not imported for this if nothing imported it.
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def report_error(command: str, err, code: int = 2) -> int:
    """Prints `err` as `command: error: ...` (and its traceback when debugging); returns
    `code`, the exit status."""
    _end_progress_bars()
    if debugging() and isinstance(err, BaseException) and err.__traceback__ is not None:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    print(f"{command}: error: {one_line(err)}", file=sys.stderr, flush=True)
    return code
