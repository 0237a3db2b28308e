"""GGUF variants: convert an HF reference to F16 with llama.cpp's converter, then quantize via its C API."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from pydantic import Field, field_validator

from toolkit.config import Strict
from toolkit.errors import UserError
from toolkit.formats import Format, VariantSpec
from toolkit.formats.gguf_header import read_header
from toolkit.formats.llamacpp_vendor import converter_dir, llama_cpp_version
from toolkit.io import atomic_path, content_hash, ensure_dir, sha256_file, write_json
from toolkit.procs import run_tool
from toolkit.records import Variant
from toolkit.sources import SourceModel, check_gguf_header

# llama.cpp file types offered by the recipe, with llama.cpp's nominal bits per weight (7B figures).
QUANT_TYPES: dict[str, float] = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0,
    "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K_M": 5.67, "Q5_K_S": 5.52, "Q5_1": 6.0, "Q5_0": 5.5,
    "Q4_K_M": 4.83, "Q4_K_S": 4.58, "Q4_1": 5.0, "Q4_0": 4.5, "IQ4_NL": 4.5, "IQ4_XS": 4.25,
    "Q3_K_L": 4.27, "Q3_K_M": 3.89, "Q3_K_S": 3.5, "Q2_K": 3.0, "Q2_K_S": 2.96, "TQ2_0": 2.06, "TQ1_0": 1.69,
}
CONVERTER_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
SOURCE_QUANT = "source"


def ftype_of(quant: str) -> int:
    import llama_cpp

    name = "LLAMA_FTYPE_ALL_F32" if quant == "F32" else f"LLAMA_FTYPE_MOSTLY_{quant}"
    if not hasattr(llama_cpp, name):
        raise UserError(f"llama.cpp {llama_cpp.__version__} has no quant type {quant!r}", field="quants")
    return int(getattr(llama_cpp, name))


def tool_versions() -> dict[str, str]:
    return {"llama_cpp_python": llama_cpp_version()}


class GGUFSpec(Strict):
    quants: list[str] = Field(default_factory=lambda: ["F16", "Q8_0", "Q4_K_M"], min_length=1)
    keep_source: bool = Field(True, description="also profile the source GGUF file as it is")

    @field_validator("quants")
    @classmethod
    def _known_quants(cls, quants: list[str]) -> list[str]:
        normalised = [q.upper() for q in quants]
        for q in normalised:
            if q not in QUANT_TYPES:
                raise ValueError(f"unknown quant type {q!r} (known: {', '.join(QUANT_TYPES)})")
        if len(set(normalised)) != len(normalised):
            raise ValueError("quant types repeat")
        return normalised


class GGUF(Format):
    name = "gguf"
    runtime = "llama.cpp"
    Spec = GGUFSpec
    enabled_by_default = True

    def tool_versions(self) -> dict[str, str]:
        return tool_versions()

    def specs(self, spec: GGUFSpec) -> list[VariantSpec]:
        out = [VariantSpec("gguf", q) for q in spec.quants]
        if spec.keep_source:
            out.insert(0, VariantSpec("gguf", SOURCE_QUANT))
        return out

    def applies_to(self, kind: str, spec: VariantSpec) -> bool:
        return spec.quant != SOURCE_QUANT or kind == "gguf"  # an HF checkpoint has no GGUF file to keep

    def build(self, source: SourceModel, spec: VariantSpec, workspace: Path, threads: int | None = None) -> Variant | None:
        """The source file as shipped is described in place (nothing to build or cache); others as any format."""
        if spec.quant == SOURCE_QUANT:
            if not self.applies_to(source.kind, spec):
                return None
            return _describe(source, spec, source.path, workspace, seconds=0.0, copied=False)
        return super().build(source, spec, workspace, threads)

    def make(self, source: SourceModel, spec: VariantSpec, vid: str, folder: Path, workspace: Path,
             threads: int | None) -> Variant:
        start = time.perf_counter()
        f16 = ensure_f16(source, workspace)
        target = folder / "model.gguf"
        ensure_dir(folder)
        with atomic_path(target) as tmp:
            if spec.quant == "F16":
                shutil.copyfile(f16, tmp)
            elif spec.quant in CONVERTER_TYPES and source.kind == "hf":
                convert_hf(source.path, tmp, CONVERTER_TYPES[spec.quant], workspace, name=vid)
            elif spec.quant in CONVERTER_TYPES:
                quantize(source.path, tmp, spec.quant, threads, workspace)
            else:
                quantize(f16, tmp, spec.quant, threads, workspace)
        return _describe(source, spec, target, workspace, seconds=time.perf_counter() - start, copied=True)


def _describe(source, spec, path: Path, workspace: Path, seconds: float, copied: bool) -> Variant:
    check_gguf_header(path)
    info = gguf_info(path)
    quant = info["file_type"] if spec.quant == SOURCE_QUANT else spec.quant
    size = path.stat().st_size
    notes = []
    if spec.quant == SOURCE_QUANT:
        notes.append("the source file as shipped")
    elif source.kind == "gguf":
        notes.append(f"quantized from an F16 GGUF that llama.cpp dequantized from {source.path.name}")
    variant = Variant(
        id=GGUF().variant_id(source, spec),
        label=f"{source.model} {quant}" + (" (as shipped)" if spec.quant == SOURCE_QUANT else ""),
        model=source.model,
        format="gguf",
        runtime="llama.cpp",
        quant=quant,
        path=str(path.resolve()),
        size_bytes=size,
        sha256=source.sha256 if not copied else sha256_file(path),
        n_params=info["n_params"],
        bits_per_weight=round(size * 8 / info["n_params"], 3) if info["n_params"] else None,
        source=source.origin,
        source_sha256=source.sha256,
        seconds=round(seconds, 2),
        tools=tool_versions(),
        notes=notes,
    )
    if copied:
        write_json(path.parent / "variant.json", variant)
    return variant


def gguf_info(path: Path) -> dict:
    """File type name and parameter count read from the GGUF header."""
    from gguf import LlamaFileType

    header = read_header(path)
    value = header.fields.get("general.file_type")
    file_type = "unknown"
    if value is not None:
        try:
            file_type = LlamaFileType(int(value)).name.removeprefix("MOSTLY_").replace("ALL_", "")
        except ValueError:
            file_type = f"ftype{value}"
    return {"n_params": header.n_params, "file_type": file_type}


def ensure_f16(source: SourceModel, workspace: Path) -> Path:
    """The F16 GGUF that every quantized variant starts from, built once and cached.

    From an HF checkpoint: llama.cpp's converter. From a GGUF file: llama.cpp itself dequantizes it
    (requantize to F16), which keeps the file's own tokenizer metadata exactly as shipped.
    """
    key = content_hash(source.sha256, tool_versions(), length=12)
    target = workspace / "intermediate" / f"{source.model}-f16-{key}.gguf"
    if target in _F16_FAILED:  # every quant of the source starts here: one failed conversion per run, not one per quant
        raise UserError(_F16_FAILED[target])
    if not target.exists():
        try:
            with atomic_path(target) as tmp:
                if source.kind == "hf":
                    convert_hf(source.path, tmp, "f16", workspace, name=target.stem)
                else:
                    quantize(source.path, tmp, "F16", None, workspace)
        except UserError as exc:
            _F16_FAILED[target] = exc.one_line()
            raise
    return target


_F16_FAILED: dict[Path, str] = {}  # this process's failed F16 intermediates and why (a new run tries again)


def convert_hf(hf_dir: Path, out: Path, outtype: str, workspace: Path, name: str | None = None) -> None:
    """llama.cpp's converter; its log is logs/convert-<name or out's stem>.log."""
    tools = converter_dir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tools / "gguf-py"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(tools / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype, "--outfile", str(out)]
    run_tool(cmd, env, workspace / "logs" / f"convert-{name or out.stem}.log", what=f"convert {hf_dir} to GGUF")


def quantize(src: Path, dst: Path, quant: str, threads: int | None, workspace: Path) -> None:
    cmd = [sys.executable, "-m", "toolkit.formats.gguf_quantize", str(src), str(dst), str(ftype_of(quant)), str(threads or 0)]
    run_tool(cmd, None, workspace / "logs" / f"quantize-{quant}-{src.stem}.log", what=f"quantize to {quant}")

