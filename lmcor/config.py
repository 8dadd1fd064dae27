"""T5X-style Gin flags: `--gin_file=F` (repeatable) and `--gin.NAME=VALUE` bindings.

Gin files are looked up as given, then relative to the repository's `gin/` folder, so
`--gin_file=runs/train_corrector.gin` and `--gin_file=gin/runs/train_corrector.gin` both work.

Every binding given to `parse_gin` (each command's `--gin.NAME=VALUE` flags) reads a value gin
cannot parse as a string, because a bare path is what people type and the shell quoting gin
would need is easy to get wrong: `--gin.MODEL_DIR=runs/x` binds the same as
`--gin.MODEL_DIR="'runs/x'"`. Values gin does parse (numbers, True/None, lists, `@ref`,
`%MACRO`, quoted strings) keep their meaning, and so do values that start like gin syntax (a
quote, a bracket, `@`, `%`): a typo in one of those is an error, not a string. Gin files are
parsed as written.
"""
import os
import re
import subprocess
import tokenize
from typing import Optional, Sequence, Tuple

import gin
from gin import config_parser

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


# A value starting with one of these was meant as gin syntax; quoting it would hide the mistake.
_GIN_SYNTAX_START = tuple("@%'\"[({")
_SELECTOR = re.compile(r"[A-Za-z_][\w.]*(/[A-Za-z_][\w.]*)*")
_STRING_HINT = ("a string value can be written bare (--gin.NAME=text) or quoted "
                "(--gin.NAME=\"'text'\")")


class _NoLookup(config_parser.ParserDelegate):
    """Parses `@ref` and `%MACRO` without looking them up: only the syntax matters here, and an
    unknown reference should be reported by gin when the binding itself is parsed."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return scoped_configurable_name

    def macro(self, macro_name):
        return macro_name


def _name_and_value(binding: str) -> Optional[Tuple[str, str]]:
    """(NAME, VALUE) of a one-line `NAME = VALUE` binding; None for anything else (an import,
    several lines), which is passed to gin as written."""
    name, sep, value = binding.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or "\n" in value or not _SELECTOR.fullmatch(name):
        return None
    return name, value


def _parses(value: str) -> bool:
    """Whether gin reads all of `value` as one value (`1 2` is not: gin stops after the 1)."""
    parser = config_parser.ConfigParser(value, _NoLookup())
    try:
        parser.parse_value()
    except Exception:  # SyntaxError, tokenize.TokenError, ...: gin does not read it as a value
        return False
    return parser.current_token.type in (tokenize.NEWLINE, tokenize.ENDMARKER)


def quote_bare_value(binding: str) -> str:
    """`NAME=runs/x` -> `NAME = 'runs/x'`; any binding whose value gin parses, or that starts like
    gin syntax, is returned unchanged (see the module docstring)."""
    parts = _name_and_value(binding)
    if parts is None:
        return binding
    name, value = parts
    if not value or value.startswith(_GIN_SYNTAX_START) or _parses(value):
        return binding
    return f"{name} = {value!r}"


def _binding_error(binding: str, sent: str, err: Exception) -> str:
    """One line naming the binding, with gin's most specific reason (the line before its
    location block: the binding is the location) and, when the value gin got does not parse,
    how to write a string."""
    text = str(err.args[0] if isinstance(err, tokenize.TokenError) and err.args else err)
    lines = [line.strip() for line in text.strip().splitlines()]
    end = next((i for i, line in enumerate(lines) if line.startswith("In bindings string")),
               len(lines))
    reason = re.sub(r"\s*\(line \d+\)$", "", lines[end - 1]) if end else type(err).__name__
    msg = f"bad gin binding --gin.{binding}: {reason.rstrip('.')}"
    parts = _name_and_value(sent)
    if parts is not None and not _parses(parts[1]):
        msg += f"; {_STRING_HINT}"
    return msg


def resolve_gin_file(path: str) -> str:
    for cand in (path, os.path.join(GIN_DIR, path), os.path.join(REPO_ROOT, path)):
        if os.path.isfile(cand):
            return os.path.abspath(cand)
    raise FileNotFoundError(f"gin file not found: {path!r} (also looked under {GIN_DIR})")


def parse_gin(files: Sequence[str], bindings: Sequence[str], finalize: bool = True) -> None:
    """Parses gin files + bindings (a bare string value is quoted: `quote_bare_value`); errors
    name the offending file or binding, a binding's in one line."""
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
        sent = quote_bare_value(b)
        try:
            gin.parse_config(sent)
        except Exception as e:
            raise ValueError(_binding_error(b, sent, e)) from e
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


def git_revision() -> Optional[str]:
    """The checkout's commit, recorded beside results so a figure names the code behind it;
    None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
