"""The full-precision HF reference of a candidate: the source itself, or dequantized from a GGUF file.

ONNX and GPTQ builders, the GGUF converter and fidelity metrics all start from this folder. When the
source is a quantized GGUF, the reference is exactly those weights dequantized, and reports say so.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from toolkit.errors import UserError
from toolkit.io import atomic_dir, content_hash
from toolkit.procs import run_tool
from toolkit.records import Variant
from toolkit.sources import SourceModel


def tool_versions() -> dict[str, str]:
    import transformers

    return {"transformers": transformers.__version__}


def reference_dir(source: SourceModel, workspace: Path) -> Path:
    """The HF folder for `source`, built once and cached by content hash."""
    if source.kind == "hf":
        return source.path
    folder = workspace / "reference" / f"{source.model}-{content_hash(source.sha256, tool_versions())}"
    if (folder / "config.json").exists():
        return folder
    with atomic_dir(folder) as tmp:
        cmd = [sys.executable, "-m", "toolkit.reference", str(source.path), str(tmp)]
        run_tool(cmd, None, workspace / "logs" / f"dequantize-{source.model}.log", f"dequantize {source.path.name}")
    return folder


def hf_variant(source: SourceModel) -> Variant:
    """An HF checkpoint as shipped, described in place: what transformers runs in fp32 (runtimes/torch_hf.py)."""
    size = sum(p.stat().st_size for p in source.path.glob("*.safetensors"))
    n_params = count_parameters(source.path)
    return Variant(
        id=f"{source.model}-hf-source-{source.sha256[:8]}", label=f"{source.model} HF (as shipped)", model=source.model,
        format="hf", runtime="torch", quant="source", path=str(source.path.resolve()), size_bytes=size,
        sha256=source.sha256, n_params=n_params, bits_per_weight=round(size * 8 / n_params, 3) if n_params else None,
        source=source.origin, source_sha256=source.sha256, seconds=0.0, tools=tool_versions(),
        notes=["the source checkpoint as shipped, run by transformers in fp32"])


def dequantize_gguf(gguf_path: Path, out_dir: Path) -> float:
    """Dequantize a GGUF into a transformers model saved as safetensors; returns seconds taken."""
    start = time.perf_counter()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"transformers cannot dequantize this GGUF ({exc})", file=gguf_path) from exc
    # The quantizer is only needed while loading; saving it would mark the weights as quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    # Keep the GGUF's own BOS rule: transformers' rebuilt tokenizer adds BOS even where the file says not to.
    tokenizer.add_bos_token = gguf_adds_bos(gguf_path)
    tokenizer.save_pretrained(out_dir)
    # transformers copies the GGUF file itself as "tokenizer.model"; it is not a SentencePiece model.
    bogus = out_dir / "tokenizer.model"
    if bogus.exists():
        with open(bogus, "rb") as handle:
            is_gguf = handle.read(4) == b"GGUF"
        if is_gguf:
            bogus.unlink()
    (out_dir / "DEQUANTIZED_FROM.txt").write_text(f"{gguf_path.name}\n", encoding="utf-8")
    return time.perf_counter() - start


def gguf_adds_bos(gguf_path: Path) -> bool:
    from toolkit.formats.gguf_header import read_header

    return bool(read_header(gguf_path).fields.get("tokenizer.ggml.add_bos_token", True))


def count_parameters(hf_dir: Path) -> int | None:
    """Parameters in an HF folder's safetensors files, read from their headers only."""
    from safetensors import safe_open

    total = 0
    for file in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a mapping
                shape = handle.get_slice(name).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total or None


def reuse_gguf_readers() -> None:
    """In this process, one `GGUFReader` per file: transformers builds a new one for the config, the tokenizer
    and the weights (five times, 10 s each on Gemma 3's 262k-token vocabulary). The reader maps the file
    read-only, so sharing it changes nothing it returns."""
    import os

    import gguf

    readers: dict[str, object] = {}
    original = gguf.GGUFReader

    def shared(path, mode: str = "r"):
        key = os.path.realpath(path)
        if mode != "r":
            return original(path, mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    fast_array_fields(original)


def fast_array_fields(reader_class) -> None:
    """Let `reader_class` (gguf-py's GGUFReader) read array fields in bulk: it builds each element's parts one
    element at a time through numpy memmap slices (13 s for Gemma 3's 262k-token vocabulary, then 2 s every
    time transformers parses the fields). The same parts, data indexes and types come out, as plain arrays
    over the same bytes (`tests/test_gguf_header.py` compares them field by field); nested arrays and byte-
    swapped files take gguf-py's own path."""
    import numpy as np
    from gguf import GGUFValueType

    per_element = reader_class._get_field_parts

    def field_parts(self, orig_offs: int, raw_type: int):
        if raw_type != GGUFValueType.ARRAY or self.byte_order != "I":
            return per_element(self, orig_offs, raw_type)
        itype, count = self._get(orig_offs, np.uint32), self._get(orig_offs + 4, np.uint64)
        kind, n, offs = GGUFValueType(int(itype[0])), int(count[0]), orig_offs + 12
        scalar = self.gguf_scalar_to_np.get(kind)
        if n == 0 or (scalar is None and kind != GGUFValueType.STRING):
            return per_element(self, orig_offs, raw_type)
        buffer = memoryview(self.data)
        parts: list = [itype, count]
        if scalar is not None:
            values = np.frombuffer(buffer, scalar, n, offs)
            parts += [values[i:i + 1] for i in range(n)]
            return 12 + values.nbytes, parts, list(range(2, 2 + n)), [GGUFValueType.ARRAY, kind]
        lengths = np.dtype(np.uint64)
        for _ in range(n):
            length = np.frombuffer(buffer, lengths, 1, offs)
            size = int(length[0])
            parts += [length, np.frombuffer(buffer, np.uint8, size, offs + 8)]
            offs += 8 + size
        return offs - orig_offs, parts, list(range(3, 2 + 2 * n, 2)), [GGUFValueType.ARRAY, kind]

    reader_class._get_field_parts = field_parts


if __name__ == "__main__":
    reuse_gguf_readers()
    dequantize_gguf(Path(sys.argv[1]), Path(sys.argv[2]))
