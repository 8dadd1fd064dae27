"""The cheap-fine-tuning options on the real Gemma 3 270M (f32): a task-vocabulary model agrees
with the full one, and `lmcor export` of a LoRA + task-vocabulary corrector decodes in
transformers exactly as lmcor decodes it, on real E2E inputs."""
import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmcor import decode
from lmcor.data.task_vocab import TaskVocab

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
# The base weights are read by the fixtures, the LoRA run, export and the Corrector alike.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("gemma_gguf_read_once")]

NEW_TOKENS = 16


def _inputs(records):
    from lmcor.data.corrector_input import CorrectorOptions, build_corrector_input

    opts = CorrectorOptions(output_marker="<sep> output:")
    return [build_corrector_input(r, "finetune", opts)[0] for r in records]


@pytest.fixture(scope="module")
def e2e_inputs(data_dir):
    from lmcor.data.importers import import_e2e
    return _inputs(itertools.islice(import_e2e(str(data_dir), "test"), 8))


@pytest.fixture(scope="module")
def base(gemma_gguf_path):
    from lmcor.training.builders import gemma_model
    return gemma_model(gguf=gemma_gguf_path)


@pytest.fixture(scope="module")
def tokenizer(gemma_gguf_path):
    from lmcor.checkpoints import gguf
    return gguf.gemma_tokenizer(gemma_gguf_path)


@pytest.fixture(scope="module")
def e2e_vocab(data_dir, tokenizer, base):
    """The ids of E2E's own text (dev and test inputs and references), as a training run's
    rows would give them."""
    from lmcor.data.importers import import_e2e
    ids = []
    for split in ("dev", "test"):
        records = list(import_e2e(str(data_dir), split))
        for text in _inputs(records) + [ref for r in records for ref in r["references"]]:
            ids += tokenizer.encode(text)
    return TaskVocab(ids, base.config.vocab_size)


def _greedy(lm, params, prompts, tokenizer):
    ids = [tokenizer.encode(p, add_bos=True) for p in prompts]
    batch = decode.pad_prompts(ids, encdec=False, pad_id=0, bucket=32)
    return decode.decode_batch(lm, params, batch,
                               decode.DecodeConfig(max_new_tokens=NEW_TOKENS))


def test_task_vocab_logits_and_greedy_equal_the_full_model(base, e2e_vocab, e2e_inputs,
                                                           tokenizer):
    """Logits at the kept ids equal the full model's; decoding stays on the full model's path."""
    small = base.with_task_vocab(e2e_vocab)
    assert small.config.vocab_size == e2e_vocab.size < base.config.vocab_size // 10
    # The whole table stays at hand: validation and test decodes widen the vocabulary with it.
    np.testing.assert_array_equal(small.base_embedding,
                                  np.asarray(base.pretrained_params["embedder"]["embedding"]))
    ids = [tokenizer.encode(p, add_bos=True) for p in e2e_inputs[:3]]
    batch = decode.pad_prompts(ids, encdec=False, pad_id=0, bucket=32)
    tokens = jnp.asarray(batch["tokens"])
    segments = jnp.asarray(batch["mask"], jnp.int32)
    full = base.module.apply({"params": base.pretrained_params}, tokens, segment_ids=segments)
    cut = small.module.apply({"params": small.pretrained_params},
                             jnp.asarray(e2e_vocab.to_task(batch["tokens"], count=False)),
                             segment_ids=segments)
    mask = np.asarray(batch["mask"])
    want = np.asarray(full)[mask][:, e2e_vocab.ids]
    np.testing.assert_allclose(np.asarray(cut)[mask], want, atol=1e-4, rtol=0)
    # Restricted greedy decoding follows the full model's path for as long as that path stays
    # inside the set; half the inputs' full paths are put inside it.
    full_dec = _greedy(base.decode_adapter(), base.pretrained_params, e2e_inputs, tokenizer)
    outputs = [row[:n] for row, n in zip(full_dec.tokens, full_dec.lengths)]
    vocab = TaskVocab(np.concatenate([e2e_vocab.ids, *outputs[:4]]), e2e_vocab.full_size)
    small = base.with_task_vocab(vocab)
    small_dec = _greedy(small.decode_adapter(), small.pretrained_params, e2e_inputs, tokenizer)
    for row, out in enumerate(outputs):
        outside = np.flatnonzero(~np.isin(out, vocab.ids))
        stay = len(out) if not len(outside) else int(outside[0])
        assert row >= 4 or stay == len(out)
        np.testing.assert_array_equal(small_dec.tokens[row][:stay], out[:stay])
        assert np.isin(small_dec.tokens[row], vocab.ids).all()


def _write_lora_run(model_dir, gguf_path, base):
    """A MODEL_DIR as `lmcor train` leaves it for a LoRA corrector, with adapters moved away
    from zero so that merging them matters. (Full vocabulary: a task-vocabulary model may
    decode differently from its full-vocabulary export wherever the latter leaves the set;
    the export of a task vocabulary is checked in tests/test_peft.py.)"""
    from lmcor.models import partitioning
    from lmcor.training import checkpointing, peft, state as state_lib
    from lmcor.training.builders import gemma_model

    model = dataclasses.replace(gemma_model(gguf=gguf_path, lora_rank=4, freeze_embeddings=True),
                                pretrained_params=base.pretrained_params)
    peft.record_base(str(model_dir), model.base)
    optimizer = state_lib.make_optimizer(state_lib.make_schedule(), name="adamw")
    rng = np.random.default_rng(0)
    trainable = jax.tree_util.tree_map_with_path(
        lambda p, x: rng.normal(0, 0.004, x.shape).astype(np.float32)
        if p[-1].key == "lora_b" else x, model.load_pretrained())
    state, _ = state_lib.create_state(model.init_fn, optimizer, partitioning.make_mesh(1, 1),
                                      seed=0, init_params=trainable)
    ckpt = checkpointing.Checkpointer(f"{model_dir}/checkpoints", async_save=False)
    ckpt.save(3, state, {"step": 3}, force=True)
    ckpt.close()
    (model_dir / "config.gin").write_text(
        "train.model = @gemma_model()\n"
        f"gemma_model.gguf = '{gguf_path}'\n"
        "gemma_model.lora_rank = 4\n"
        "gemma_model.freeze_embeddings = True\n"
        "task_vocabulary.kind = 'gemma'\n"
        f"task_vocabulary.gguf_path = '{gguf_path}'\n"
        "task_vocabulary.spm_model = None\n"
        "corrector_settings.variant = 'finetune'\n"
        "corrector_settings.beam_size = 1\n"
        f"corrector_settings.max_decode_tokens = {NEW_TOKENS}\n")


def test_export_decodes_in_transformers_as_lmcor_does(tmp_path, gemma_gguf_path, base,
                                                      e2e_inputs, tokenizer):
    from lmcor.cli import export_command
    from lmcor.inference.corrector import Corrector

    run = tmp_path / "run"
    run.mkdir()
    _write_lora_run(run, gemma_gguf_path, base)
    assert export_command.main([str(run), f"--out={tmp_path / 'hf'}"]) == 0
    corrector = Corrector.from_model_dir(str(run))
    ours = corrector.decode_ids([corrector.tokenize(t) for t in e2e_inputs])[0]
    torch.set_num_threads(2)
    hf = transformers.Gemma3ForCausalLM.from_pretrained(str(tmp_path / "hf"),
                                                        dtype=torch.float32).eval()
    theirs = []
    for text in e2e_inputs:
        ids = torch.tensor([tokenizer.encode(text, add_bos=True)])
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False,
                              eos_token_id=1, pad_token_id=0)
        new = [int(t) for t in out[0, ids.shape[1]:] if int(t) not in (0, 1)]
        theirs.append(tokenizer.decode(new))
    assert ours == theirs
    # The adapters changed the model: the base alone decodes at least one input differently.
    plain = _greedy(base.decode_adapter(), base.pretrained_params, e2e_inputs, tokenizer)
    assert decode.texts_of(tokenizer, plain, [1], ()) != ours


def test_lora_loss_falls_on_real_e2e_rows(tmp_path, gemma_gguf_path, base, e2e_inputs,
                                          tokenizer, data_dir):
    """The fast recipe's settings (task vocabulary, LoRA above 12 frozen layers) on two real
    E2E rows (source -> first reference): a few AdamW steps lower their loss."""
    from lmcor.data.importers import import_e2e
    from lmcor.models import partitioning
    from lmcor.training import batches, state as state_lib
    from lmcor.training.loop import build_step
    from lmcor.training.builders import gemma_model

    refs = [r["references"][0] for r in itertools.islice(import_e2e(str(data_dir), "test"), 2)]
    width = 160
    rows = {k: np.zeros((2, width), np.int32) for k in ("decoder_input_tokens",
                                                         "decoder_target_tokens")}
    weights = np.zeros((2, width), np.float32)
    for i, (text, ref) in enumerate(zip(e2e_inputs, refs)):
        prefix, target = [2] + tokenizer.encode(text), tokenizer.encode(ref) + [1]
        seq = (prefix + target)[:width + 1]
        rows["decoder_input_tokens"][i, :len(seq) - 1] = seq[:-1]
        rows["decoder_target_tokens"][i, :len(seq) - 1] = seq[1:]
        weights[i, len(prefix) - 1:len(seq) - 1] = 1
    rows["decoder_loss_weights"] = weights
    source = batches.BatchSource({0: rows}, 1, 2, 0, shuffle=False)
    model = dataclasses.replace(
        gemma_model(gguf=gemma_gguf_path, vocab="task", lora_rank=16, freeze_embeddings=True,
                    freeze_layers=12, loss_positions="auto"),
        pretrained_params=base.pretrained_params)
    model = model.prepare(str(tmp_path), source)
    model = model.fit_to_data(source.most_loss_tokens_per_row())
    mesh = partitioning.make_mesh(1, 1)
    schedule = state_lib.make_schedule("constant", 1e-3)
    optimizer = state_lib.make_optimizer(schedule, name="adamw")
    state, step_fn, frozen = build_step(model, optimizer, schedule, mesh, 0)
    batch = {k: jnp.asarray(v) for k, v in source.batch(0).items()}
    losses = []
    with jax.set_mesh(mesh):
        for _ in range(4):
            state, metrics = step_fn(state, batch, frozen)
            losses.append(float(metrics["loss"]))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.2, losses
