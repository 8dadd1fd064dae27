"""`lmcor generate` on the real Gemma 3 270M GGUF. Its greedy output is compared with transformers
in tests/test_gemma_real.py, which already holds the reference model."""
import pytest

from lmcor import cli
from lmcor.cli import generate_command

PROMPT = "The capital of France is"


def _run(capsys, *flags):
    code = cli.main(["generate", *flags])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_bad_model_spec_is_one_clear_error(capsys):
    code, out, err = _run(capsys, f"--prompt={PROMPT}", "--model=onnx:/nowhere")
    assert code == 2 and out == ""
    assert "--model='onnx:/nowhere'" in err and "gguf:PATH or safetensors:DIR" in err


def test_escape_keeps_one_line_per_continuation():
    assert generate_command.escape("a\nb\r\nc") == "a\\nb\\r\\nc"


@pytest.mark.slow
def test_samples_one_line_each_and_reproducible(capsys):
    flags = [f"--prompt={PROMPT}", "--max_new_tokens=8", "--num_samples=3",
             "--temperature=1.0", "--top_p=0.95", "--seed=3"]
    code, first, _ = _run(capsys, *flags)
    code2, again, _ = _run(capsys, *flags)
    lines = first.splitlines()
    assert code == code2 == 0 and first == again
    assert len(lines) == 3 and len(set(lines)) > 1
