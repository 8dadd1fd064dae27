"""Where things are: the checkout, its Gin files, the raw datasets, and the files a run folder
holds. Every stage reads these names from here, so a folder or file is named in one place.

The data root is configurable (`data_root.path` in Gin), else `$LMCOR_DATA_DIR`, else
`../shared/data` beside the checkout: the layout the tests and the README assume.
"""
import os
import subprocess
from typing import Optional

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_DIR = os.path.join(REPO_ROOT, "gin")
DATA_DIR_ENV = "LMCOR_DATA_DIR"

# A trainer's MODEL_DIR (and a released adapter folder, which copies the first three):
RUN_CONFIG = "config.gin"  # the run's operative Gin config (T5X's convention)
TRAIN_SUMMARY = "train_summary.json"  # how the run ended; written last, never on SIGTERM
TASK_VOCAB = "task_vocab.json"  # a task-vocabulary corrector's pieces
BASE_WEIGHTS = "base_weights.json"  # the base checkpoint a LoRA run started from
EVAL_HISTORY = os.path.join("eval", "history.jsonl")  # one line per validation
CHECKPOINTS = "checkpoints"  # the Orbax steps
# A pool folder (sampling job or import) or a release folder: what it holds and how it was made.
MANIFEST = "manifest.json"


@gin.configurable
def data_root(path: Optional[str] = None) -> str:
    """Where the raw datasets live: `path` (Gin: data_root.path), else $LMCOR_DATA_DIR, else
    ../shared/data beside the checkout."""
    return path or os.environ.get(DATA_DIR_ENV) or os.path.join(os.path.dirname(REPO_ROOT),
                                                                "shared", "data")


def code_version() -> Optional[str]:
    """The checkout's commit, recorded beside results so a figure names the code behind it;
    None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
