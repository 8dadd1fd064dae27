"""The real Gemma 3 270M (Q4_K_M GGUF) in lmcor against transformers loading the same file."""
import os

import numpy as np
import pytest

from lmcor.checkpoints import gguf
from lmcor.checkpoints.hf_gemma import gemma_name_map
from lmcor.models.gemma import Gemma3, GemmaConfig, GemmaLM

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fibonacci(n):",
           "Translate to German: The weather is nice today.", "Once upon a time"]


@pytest.fixture(scope="module")
def ours(gemma_gguf_path):
    config, params = gguf.load_gemma_gguf(gemma_gguf_path)
    return config, params, gguf.gemma_tokenizer(gemma_gguf_path)


@pytest.fixture(scope="module")
def reference(gemma_gguf_path):
    torch.set_num_threads(2)
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gemma_gguf_path), gguf_file=os.path.basename(gemma_gguf_path),
        dtype=torch.float32).eval()


def test_config_from_metadata(ours):
    config = ours[0]
    assert config == GemmaConfig.preset("270m", rms_norm_eps=config.rms_norm_eps)
    assert abs(config.rms_norm_eps - 1e-6) < 1e-12


def test_weights_equal_transformers_dequantization(ours, reference, gemma_gguf_path):
    # transformers dequantizes with its own torch kernels, so this checks our Q8_0/Q5_0/Q4_K/Q6_K
    # path and the (1 + w) norm convention against an independent implementation.
    types = {t.tensor_type.name for t in gguf._reader(gemma_gguf_path).tensors}
    assert {"Q8_0", "Q5_0", "Q4_K", "Q6_K", "F32"} <= types
    config, params, _ = ours
    state = reference.state_dict()
    for name, (path, _, transform) in gemma_name_map(config).items():
        got = params
        for key in path:
            got = got[key]
        want = transform(state[name].float().numpy())
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)


def _left_padded(tokenizer, prompts):
    ids = [tokenizer.encode(p, add_bos=True) for p in prompts]
    width = max(map(len, ids))
    tokens = np.zeros((len(ids), width), np.int32)
    mask = np.zeros((len(ids), width), bool)
    for row, seq in enumerate(ids):
        tokens[row, width - len(seq):], mask[row, width - len(seq):] = seq, True
    return ids, tokens, mask


def test_last_position_logits_match(ours, reference):
    config, params, tokenizer = ours
    ids, tokens, mask = _left_padded(tokenizer, PROMPTS)
    got, _ = GemmaLM(config).prefill(params, {"tokens": tokens, "mask": mask}, 1)
    for row, seq in enumerate(ids):
        with torch.no_grad():
            want = reference(torch.tensor([seq])).logits[0, -1].numpy()
        rel = np.abs(np.asarray(got[row]) - want).max() / np.abs(want).max()
        assert rel <= 1e-3, (PROMPTS[row], rel)


def test_uncached_forward_matches_prefill(ours):
    config, params, tokenizer = ours
    seq = tokenizer.encode(PROMPTS[0], add_bos=True)
    full = Gemma3(config).apply({"params": params}, np.asarray([seq], np.int32))
    got, _ = GemmaLM(config).prefill(params, {"tokens": np.asarray([seq], np.int32),
                                              "mask": np.ones((1, len(seq)), bool)}, 1)
    np.testing.assert_allclose(np.asarray(got[0]), np.asarray(full[0, -1]), atol=1e-4, rtol=0)


def test_greedy_continuations_match(ours, reference):
    config, params, tokenizer = ours
    ids, tokens, mask = _left_padded(tokenizer, PROMPTS[:3])
    lm, steps = GemmaLM(config), 16
    logits, cache = lm.prefill(params, {"tokens": tokens, "mask": mask}, steps)
    ours_out = []
    for _ in range(steps):
        nxt = np.asarray(np.argmax(np.asarray(logits), axis=-1), np.int32)
        ours_out.append(nxt)
        logits, cache = lm.step(params, nxt, cache)
    ours_out = np.stack(ours_out, axis=1)
    for row, seq in enumerate(ids):
        with torch.no_grad():
            out = reference.generate(torch.tensor([seq]), max_new_tokens=steps, do_sample=False)
        want = out[0, len(seq):].tolist()  # shorter only if it stopped at EOS
        assert len(want) == steps or want[-1] == config.eos_id
        assert ours_out[row, :len(want)].tolist() == want, (PROMPTS[row], tokenizer.decode(want))
