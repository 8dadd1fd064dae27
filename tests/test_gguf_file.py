"""lmcor's GGUF container reader against the `gguf` package's GGUFReader (the reference) on
the real Gemma 3 270M file, and its errors on damaged files."""
import numpy as np
import pytest

from lmcor.checkpoints.gguf_file import GgufFile


@pytest.fixture(scope="module")
def pair(gemma_gguf_path):
    from gguf import GGUFReader

    return GgufFile.read(gemma_gguf_path), GGUFReader(gemma_gguf_path)


def test_metadata_equals_the_reference_reader(pair):
    ours, ref = pair
    want = {key: field.contents() for key, field in ref.fields.items()
            if not key.startswith("GGUF.")}  # the reader's own header pseudo-fields
    assert ours.fields.keys() == want.keys()
    for key, value in want.items():
        assert ours.fields[key] == value, key
    # Spot checks a comparison of equal-but-wrong values would miss.
    assert ours.fields["general.architecture"] == "gemma3"
    assert len(ours.fields["tokenizer.ggml.tokens"]) == 262_144


def test_tensors_equal_the_reference_reader(pair):
    ours, ref = pair
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for got, want in zip(ours.tensors, ref.tensors):
        assert got.tensor_type == want.tensor_type, got.name
        assert got.shape == tuple(int(n) for n in want.shape), got.name
        assert got.data.dtype == want.data.dtype and got.data.shape == want.data.shape, got.name
        np.testing.assert_array_equal(got.data, want.data, err_msg=got.name)


def test_damaged_files_are_named_errors(pair, gemma_gguf_path, tmp_path):
    header_end = min(t.data_offset for t in pair[1].tensors)  # the reference's tensor offsets
    with open(gemma_gguf_path, "rb") as f:
        raw = f.read(header_end + 100)
    header_cut = tmp_path / "header.gguf"
    header_cut.write_bytes(raw[:5000])  # inside the vocabulary strings
    with pytest.raises(ValueError, match=r"header\.gguf: truncated GGUF file: field "
                                         r"'tokenizer\.ggml\.tokens' at byte \d+"):
        GgufFile.read(str(header_cut))
    data_cut = tmp_path / "data.gguf"
    data_cut.write_bytes(raw)  # the whole header, the tensors cut short
    with pytest.raises(ValueError, match=r"truncated GGUF file: tensor '.+' ends at byte"):
        GgufFile.read(str(data_cut))
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04" + raw[4:64])
    with pytest.raises(ValueError, match=r"not a GGUF file \(it starts with b'PK"):
        GgufFile.read(str(not_gguf))
    old = tmp_path / "v1.gguf"
    old.write_bytes(raw[:4] + (1).to_bytes(4, "little") + raw[8:64])
    with pytest.raises(ValueError, match="GGUF version 1 is not supported"):
        GgufFile.read(str(old))
