"""The commands configured by Gin (train, sample, evaluate, quickstart, pipeline): their --help,
and `check_gin_flags`, the checks of Gin flags that need no configurable, made before a command
imports its modules (10-20 s for the trainer), so that a typo is one line in a fraction of a
second. `lmcor export` and `lmcor serve` make the same checks through the same function.
"""
import dataclasses
import os
import textwrap
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from lmcor.cli.command_errors import DEBUG_ENV, report_error
from lmcor.cli.gin_flags import (check_gin_binding, command_line, read_gin_file,
                                 resolve_gin_file, split_gin_flags)
from lmcor.cli.gin_checks import check_renamed, check_statements
from lmcor.cli.gin_errors import GinError, closest


@dataclasses.dataclass(frozen=True)
class GinFlags:
    files: List[str]
    bindings: List[str]
    distributed: Dict[str, object]  # keyword arguments of lmcor.cli.distributed.initialize


_BINDING_HELP = ("--gin.NAME=VALUE", "a binding, read after the files (repeatable): NAME is a "
                 "macro (below) or configurable.parameter; a string needs no quotes")
_DEBUG_HELP = ("--debug", f"print an error's traceback too (or set {DEBUG_ENV}=1)")
_DISTRIBUTED_HELP = (
    ("--coordinator_address=HOST:PORT", "a multi-host job's coordinator (or "
                                        "JAX_COORDINATOR_ADDRESS)"),
    ("--num_processes=N", "the job's number of processes (or JAX_NUM_PROCESSES)"),
    ("--process_id=I", "this process's index, 0 to N-1 (or JAX_PROCESS_ID)"),
)
_HELP_WIDTH = 100


def _table(rows) -> List[str]:
    width = max(len(name) for name, _ in rows)
    out = []
    for name, text in rows:
        lines = textwrap.wrap(text, _HELP_WIDTH - width - 4) or [""]
        out += [f"  {name:<{width}}  {lines[0]}", *(" " * (width + 4) + line
                                                   for line in lines[1:])]
    return out


def check_gin_flags(files: Sequence[str], bindings: Sequence[str],
                    run_config: Optional[str] = None) -> None:
    """Every check of Gin flags that needs no configurable, made before a command loads anything
    (the Gin commands, `lmcor export` and `lmcor serve` alike): each file is found and parses,
    each binding parses, no binding names a renamed configurable, and, when every statement is
    known (the files', and `run_config`, the config.gin of the run a command loads first), no
    binding sets a macro that nothing reads and no read macro is left at %gin.REQUIRED. A
    mistake is a one-line GinError.

    parse_gin makes the last two checks again once the files are imported. Made here too, a
    typo in a macro's name or a forgotten MODEL_DIR is reported before the command's imports.
    Without files or a run config, a library caller may have bound everything from code, so
    nothing is said about macros."""
    paths = [run_config] if run_config and os.path.isfile(run_config) else []
    for f in files:
        try:
            paths.append(resolve_gin_file(f))
        except FileNotFoundError as e:
            raise GinError(str(e)) from None
    statements: Optional[list] = []
    for path in paths:
        in_file = read_gin_file(path)
        check_renamed(in_file or [], f"bad gin file {path}: ")
        statements = None if in_file is None or statements is None else statements + in_file
    in_bindings = []
    for b in bindings:
        parsed = check_gin_binding(b)
        check_renamed(parsed, f"--gin.{b}: ")
        in_bindings += parsed
    if paths and statements is not None:
        check_statements(bindings, statements + in_bindings)


@dataclasses.dataclass(frozen=True)
class GinCommand:
    """A command configured by Gin files and --gin flags: its --help, and the checks of its flags
    that need no configurable (their form, each gin file found and well formed). Both run before
    the command imports its modules, which takes 10-20 s for the trainer."""
    name: str
    summary: str
    macros: Tuple[Tuple[str, str], ...]  # (NAME, what it sets) for the macros people bind
    examples: Tuple[str, ...] = ()
    default_gin: Optional[str] = None  # read when no --gin_file is given
    start_from: str = ""  # the file to name when a --gin_file is needed and none is given
    distributed: bool = False  # takes lmcor.cli.distributed's flags

    def help(self) -> str:
        files = "[--gin_file=FILE ...]" if self.default_gin else \
            "--gin_file=FILE [--gin_file=FILE ...]"
        usage = f"usage: lmcor {self.name} {files} [--gin.NAME=VALUE ...]"
        if self.distributed:
            usage += " [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]"
        default = f"; default {self.default_gin}" if self.default_gin else ""
        flags = [("--gin_file=FILE", f"a Gin file, as given or under gin/ (repeatable, read in "
                                     f"order{default})"), _BINDING_HELP,
                 *(_DISTRIBUTED_HELP if self.distributed else ()), _DEBUG_HELP,
                 ("-h, --help", "show this help and exit")]
        lines = [usage, "", *textwrap.wrap(self.summary, _HELP_WIDTH), "", "flags:",
                 *_table(flags), "", "main Gin macros (--gin.NAME=VALUE):", *_table(self.macros)]
        if self.examples:
            lines += ["", "examples:", *(f"  {e}" for e in self.examples)]
        return "\n".join(lines) + "\n"

    def parse(self, argv: Sequence[str]) -> GinFlags:
        """The flags in `argv`, checked as far as that needs no configurable (GinError). No gin
        file is fine here: a library caller may have bound everything itself."""
        argv, dist = list(argv), {}
        if self.distributed:
            from lmcor.cli import distributed  # imports no jax before a job is joined

            try:
                dist, argv = distributed.split_distributed_flags(argv)
            except ValueError as e:
                raise GinError(str(e)) from None
        files, bindings, rest = split_gin_flags(argv)
        if rest:
            raise GinError(self._unrecognized(rest))
        files = files or ([self.default_gin] if self.default_gin else [])
        check_gin_flags(files, bindings)
        return GinFlags(files, bindings, dist)

    def _unrecognized(self, rest: Sequence[str]) -> str:
        known = ["--gin_file", "--help", "--debug"]
        if self.distributed:
            from lmcor.cli import distributed

            known += [f"--{name}" for name in distributed.FLAG_NAMES]
        close = closest(rest[0].split("=", 1)[0], known)
        hint = f" (did you mean {close}?)" if close else ""
        return f"unrecognized arguments: {' '.join(rest)}{hint}"

    def fail(self, err) -> int:
        return report_error(f"lmcor {self.name}", err)

    def front(self, argv: Sequence[str]) -> Union[int, GinFlags]:
        """The exit status when `argv` asks for help (printed) or has a mistake (reported in one
        line), else its flags."""
        argv = list(argv)
        if "-h" in argv or "--help" in argv:
            print(self.help(), end="")
            return 0
        if "--debug" in argv:
            argv = [a for a in argv if a != "--debug"]
            os.environ[DEBUG_ENV] = "1"  # the stages a command runs as processes inherit it
        try:
            flags = self.parse(argv)
        except GinError as e:
            return self.fail(e)
        if not flags.files:
            return self.fail(f"no --gin_file given (start from --gin_file={self.start_from}; "
                             f"see lmcor {self.name} --help)")
        return flags

    def run(self, argv: Sequence[str], body: Callable[[GinFlags], int],
            input_errors: Tuple[type, ...] = ()) -> int:
        """`lmcor <name> argv`: the help or the flag checks, then body(flags) as the command line
        (`command_line`), with its Gin mistakes and the `input_errors` it raises (a command that
        checks its input before its work names them: e.g. a bad pool line) reported in one line
        and exit status 2; any other error propagates with its traceback."""
        flags = self.front(argv)
        if isinstance(flags, int):
            return flags
        try:
            with command_line():
                return body(flags)
        except (GinError, *input_errors) as e:
            return self.fail(e)


def one_line_parser(**kwargs):
    """An argparse parser whose errors are one line, `lmcor <command>: error: ...` with exit
    status 2, like the Gin commands' (argparse's own prints its usage first)."""
    import argparse

    class _Parser(argparse.ArgumentParser):
        def error(self, message):
            self.exit(2, f"{self.prog}: error: {message}\n")

    return _Parser(**kwargs)
