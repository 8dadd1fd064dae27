"""lmcor: small corrector models that rank, merge and rewrite an LLM's candidate pool."""
import os as _os

# TensorFlow (pulled in by seqio/tfds) is only used for input pipelines; keep it quiet and off GPUs
# so JAX owns the accelerator.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

# Every command reuses compiled XLA executables across runs (lmcor/compile_cache.py).
from lmcor import compile_cache as _compile_cache  # noqa: E402

_compile_cache.configure()
