"""The bundled GGUF is assembled safely by processes that start together (two table rows)."""
import os
import subprocess
import sys

CALL = ("from lmcor.checkpoints.bundled import bundled_gemma_gguf_path as p; print(p())")


def test_two_processes_assembling_the_bundled_gguf_at_once_both_get_it(tmp_path):
    env = dict(os.environ, HOME=str(tmp_path))  # an empty cache: both must assemble or wait
    procs = [subprocess.Popen([sys.executable, "-c", CALL], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1 and paths.pop().startswith(str(tmp_path))
