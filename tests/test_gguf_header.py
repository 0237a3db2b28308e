"""The fast GGUF header reader against gguf-py's own writer and reader on files with every value kind."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFEndian, GGUFReader, GGUFWriter
from gguf.quants import quantize

from toolkit.errors import UserError
from toolkit.formats.gguf_header import read_header
from toolkit.sources import check_gguf_header


def write_gguf(path, endian=GGUFEndian.LITTLE, alignment=None):
    writer = GGUFWriter(str(path), "llama", endianess=endian)
    if alignment:
        writer.add_custom_alignment(alignment)
    writer.add_uint32("llama.context_length", 2048)
    writer.add_float32("llama.rope.freq_base", 10000.5)
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_string("tokenizer.chat_template", "{{ messages }} \u00e9")
    writer.add_token_list(["<s>", "</s>", "h\u00e9llo", ""] + [f"t{i}" for i in range(300)])
    writer.add_token_scores([float(i) / 7 for i in range(304)])
    writer.add_eos_token_id(1)
    rng = np.random.default_rng(0)
    writer.add_tensor("a.weight", rng.standard_normal((3, 5)).astype(np.float32))
    writer.add_tensor("b.weight", rng.standard_normal((7,)).astype(np.float16))
    q8 = quantize(rng.standard_normal((4, 64)).astype(np.float32), GGMLQuantizationType.Q8_0)
    writer.add_tensor("c.weight", q8, raw_dtype=GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize(("endian", "alignment"), [(GGUFEndian.LITTLE, None), (GGUFEndian.LITTLE, 64), (GGUFEndian.BIG, None)])
def test_header_matches_gguf_py(tmp_path, endian, alignment):
    path = write_gguf(tmp_path / "m.gguf", endian, alignment)
    header, reader = read_header(path), GGUFReader(path)
    real = {key: field for key, field in reader.fields.items() if not key.startswith("GGUF.")}  # gguf-py's own counts
    assert set(header.fields) == set(real)
    for key, field in real.items():
        got = header.fields[key]
        if key == "tokenizer.ggml.tokens":
            assert got == [bytes(field.parts[i]) for i in field.data]
        elif isinstance(got, np.ndarray):
            np.testing.assert_array_equal(got, np.asarray(field.contents()))
        else:
            assert got == pytest.approx(field.contents())
    expected = [(t.name, int(t.data_offset), int(t.n_bytes), int(t.n_elements)) for t in reader.tensors]
    assert [(t.name, t.offset, t.n_bytes, t.n_elements) for t in header.tensors] == expected
    assert header.end == max(o + n for _, o, n, _ in expected)
    assert header.n_params == 3 * 5 + 7 + 4 * 64
    assert header.fields["tokenizer.ggml.tokens"][2].decode() == "h\u00e9llo"


def test_truncated_file_is_refused_with_the_sizes(tmp_path):
    path = write_gguf(tmp_path / "m.gguf")
    check_gguf_header(path)
    data, end = path.read_bytes(), GGUFReader(path).tensors[-1]
    need = int(end.data_offset) + int(end.n_bytes)
    path.write_bytes(data[:need - 10])
    with pytest.raises(UserError, match=rf"m.gguf: truncated GGUF: tensors need {need} bytes, file has {need - 10}"):
        check_gguf_header(path)
    path.write_bytes(data[:200])  # inside the metadata
    with pytest.raises(UserError, match=r"m.gguf: corrupt or truncated GGUF"):
        check_gguf_header(path)


@pytest.mark.parametrize("endian", [GGUFEndian.LITTLE, GGUFEndian.BIG])
def test_bulk_array_fields_equal_gguf_py_element_by_element(tmp_path, endian):
    """The dequantizer's fast path for array fields (toolkit/reference.py) gives gguf-py's fields part for part:
    string, float, integer, empty and nested arrays; a big-endian file keeps gguf-py's own path."""
    from gguf import GGUFValueType

    from toolkit.reference import fast_array_fields

    path = write_gguf(tmp_path / "m.gguf", endian)
    writer = GGUFWriter(str(tmp_path / "more.gguf"), "llama", endianess=endian)
    writer.add_token_list(["a", "", "\u00e9\u00e9", "long" * 50])
    writer.add_array("x.ints", [3, -1, 2**31 - 1])
    writer.add_array("x.empty", [])
    writer.add_array("x.nested", [[1, 2], [3]])
    writer.add_key_value("x.u64", [2**40, 7], GGUFValueType.ARRAY, sub_type=GGUFValueType.UINT64)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()

    class Bulk(GGUFReader):
        pass
    fast_array_fields(Bulk)
    for file in (path, tmp_path / "more.gguf"):
        slow, fast = GGUFReader(file), Bulk(file)
        assert list(fast.fields) == list(slow.fields)
        for key, field in slow.fields.items():
            got = fast.fields[key]
            assert (got.offset, got.name, got.data, got.types) == (field.offset, field.name, field.data, field.types), key
            assert [(p.dtype, p.tobytes()) for p in got.parts] == [(p.dtype, p.tobytes()) for p in field.parts], key
        assert [(t.name, int(t.data_offset)) for t in fast.tensors] == [(t.name, int(t.data_offset)) for t in slow.tensors]
        bulk = endian == GGUFEndian.LITTLE  # read in bulk: plain arrays over the file's bytes, not memmap slices
        first = slow.fields["tokenizer.ggml.tokens"].data[0]  # the first token's bytes
        assert isinstance(slow.fields["tokenizer.ggml.tokens"].parts[first], np.memmap)
        assert isinstance(fast.fields["tokenizer.ggml.tokens"].parts[first], np.memmap) is not bulk


def test_trained_context_from_the_variants_own_files(tmp_path):
    import json

    from toolkit.formats.files import trained_context

    assert trained_context(write_gguf(tmp_path / "m.gguf")) == 2048  # llama.context_length
    folder = tmp_path / "hf"
    folder.mkdir()
    assert trained_context(folder) is None  # no config: nothing said
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 8192}))
    assert trained_context(folder) == 8192
    (folder / "config.json").write_text(json.dumps({"text_config": {"max_position_embeddings": 32768}, "vision_config": {}}))
    assert trained_context(folder) == 32768
    (folder / "config.json").write_text(json.dumps({"n_positions": 1024}))
    assert trained_context(folder) == 1024
    (folder / "genai_config.json").write_text(json.dumps({"model": {"context_length": 4096}}))
    assert trained_context(folder) == 4096  # onnxruntime-genai's own config first
    (tmp_path / "torn.gguf").write_bytes(b"GGUF\x03")
    assert trained_context(tmp_path / "torn.gguf") is None


def test_embedding_parameters_from_the_tensor_table_or_the_config(tmp_path):
    import json

    from toolkit.formats.files import embedding_params

    def gguf(path, tensors):
        writer = GGUFWriter(str(path), "llama")
        for name, shape in tensors:
            writer.add_tensor(name, np.zeros(shape, np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    body = [("blk.0.attn_q.weight", (8, 8))]
    assert embedding_params(gguf(tmp_path / "tied.gguf", [("token_embd.weight", (10, 8)), *body])) == 80
    assert embedding_params(gguf(tmp_path / "untied.gguf", [("token_embd.weight", (10, 8)), ("output.weight", (10, 8)), *body])) == 160
    assert embedding_params(gguf(tmp_path / "none.gguf", body)) is None
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"vocab_size": 1000, "hidden_size": 64}))
    assert embedding_params(folder) == 64_000  # tie_word_embeddings defaults to true
    (folder / "config.json").write_text(json.dumps({"text_config": {"vocab_size": 1000, "hidden_size": 64,
                                                                    "tie_word_embeddings": False}}))
    assert embedding_params(folder) == 128_000
    (folder / "config.json").unlink()
    (folder / "genai_config.json").write_text(json.dumps({"model": {"vocab_size": 1000, "decoder": {"hidden_size": 32}}}))
    assert embedding_params(folder) == 32_000


def test_model_shape_reads_a_gguf_header_once_for_both_figures(tmp_path, monkeypatch):
    from toolkit.formats import gguf_header
    from toolkit.formats.files import model_shape

    path = write_gguf(tmp_path / "m.gguf")
    calls = []
    real = gguf_header.read_header
    monkeypatch.setattr(gguf_header, "read_header", lambda p: calls.append(p) or real(p))
    shape = model_shape(path)
    assert calls == [path] and shape == {"context_length": 2048}  # no token_embd.weight: no embedding figure
