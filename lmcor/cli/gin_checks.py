"""Checks of the parsed Gin configuration that gin does not make, each failing as a GinError.

A --gin flag that sets a macro no parsed file reads is a typo that gin would bind and then
ignore; a binding or macro left at %gin.REQUIRED would fail far from the flag that was
forgotten. `check_statements` makes the same checks on statements parsed without imports
(`lmcor.cli.gin_command`, before a command loads its modules).
"""
from typing import List, Optional, Sequence

import gin
from gin import config_parser

from lmcor.cli.gin_errors import RENAMED, GinError, closest, required_message
from lmcor.cli.gin_values import (REQUIRED_READ, MacroRead, NoLookup, is_required, macro_read_by,
                              macros_in, quote_bare_value)


def check_statements(bindings: Sequence[str], statements: list) -> None:
    """parse_gin's checks of the command-line bindings, made from the statements of every file
    and binding before any is imported: a macro that nothing reads, and a macro that is read
    but left at %gin.REQUIRED (the last binding of a macro is the one gin keeps)."""
    read = macros_in(statements)
    check_bindings_are_read(bindings, read)
    read_names = {name.rsplit("/", 1)[-1] for name in read}
    last = {}
    for st in statements:
        if isinstance(st, config_parser.BindingStatement) and not st.arg_name:
            last[f"{st.scope}/{st.selector}" if st.scope else st.selector] = st.value
    for name, value in last.items():
        required = isinstance(value, MacroRead) and value == REQUIRED_READ  # not a string
        if required and name.rsplit("/", 1)[-1] in read_names:
            raise GinError(required_message(name))


def check_renamed(statements: list, where: str) -> None:
    """A GinError for the first binding of a renamed configurable (gin_errors.RENAMED), naming
    the binding to write instead; `where` starts the message (the file or flag)."""
    for st in statements:
        if not isinstance(st, config_parser.BindingStatement) or not st.arg_name:
            continue  # a macro, an import or an include
        name = st.selector.rsplit(".", 1)[-1]  # the selector may name the module too
        if name in RENAMED:
            line = f" (line {st.location.line_num})" if where.startswith("bad gin file") else ""
            scope = f"{st.scope}/" if st.scope else ""
            raise GinError(f"{where}{scope}{name}.{st.arg_name} was renamed "
                           f"{scope}{RENAMED[name]}.{st.arg_name}{line}")


def _macros_read() -> set:
    """The macros that some parsed value reads, in any file or binding, however nested."""
    macro = gin.config.get_configurable(gin.config.macro)
    return {macro_read_by(ref)
            for ref in gin.config.iterate_references(gin.config._CONFIG, to=macro)}


def _macros_set() -> set:
    return {scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"}


def _macros_bound_by(binding: str) -> List[str]:
    """The macros a binding string (one gin parsed already) sets: `NAME = ...`, maybe scoped."""
    return [f"{st.scope}/{st.selector}" if st.scope else st.selector
            for st in config_parser.ConfigParser(binding, NoLookup())
            if isinstance(st, config_parser.BindingStatement) and not st.arg_name]


def check_bindings_are_read(bindings: Sequence[str], read: Optional[set] = None) -> None:
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


def check_required(read_macros_only: bool) -> None:
    """A GinError naming the flag to add for a binding left at %gin.REQUIRED; with
    `read_macros_only`, for such a macro that some value reads."""
    read = _macros_read() if read_macros_only else set()
    for (scope, selector), params in gin.config._CONFIG.items():
        for arg, value in params.items():
            if not is_required(value):
                continue
            if read_macros_only and (selector != "gin.macro" or scope not in read):
                continue
            raise GinError(required_message(_binding_name(scope, selector, arg)))


def check_before_finalize() -> None:
    """What gin's finalize hooks check, each as one line naming the flag to add: a binding left
    at %gin.REQUIRED, a macro that is read but never set."""
    check_required(read_macros_only=False)
    known = _macros_set()
    for name in sorted(_macros_read() - known):
        close = closest(name, known)
        hint = f"did you mean {close}?" if close else f"add --gin.{name}=VALUE"
        raise GinError(f"the macro {name} is read (%{name}) but never set; {hint}")
