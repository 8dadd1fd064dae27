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

Every Gin mistake is a `GinError` with a one-line message (a name gin does not know comes with
the closest one it does), which a command prints as `lmcor <command>: error: ...`, exiting 2.
While a command runs (`command_line`), a macro its flags set that nothing parsed reads is such a
mistake too: gin would bind it and run with the files' value.
"""
import ast
import contextlib
import difflib
import glob
import inspect
import os
import re
import subprocess
import tokenize
from typing import List, Optional, Sequence, Tuple

import gin
from gin import config_parser

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO_ROOT, "gin")


class GinError(ValueError):
    """A mistake in the Gin files or --gin flags; the message is one line."""


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


def closest(name: str, candidates, cutoff: float = 0.6) -> Optional[str]:
    found = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=cutoff)
    return found[0] if found else None


# A value starting with one of these was meant as gin syntax; quoting it would hide the mistake.
_GIN_SYNTAX_START = tuple("@%'\"[({")
_SELECTOR = re.compile(r"[A-Za-z_][\w.]*(/[A-Za-z_][\w.]*)*")
_STRING_HINT = ("a string value can be written bare (--gin.NAME=text) or quoted "
                "(--gin.NAME=\"'text'\")")


class _MacroRead(str):
    """A `%NAME` that _NoLookup parsed: the name, told apart from a string value."""


class _NoLookup(config_parser.ParserDelegate):
    """Parses `@ref` and `%MACRO` without looking them up: only the syntax matters here, and an
    unknown reference should be reported by gin when the binding itself is parsed."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return scoped_configurable_name

    def macro(self, macro_name):
        return _MacroRead(macro_name)


_REQUIRED_READ = _MacroRead("gin.REQUIRED")  # gin's constant: parsed like a macro


def _macros_in(statements) -> set:
    """The macros that _NoLookup-parsed statements read, however nested in their values."""
    found, values = set(), [st.value for st in statements
                            if isinstance(st, config_parser.BindingStatement)]
    while values:
        value = values.pop()
        if isinstance(value, _MacroRead):
            if value != _REQUIRED_READ:
                found.add(str(value))
        elif isinstance(value, dict):
            values += [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple, set)):
            values += list(value)
    return found


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
    msg = f"bad gin binding --gin.{binding}: {reason.rstrip('.')}{_suggestion(reason)}"
    parts = _name_and_value(sent)
    if parts is not None and not _parses(parts[1]):
        msg += f"; {_STRING_HINT}"
    return msg


# ---------------------------------------------------------------------- one-line gin errors


def _configurable_names() -> List[str]:
    registry = gin.config._REGISTRY  # no public API lists the registered configurables
    return [registry.minimal_selector(sel) for sel, _ in registry.items()
            if not sel.startswith("gin.")]


def _parameter_names(selector: str) -> List[str]:
    try:
        configurable = gin.config._REGISTRY.get_match(selector)
        params = inspect.signature(configurable.wrapped).parameters if configurable else {}
    except (TypeError, ValueError):  # an ambiguous selector, a builtin without a signature
        return []
    return [name for name, p in params.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and name != "self"]


def _suggestion(reason: str) -> str:
    """'; did you mean X?' for gin's errors about a name it does not know."""
    unknown = re.search(r"No configurable matching (?:reference )?'@?([^'()]+)", reason)
    if unknown:
        close = closest(unknown[1].rsplit("/", 1)[-1], _configurable_names())
    else:
        param = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'",
                          reason)
        close = param and closest(param[2], _parameter_names(param[1]))
    return f"; did you mean {close}?" if close else ""


_IN_FILE = re.compile(r'In file "(?P<file>[^"]*)", line (?P<line>\d+)')
# What gin raises for a mistake in a file (its imports included); other errors are bugs, and
# keep their traceback.
_GIN_FILE_ERRORS = (ValueError, SyntaxError, tokenize.TokenError, OSError, ImportError)


def _file_error(path: str, err: Exception, parsing: Optional[str] = None) -> str:
    """One line for `err`, raised reading the gin file `path`: gin's reason, the line, and the
    included file it is in when that is not `path` itself. `parsing` is the file being read,
    for an error that does not say (the tokenizer's)."""
    if isinstance(err, tokenize.TokenError):
        reason, where, line = err.args[0], parsing, None  # its line is past the file's end
    elif isinstance(err, SyntaxError):  # gin's parser: the location is in the attributes
        reason, where, line = err.msg, err.filename or parsing, err.lineno
    else:
        text = str(err).strip()
        reason = text.splitlines()[0].strip() if text else type(err).__name__
        found = _IN_FILE.search(text)  # the first location is the innermost include's
        where, line = (found["file"], found["line"]) if found else (parsing, None)
    reason = str(reason).rstrip(".") + _suggestion(str(reason))
    inside = bool(where) and os.path.abspath(where) != os.path.abspath(path)
    if line:
        reason += f" (in {where} line {line})" if inside else f" (line {line})"
    elif inside:
        reason += f" (in {where})"
    return f"bad gin file {path}: {reason}"


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
                parsed = list(config_parser.ConfigParser(f, _NoLookup()))
        except (SyntaxError, tokenize.TokenError) as e:
            raise GinError(_file_error(path, e, current)) from None
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
        return list(config_parser.ConfigParser(sent, _NoLookup()))
    except (SyntaxError, tokenize.TokenError) as e:
        raise GinError(_binding_error(binding, sent, e)) from None


def check_statements(bindings: Sequence[str], statements: list) -> None:
    """parse_gin's checks of the command-line bindings, made from the statements of every file
    and binding before any is imported: a macro that nothing reads, and a macro that is read
    but left at %gin.REQUIRED (the last binding of a macro is the one gin keeps)."""
    read = _macros_in(statements)
    _check_bindings_are_read(bindings, read)
    read_names = {name.rsplit("/", 1)[-1] for name in read}
    last = {}
    for st in statements:
        if isinstance(st, config_parser.BindingStatement) and not st.arg_name:
            last[f"{st.scope}/{st.selector}" if st.scope else st.selector] = st.value
    for name, value in last.items():
        required = isinstance(value, _MacroRead) and value == _REQUIRED_READ  # not a string
        if required and name.rsplit("/", 1)[-1] in read_names:
            raise GinError(_required(name))


# ---------------------------------------------------------------------- macros and REQUIRED


def _is_required(value) -> bool:
    """Whether a parsed value is `%gin.REQUIRED`, gin's "must be overridden"."""
    return (isinstance(value, gin.config.ConfigurableReference)
            and value.scoped_selector == "gin.REQUIRED/gin.constant")


def _macro_read_by(value) -> Optional[str]:
    """The macro that a parsed value `%NAME` reads; None for any other value."""
    if (isinstance(value, gin.config.ConfigurableReference)
            and value.configurable.selector == "gin.macro"):
        return value.scoped_selector.rsplit("/", 1)[0]
    return None


def _macros_read() -> set:
    """The macros that some parsed value reads, in any file or binding, however nested."""
    macro = gin.config.get_configurable(gin.config.macro)
    return {_macro_read_by(ref)
            for ref in gin.config.iterate_references(gin.config._CONFIG, to=macro)}


def _macros_set() -> set:
    return {scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"}


def _macros_bound_by(binding: str) -> List[str]:
    """The macros a binding string (one gin parsed already) sets: `NAME = ...`, maybe scoped."""
    return [f"{st.scope}/{st.selector}" if st.scope else st.selector
            for st in config_parser.ConfigParser(binding, _NoLookup())
            if isinstance(st, config_parser.BindingStatement) and not st.arg_name]


def _check_bindings_are_read(bindings: Sequence[str], read: Optional[set] = None) -> None:
    """A GinError for the first binding that sets a macro nothing in `read` (default: the parsed
    configuration) reads."""
    read = _macros_read() if read is None else read
    sent = [quote_bare_value(b) for b in bindings]
    # A macro set in a scope (`scope/NAME`) is what `%NAME` reads inside that scope.
    read_names = {name.rsplit("/", 1)[-1] for name in read}
    for binding, text in zip(bindings, sent):
        for name in _macros_bound_by(text):
            if name.rsplit("/", 1)[-1] in read_names:
                continue
            close = closest(name, read)
            hint = (f"did you mean {close}?" if close else
                    f"the macros the Gin files read: {', '.join(sorted(read))}" if read else
                    "the Gin files read no macro")
            raise GinError(f"--gin.{binding}: nothing reads the macro {name} (no parsed Gin "
                           f"file has %{name}); {hint}")


def _binding_name(scope: str, selector: str, arg: str) -> str:
    if selector == "gin.macro":
        return scope
    name = f"{gin.config._REGISTRY.minimal_selector(selector)}.{arg}"
    return f"{scope}/{name}" if scope else name


def _required(name: str, set_in_file: bool = True) -> str:
    where = " (a Gin file sets it to %gin.REQUIRED)" if set_in_file else ""
    return f"{name} is required{where}; add --gin.{name}=VALUE"


def _check_required(read_macros_only: bool) -> None:
    """A GinError naming the flag to add for a binding left at %gin.REQUIRED; with
    `read_macros_only`, for such a macro that some value reads."""
    read = _macros_read() if read_macros_only else set()
    for (scope, selector), params in gin.config._CONFIG.items():
        for arg, value in params.items():
            if not _is_required(value):
                continue
            if read_macros_only and (selector != "gin.macro" or scope not in read):
                continue
            raise GinError(_required(_binding_name(scope, selector, arg)))


def _check_before_finalize() -> None:
    """What gin's finalize hooks check, each as one line naming the flag to add: a binding left
    at %gin.REQUIRED, a macro that is read but never set."""
    _check_required(read_macros_only=False)
    known = _macros_set()
    for name in sorted(_macros_read() - known):
        close = closest(name, known)
        hint = f"did you mean {close}?" if close else f"add --gin.{name}=VALUE"
        raise GinError(f"the macro {name} is read (%{name}) but never set; {hint}")


_MISSING = re.compile(r"Required bindings for `([^`]+)` not provided in config: (\[[^\]]*\])")


def _missing_required(err: RuntimeError) -> Optional[str]:
    """One line for gin's call-time error about REQUIRED parameters left unbound (None for any
    other RuntimeError). A parameter bound to a macro that a Gin file left at %gin.REQUIRED is
    reported as that macro: the flag people add."""
    found = _MISSING.match(str(err))
    if not found:
        return None
    selector = found[1]
    try:
        configurable = gin.config._REGISTRY.get_match(selector)
    except ValueError:  # ambiguous: report the parameters as gin named them
        configurable = None
    bound = gin.config._CONFIG.get(("", configurable.selector), {}) if configurable else {}
    messages = []
    for param in ast.literal_eval(found[2]):
        message, value, seen = _required(f"{selector}.{param}", False), bound.get(param), set()
        while _macro_read_by(value) and _macro_read_by(value) not in seen:
            macro = _macro_read_by(value)
            seen.add(macro)
            value = gin.config._CONFIG.get((macro, "gin.macro"), {}).get("value")
            if _is_required(value):
                message = _required(macro)
        messages.append(message)
    return "; ".join(messages)


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
        message = _missing_required(e)
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
        except _GIN_FILE_ERRORS as e:
            raise GinError(_file_error(path, e)) from e
    sent = [quote_bare_value(b) for b in bindings]
    for b, text in zip(bindings, sent):
        try:
            gin.parse_config(text)
        except Exception as e:
            raise GinError(_binding_error(b, text, e)) from e
    if _COMMAND_LINE:
        _check_bindings_are_read(bindings)
    if finalize:
        _check_before_finalize()
        try:
            gin.finalize()
        except ValueError as e:  # another finalize hook's check
            raise GinError(str(e).strip().splitlines()[0]) from e
    elif _COMMAND_LINE:
        # Unfinalized, gin hands %gin.REQUIRED on as a value (an `object()`), to fail far from
        # the flag that was forgotten. Parameters are left alone: a file may leave one REQUIRED
        # for a configurable this command never calls.
        _check_required(read_macros_only=True)


def git_revision() -> Optional[str]:
    """The checkout's commit, recorded beside results so a figure names the code behind it;
    None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
