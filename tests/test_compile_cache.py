"""The persistent compilation cache: where it lives, that a second process reuses what the first
compiled, that it can be turned off, and that a corrupt entry only costs a recompile."""
import json
import os
import subprocess
import sys

from lmcor import compile_cache

# Compiles one small function (after importing lmcor, as every entry point does) and reports
# the cache folder JAX uses, the result, and how many persistent-cache hits JAX counted.
_PROBE = """
import json, lmcor, jax, jax.numpy as jnp
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum() + 3.0)
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir,
                  "value": float(f(jnp.ones((8, 8)))), "hits": len(hits)}))
"""


def _probe(env_extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LMCOR_", "JAX_COMPILATION_CACHE"))}
    # Every compile is worth caching here (JAX skips compiles under a second by default).
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env_extra)
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cache_folder_follows_the_environment(tmp_path):
    home = os.path.expanduser("~")
    assert compile_cache.cache_dir({}) == os.path.join(home, ".cache", "lmcor", "xla")
    assert compile_cache.cache_dir({"LMCOR_CACHE_DIR": "/c"}) == "/c/xla"
    assert compile_cache.cache_dir({"LMCOR_CACHE_DIR": "/c",
                                    "JAX_COMPILATION_CACHE_DIR": "/j"}) == "/j"
    for off in ("0", "off", "false"):
        assert compile_cache.cache_dir({"LMCOR_COMPILE_CACHE": off}) is None
    env = {"JAX_COMPILATION_CACHE_DIR": "/j", "LMCOR_COMPILE_CACHE": "0"}
    assert compile_cache.configure(env) is None and "JAX_COMPILATION_CACHE_DIR" not in env


def test_a_second_process_reuses_the_compiled_function(tmp_path):
    env = {"LMCOR_CACHE_DIR": str(tmp_path)}
    first = _probe(env)
    assert first["dir"] == str(tmp_path / "xla")
    entries = sorted(os.listdir(tmp_path / "xla"))
    assert entries and first["hits"] == 0
    second = _probe(env)
    assert second["hits"] >= 1 and second["value"] == first["value"]
    # A corrupt entry is skipped with a warning: the function compiles again, same result.
    for name in entries:
        (tmp_path / "xla" / name).write_bytes(b"not an executable")
    third = _probe(env)
    assert third["value"] == first["value"] and third["hits"] == 0


def test_the_cache_can_be_turned_off(tmp_path):
    off = _probe({"LMCOR_CACHE_DIR": str(tmp_path), "LMCOR_COMPILE_CACHE": "0"})
    assert off["dir"] is None and not (tmp_path / "xla").exists()
