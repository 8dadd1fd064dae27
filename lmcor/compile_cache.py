"""A persistent XLA compilation cache for every lmcor command.

Compiling the corrector's decode shapes takes minutes on a small CPU (`lmcor serve` warms up
dozens of them), and without a cache every run pays that again. JAX can keep compiled
executables on disk; `configure()` (called when the `lmcor` package is imported, so every entry
point and `python -m lmcor.cli` gets it) points it at

    $LMCOR_CACHE_DIR/xla          when LMCOR_CACHE_DIR is set,
    ~/.cache/lmcor/xla            otherwise,

unless JAX_COMPILATION_CACHE_DIR already names a folder (then that one is used) or
LMCOR_COMPILE_CACHE=0 turns the cache off. Entries are keyed by the computation, the compile
options and the jaxlib version, so a stale entry is never used for other code. A corrupt entry
is reported by JAX as a warning and the function is compiled as if the entry were absent.
The cache is capped at LMCOR_COMPILE_CACHE_MAX_BYTES (default 4 GiB; JAX evicts the least
recently used entries).
"""
import os
import sys
from typing import Optional

ENV_OFF = "LMCOR_COMPILE_CACHE"
ENV_ROOT = "LMCOR_CACHE_DIR"
ENV_MAX_BYTES = "LMCOR_COMPILE_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 4 << 30


def cache_dir(environ=os.environ) -> Optional[str]:
    """The folder the cache uses, or None when it is off."""
    if environ.get(ENV_OFF, "1").strip().lower() in ("0", "false", "off", "no"):
        return None
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return environ["JAX_COMPILATION_CACHE_DIR"]
    root = environ.get(ENV_ROOT) or os.path.join(os.path.expanduser("~"), ".cache", "lmcor")
    return os.path.join(root, "xla")


def configure(environ=os.environ) -> Optional[str]:
    """Turns the cache on (or off) for this process; returns its folder or None.

    Environment variables are what JAX reads when it is first imported, so setting them here
    costs no import; if JAX is already imported, its config is updated as well."""
    folder = cache_dir(environ)
    max_bytes = environ.get(ENV_MAX_BYTES, str(DEFAULT_MAX_BYTES))
    if folder is None:
        environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    else:
        environ["JAX_COMPILATION_CACHE_DIR"] = folder
        environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", max_bytes)
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.config.update("jax_compilation_cache_dir", folder)
        if folder is not None:
            jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    return folder
