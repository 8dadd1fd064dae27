"""Compiled decode loops, kept per decode adapter and keyed on loop options and argument shapes.

Compiling ahead of time (rather than on first call) lets callers see compile time apart from
decode time, which is what tokens/s should measure; counting the executables lets a server check
that it compiles nothing once it has warmed up.
"""
import time
from typing import Any

import jax
import numpy as np


class Compiled:
    """A jitted loop with its executables keyed on argument shapes, dtypes and shardings."""

    def __init__(self, fn):
        self.jitted, self.executables, self.last_compile_s = jax.jit(fn), {}, 0.0

    def compile(self, *args):
        """The executable for these arguments' shapes, compiled now unless it already is."""
        leaves, tree = jax.tree.flatten(args)
        sig = (tree, tuple((np.shape(x), str(getattr(x, "dtype", type(x))),
                            getattr(x, "sharding", None)) for x in leaves))
        self.last_compile_s = 0.0
        if sig not in self.executables:
            start = time.perf_counter()
            self.executables[sig] = self.jitted.lower(*args).compile()
            self.last_compile_s = time.perf_counter() - start
        return self.executables[sig]

    def __call__(self, *args):
        return self.compile(*args)(*args)


# Compiled loops per adapter object (held strongly, so ids are never reused while cached).
_COMPILED: dict[int, tuple[Any, dict]] = {}


def loop_for(lm, name, fn, opts) -> Compiled:
    """The compiled loop `fn(lm, opts, *args)` for this adapter, created on first use."""
    holder = _COMPILED.setdefault(id(lm), (lm, {}))[1]
    key = (name, tuple(sorted(opts.items())))
    if key not in holder:
        holder[key] = Compiled(lambda *args: fn(lm, opts, *args))
    return holder[key]


def compiled_count(lm) -> int:
    """Executables compiled so far for this adapter, over every loop, mode and shape."""
    loops = _COMPILED.get(id(lm), (None, {}))[1]
    return sum(len(loop.executables) for loop in list(loops.values()))
