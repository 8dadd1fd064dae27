"""Gin mistakes as one-line messages: `GinError`, and the closest known name for a typo.

A command prints a GinError as `lmcor <command>: error: ...` and exits 2. Gin's own errors span
several lines and name no alternative; these name the file or binding, gin's most specific
reason, the closest configurable, parameter or file that does exist, and the flag to add for a
value left at %gin.REQUIRED.
"""
import ast
import difflib
import inspect
import os
import re
import tokenize
from typing import List, Optional

import gin

from lmcor.cli.gin_values import STRING_HINT, is_required, macro_read_by, name_and_value, parses


class GinError(ValueError):
    """A mistake in the Gin files or --gin flags; the message is one line."""


# Configurables whose Gin name changed: a binding of the old name is refused, naming the new one.
RENAMED = {"quickstart": "pipeline"}


def closest(name: str, candidates, cutoff: float = 0.6) -> Optional[str]:
    found = difflib.get_close_matches(name, sorted(set(candidates)), n=1, cutoff=cutoff)
    return found[0] if found else None


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
        name = unknown[1].rsplit("/", 1)[-1]
        if name in RENAMED:
            return f"; {name} was renamed {RENAMED[name]}"
        close = closest(name, _configurable_names())
    else:
        param = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'",
                          reason)
        close = param and closest(param[2], _parameter_names(param[1]))
    return f"; did you mean {close}?" if close else ""


def binding_error(binding: str, sent: str, err: Exception) -> str:
    """One line naming the binding, with gin's most specific reason (the line before its
    location block: the binding is the location) and, when the value gin got does not parse,
    how to write a string."""
    text = str(err.args[0] if isinstance(err, tokenize.TokenError) and err.args else err)
    lines = [line.strip() for line in text.strip().splitlines()]
    end = next((i for i, line in enumerate(lines) if line.startswith("In bindings string")),
               len(lines))
    reason = re.sub(r"\s*\(line \d+\)$", "", lines[end - 1]) if end else type(err).__name__
    msg = f"bad gin binding --gin.{binding}: {reason.rstrip('.')}{_suggestion(reason)}"
    parts = name_and_value(sent)
    if parts is not None and not parses(parts[1]):
        msg += f"; {STRING_HINT}"
    return msg


_IN_FILE = re.compile(r'In file "(?P<file>[^"]*)", line (?P<line>\d+)')
# What gin raises for a mistake in a file (its imports included); other errors are bugs, and
# keep their traceback.
GIN_FILE_ERRORS = (ValueError, SyntaxError, tokenize.TokenError, OSError, ImportError)


def file_error(path: str, err: Exception, parsing: Optional[str] = None) -> str:
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


def required_message(name: str, set_in_file: bool = True) -> str:
    where = " (a Gin file sets it to %gin.REQUIRED)" if set_in_file else ""
    return f"{name} is required{where}; add --gin.{name}=VALUE"


_MISSING = re.compile(r"Required bindings for `([^`]+)` not provided in config: (\[[^\]]*\])")


def missing_required(err: RuntimeError) -> Optional[str]:
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
        message = required_message(f"{selector}.{param}", False)
        value, seen = bound.get(param), set()
        while macro_read_by(value) and macro_read_by(value) not in seen:
            macro = macro_read_by(value)
            seen.add(macro)
            value = gin.config._CONFIG.get((macro, "gin.macro"), {}).get("value")
            if is_required(value):
                message = required_message(macro)
        messages.append(message)
    return "; ".join(messages)
