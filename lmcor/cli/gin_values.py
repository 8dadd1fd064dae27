"""How gin values are read: bare --gin strings to quote, and what parsed values mean.

Every --gin binding a command gets reads a value gin cannot parse as a string, because a bare
path is what people type and the shell quoting gin would need is easy to get wrong:
`--gin.MODEL_DIR=runs/x` binds the same as `--gin.MODEL_DIR="'runs/x'"`. Values gin does parse
(numbers, True/None, lists, `@ref`, `%MACRO`, quoted strings) keep their meaning, and so do
values that start like gin syntax (a quote, a bracket, `@`, `%`): a typo in one of those is an
error, not a string.

Statements parsed with `NoLookup` need none of the configurables: a macro read stays a
`MacroRead`. In gin's own parsed config, `macro_read_by` and `is_required` tell a `%NAME` and
`%gin.REQUIRED` apart from other references.
"""
import re
import tokenize
from typing import Optional, Tuple

import gin
from gin import config_parser


# A value starting with one of these was meant as gin syntax; quoting it would hide the mistake.
_GIN_SYNTAX_START = tuple("@%'\"[({")
_SELECTOR = re.compile(r"[A-Za-z_][\w.]*(/[A-Za-z_][\w.]*)*")
STRING_HINT = ("a string value can be written bare (--gin.NAME=text) or quoted "
               "(--gin.NAME=\"'text'\")")


class MacroRead(str):
    """A `%NAME` that NoLookup parsed: the name, told apart from a string value."""


class NoLookup(config_parser.ParserDelegate):
    """Parses `@ref` and `%MACRO` without looking them up: only the syntax matters here, and an
    unknown reference should be reported by gin when the binding itself is parsed."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return scoped_configurable_name

    def macro(self, macro_name):
        return MacroRead(macro_name)


REQUIRED_READ = MacroRead("gin.REQUIRED")  # gin's constant: parsed like a macro


def macros_in(statements) -> set:
    """The macros that NoLookup-parsed statements read, however nested in their values."""
    found, values = set(), [st.value for st in statements
                            if isinstance(st, config_parser.BindingStatement)]
    while values:
        value = values.pop()
        if isinstance(value, MacroRead):
            if value != REQUIRED_READ:
                found.add(str(value))
        elif isinstance(value, dict):
            values += [*value.keys(), *value.values()]
        elif isinstance(value, (list, tuple, set)):
            values += list(value)
    return found


def name_and_value(binding: str) -> Optional[Tuple[str, str]]:
    """(NAME, VALUE) of a one-line `NAME = VALUE` binding; None for anything else (an import,
    several lines), which is passed to gin as written."""
    name, sep, value = binding.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or "\n" in value or not _SELECTOR.fullmatch(name):
        return None
    return name, value


def parses(value: str) -> bool:
    """Whether gin reads all of `value` as one value (`1 2` is not: gin stops after the 1)."""
    parser = config_parser.ConfigParser(value, NoLookup())
    try:
        parser.parse_value()
    except Exception:  # SyntaxError, tokenize.TokenError, ...: gin does not read it as a value
        return False
    return parser.current_token.type in (tokenize.NEWLINE, tokenize.ENDMARKER)


def quote_bare_value(binding: str) -> str:
    """`NAME=runs/x` -> `NAME = 'runs/x'`; any binding whose value gin parses, or that starts like
    gin syntax, is returned unchanged (see the module docstring)."""
    parts = name_and_value(binding)
    if parts is None:
        return binding
    name, value = parts
    if not value or value.startswith(_GIN_SYNTAX_START) or parses(value):
        return binding
    return f"{name} = {value!r}"


def is_required(value) -> bool:
    """Whether a parsed value is `%gin.REQUIRED`, gin's "must be overridden"."""
    return (isinstance(value, gin.config.ConfigurableReference)
            and value.scoped_selector == "gin.REQUIRED/gin.constant")


def macro_read_by(value) -> Optional[str]:
    """The macro that a parsed value `%NAME` reads; None for any other value."""
    if (isinstance(value, gin.config.ConfigurableReference)
            and value.configurable.selector == "gin.macro"):
        return value.scoped_selector.rsplit("/", 1)[0]
    return None
