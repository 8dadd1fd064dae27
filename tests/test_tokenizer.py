"""The tokenizer rebuilt from the real Gemma 3 GGUF metadata against transformers' tokenizer
built from the same file (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`)."""
import os
import random

import pytest

from lmcor.checkpoints.gguf import gemma_tokenizer
from lmcor.checkpoints.tokenizer import GgufVocab, SentencePieceTokenizer

transformers = pytest.importorskip("transformers")

STRINGS = [
    "", "Hello world", "The capital of France is", "  two leading spaces", "trailing   ",
    "tabs\tand\t\tmore\t\t\t", "new\nlines\n\n\nand a blank", "mixed\r\nwindows\r\nendings",
    "Grüße aus München: die Straße, Äpfel und Öl!", "Zwölf Boxkämpfer jagen Viktor quer über den Sylter Deich.",
    "def f(x):\n    return x ** 2  # square\n", "for i in range(10):\n\tprint(i)",
    "12345 6789 3.14159 1,000,000", "emoji 😀🎉👍🏽 family 👨‍👩‍👧", "日本語のテキストと中文",
    "Привет, мир", "ß ẞ ﬁ ligature ①② ½", "\u200b zero width\u00a0nbsp", " " * 40 + "x",
    "\n" * 40, "\t" * 33, "x  y   z    w", "<start_of_turn>user\nHi<end_of_turn>\n",
    "<h1>Title</h1> <b>bold</b>", "🦙🦙🦙", "a" * 60, "\u2581 literal lower eighth block",
    "control \x00\x01 bytes", "ünïcödé ñ çà",
]


@pytest.fixture(scope="module")
def ours(gemma_gguf_path):
    return gemma_tokenizer(gemma_gguf_path)


@pytest.fixture(scope="module")
def reference(gemma_gguf_path):
    return transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(gemma_gguf_path), gguf_file=os.path.basename(gemma_gguf_path))


def test_ids_equal_transformers(ours, reference):
    assert len(STRINGS) >= 20
    for text in STRINGS:
        assert ours.encode(text) == reference(text, add_special_tokens=False).input_ids, text
    assert ours.encode("Hi", add_bos=True) == reference("Hi").input_ids  # the file asks for BOS


def test_ids_equal_transformers_on_random_mixtures(ours, reference):
    # Whitespace runs, markup and multi-byte characters stitched together stress the merge order.
    rng = random.Random(0)
    parts = [" ", "  ", "\t", "\n", "a", "é", "😀", "1", "22", "<b>", "x y", "ß", ".", "\u2581"]
    for _ in range(300):
        text = "".join(rng.choice(parts) for _ in range(rng.randint(0, 25)))
        assert ours.encode(text) == reference(text, add_special_tokens=False).input_ids, repr(text)


def test_decode_round_trips(ours, reference):
    # U+2581 is how SentencePiece spells a space, so it cannot survive a round trip (in
    # transformers neither); everything else must.
    for text in (s for s in STRINGS if "\u2581" not in s):
        ids = ours.encode(text)
        assert ours.decode(ids) == text
        assert ours.decode([ours.bos_id, *ids, ours.eos_id]) == text  # specials are not text
    ids = reference("Grüße 😀 \u2581", add_special_tokens=False).input_ids
    assert ours.decode(ids) == reference.decode(ids) == "Grüße 😀  "


def test_special_ids_and_proto(ours, tmp_path):
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.vocab_size) == (2, 1, 0, 262_144)
    seqio = pytest.importorskip("seqio")
    path = tmp_path / "gemma.model"
    path.write_bytes(ours.sentencepiece_model_proto())
    vocab = seqio.SentencePieceVocabulary(str(path))
    for text in STRINGS[:8]:
        assert list(vocab.encode(text)) == ours.encode(text)


def test_bad_metadata_names_the_field():
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "a"],
            "tokenizer.ggml.scores": [0.0], "tokenizer.ggml.token_type": [2, 1],
            "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.eos_token_id": 0,
            "tokenizer.ggml.unknown_token_id": 0}
    with pytest.raises(ValueError, match=r"m\.gguf: field tokenizer\.ggml\.scores has 1 entries"):
        GgufVocab.from_metadata(meta, "m.gguf")
    del meta["tokenizer.ggml.token_type"]
    with pytest.raises(ValueError, match=r"m\.gguf: GGUF metadata lacks tokenizer\.ggml\.token_type"):
        GgufVocab.from_metadata(meta, "m.gguf")


def test_tokenizer_pickles(ours):
    import pickle

    clone = pickle.loads(pickle.dumps(ours))
    assert isinstance(clone, SentencePieceTokenizer)
    assert clone.encode("Grüße  aus\tBerlin") == ours.encode("Grüße  aus\tBerlin")


def test_hf_folder_tokenizer_reads_tokenizer_model(ours, tmp_path):
    from lmcor.checkpoints.hf_gemma import gemma_tokenizer as folder_tokenizer

    with pytest.raises(FileNotFoundError, match="tokenizer.model"):
        folder_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.model").write_bytes(ours.sentencepiece_model_proto())
    loaded = folder_tokenizer(str(tmp_path))
    for text in STRINGS:
        assert loaded.encode(text, add_bos=True) == ours.encode(text, add_bos=True)
