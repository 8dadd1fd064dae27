"""The real Gemma 3 270M (Q4_K_M GGUF) in lmcor against transformers loading the same file."""
import os

import numpy as np
import pytest

from lmcor.checkpoints import gguf
from lmcor.checkpoints.hf_gemma import gemma_name_map
from lmcor.models.gemma import GemmaConfig, GemmaLM, quantize_params

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
# `ours` and `lmcor generate` read the same weights; dequantizing is checked here once, below.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("gemma_gguf_read_once")]

PROMPTS = ["The capital of France is", "def fibonacci(n):",
           "Translate to German: The weather is nice today."]


@pytest.fixture(scope="module")
def ours(gemma_gguf_path):
    config, params = gguf.load_gemma_gguf(gemma_gguf_path)
    return config, params, gguf.gemma_tokenizer(gemma_gguf_path)


@pytest.fixture(scope="module")
def reference(gemma_gguf_path):
    """transformers' Gemma3ForCausalLM with the GGUF's weights. The config is google/gemma-3-270m's
    published one, given explicitly: otherwise transformers parses the 262k-token header twice."""
    torch.set_num_threads(2)
    published = transformers.Gemma3TextConfig(
        vocab_size=262_144, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
        num_attention_heads=4, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=512, max_position_embeddings=32_768, rms_norm_eps=1e-6)
    return transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(gemma_gguf_path), gguf_file=os.path.basename(gemma_gguf_path),
        config=published, dtype=torch.float32).eval()


def test_config_from_metadata(ours):
    config = ours[0]
    assert config == GemmaConfig.preset("270m", rms_norm_eps=config.rms_norm_eps)
    assert abs(config.rms_norm_eps - 1e-6) < 1e-12


def _q5_0_reference(raw: np.ndarray) -> np.ndarray:
    """ggml's Q5_0 as llama.cpp's dequantize_row_q5_0 spells it: per 32 values an f16 scale, 32
    high bits and 16 bytes of low nibbles; value = d * (5-bit code - 16)."""
    blocks = raw.reshape(-1, 22)
    d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    high = blocks[:, 2:6].copy().view("<u4")
    low = blocks[:, 6:].astype(np.int32)
    j = np.arange(16)
    first = (low & 0xF) | (((high >> j) & 1) << 4)
    second = (low >> 4) | (((high >> (j + 16)) & 1) << 4)
    return (d * (np.concatenate([first, second], axis=1) - 16)).reshape(-1)


def test_dequantization_against_independent_implementations(gemma_gguf_path):
    from transformers.integrations.gguf import dequant as torch_dequant

    seen = set()
    for tensor in gguf._reader(gemma_gguf_path).tensors:
        kind = tensor.tensor_type.name
        if kind in seen or kind in ("F32", "F16") or tensor.name == "token_embd.weight":
            continue
        seen.add(kind)
        raw = np.asarray(tensor.data).reshape(-1).view(np.uint8)
        if kind == "Q5_0":
            want = _q5_0_reference(raw)
        else:  # transformers' own torch kernels (Q8_0, Q4_K, Q6_K)
            want = torch_dequant.dequantize(torch.from_numpy(raw.copy()),
                                            int(tensor.tensor_type)).numpy()
        got = gguf.dequantize(tensor, gemma_gguf_path).reshape(-1)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=tensor.name)
    assert seen == {"Q8_0", "Q5_0", "Q4_K", "Q6_K"}


def test_weights_equal_transformers_loader(ours, reference, gemma_gguf_path):
    # Name mapping, layouts and the (1 + w) norm convention, against transformers' GGUF loader.
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


STEPS = 16


@pytest.fixture(scope="module")
def ours_greedy(ours):
    """Prefill logits and a 16-token greedy continuation for PROMPTS (one compile each)."""
    config, params, tokenizer = ours
    ids, tokens, mask = _left_padded(tokenizer, PROMPTS)
    lm = GemmaLM(config)
    logits, cache = lm.prefill(params, {"tokens": tokens, "mask": mask}, STEPS)
    first, out = np.asarray(logits), []
    for _ in range(STEPS):
        nxt = np.asarray(np.argmax(np.asarray(logits), axis=-1), np.int32)
        out.append(nxt)
        logits, cache = lm.step(params, nxt, cache)
    return ids, first, np.stack(out, axis=1)


@pytest.fixture(scope="module")
def reference_forced(ours_greedy, reference):
    """transformers' logits over each prompt followed by our continuation (teacher forcing):
    greedy decoding agrees iff its argmax at every new position is our next token."""
    ids, _, got = ours_greedy
    out = []
    for row, seq in enumerate(ids):
        with torch.no_grad():
            logits = reference(torch.tensor([seq + got[row].tolist()])).logits[0].numpy()
        out.append(logits[len(seq) - 1:])
    return out


def test_last_position_logits_match(ours_greedy, reference_forced):
    _, first, _ = ours_greedy
    for row, want in enumerate(reference_forced):
        rel = np.abs(first[row] - want[0]).max() / np.abs(want[0]).max()
        assert rel <= 1e-3, (PROMPTS[row], rel)


def test_int8_decoding_keeps_the_next_token(ours, ours_greedy):
    """int8 matmuls (`--quantize=int8`) change the logits, but not which token comes next."""
    import dataclasses

    config, params, tokenizer = ours
    q_config = dataclasses.replace(config, quantize="int8")
    _, tokens, mask = _left_padded(tokenizer, PROMPTS)
    got, _ = GemmaLM(q_config).prefill(quantize_params(q_config, params),
                                       {"tokens": tokens, "mask": mask}, 1)
    got, want = np.asarray(got), ours_greedy[1]
    assert (got.argmax(-1) == want.argmax(-1)).all()
    for row in range(len(PROMPTS)):
        assert np.corrcoef(got[row], want[row])[0, 1] > 0.99, PROMPTS[row]
        assert np.abs(got[row] - want[row]).max() > 1e-3  # the int8 path really ran


def test_greedy_continuations_match(ours, ours_greedy, reference_forced):
    config, _, tokenizer = ours
    _, _, got = ours_greedy
    for row, want in enumerate(reference_forced):
        greedy = np.argmax(want[:STEPS], axis=-1).tolist()
        # Past an EOS the continuation is free text, as a stopped generate would not produce it.
        stop = greedy.index(config.eos_id) + 1 if config.eos_id in greedy else STEPS
        assert got[row, :stop].tolist() == greedy[:stop], (PROMPTS[row], tokenizer.decode(greedy))
    assert any(config.eos_id not in r for r in got.tolist())  # at least one full 16 tokens


def test_generate_cli_prints_transformers_greedy_continuation(ours, reference, capsys):
    """`lmcor generate` (default model = this GGUF) against transformers' `generate`. The prompt ids
    come from our tokenizer, which test_tokenizer.py checks equal to transformers' own."""
    from lmcor import cli
    from lmcor.cli import generate_command

    prompt = PROMPTS[0]
    assert cli.main(["generate", f"--prompt={prompt}", "--max_new_tokens=16"]) == 0
    printed = capsys.readouterr()
    config, _, tokenizer = ours
    ids = torch.tensor([tokenizer.encode(prompt, add_bos=True)])
    with torch.no_grad():
        gen = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 max_new_tokens=16, do_sample=False)
    new = gen[0, ids.shape[1]:].tolist()
    new = new[:new.index(config.eos_id)] if config.eos_id in new else new
    want = tokenizer.decode(new)
    assert want.strip() and "tokens/s" in printed.err
    assert printed.out == generate_command.escape(want) + "\n"
