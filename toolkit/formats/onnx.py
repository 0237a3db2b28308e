"""ONNX variants through optimum (export with KV cache) and onnxruntime quantization (int8, int4)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from toolkit.config import Strict
from toolkit.errors import UserError
from toolkit.formats import Format, VariantSpec
from toolkit.formats.files import dequantized_note, record_folder_variant
from toolkit.io import atomic_dir, content_hash
from toolkit.procs import run_tool
from toolkit.records import Variant
from toolkit.reference import reference_dir
from toolkit.sources import SourceModel

MODEL = "model.onnx"
PACKAGES = ("optimum", "optimum-onnx", "onnxruntime", "onnx", "transformers")


class ONNXSpec(Strict):
    precisions: list[Literal["fp32", "int8", "int4"]] = Field(default_factory=lambda: ["fp32", "int8", "int4"], min_length=1)
    int4_block_sizes: list[int] = Field(default_factory=lambda: [32, 128], min_length=1)

    @field_validator("int4_block_sizes")
    @classmethod
    def _power_of_two(cls, sizes: list[int]) -> list[int]:
        for size in sizes:
            if size < 16 or size & (size - 1):
                raise ValueError(f"int4 block size {size} must be a power of two >= 16")
        return sizes


class ONNX(Format):
    name = "onnx"
    runtime = "onnxruntime"
    Spec = ONNXSpec
    packages = PACKAGES

    def specs(self, spec: ONNXSpec) -> list[VariantSpec]:
        out = []
        for precision in spec.precisions:
            if precision == "int4":
                out += [VariantSpec("onnx", f"int4-b{b}", (("block_size", b),)) for b in spec.int4_block_sizes]
            else:
                out.append(VariantSpec("onnx", precision))
        return out

    def make(self, source: SourceModel, spec: VariantSpec, vid: str, folder: Path, workspace: Path,
             threads: int | None) -> Variant:
        if missing := self.check_available():
            raise UserError(missing, field="variants.onnx")
        start = time.perf_counter()
        ref = reference_dir(source, workspace)
        fp32 = ensure_export(source, ref, workspace)
        target = folder / "model"
        tool = [sys.executable, "-m", "toolkit.formats.onnx_tools"]
        log = workspace / "logs" / f"onnx-{vid}.log"
        with atomic_dir(target) as tmp:
            if spec.quant == "fp32":
                shutil.copytree(fp32, tmp, dirs_exist_ok=True)
            elif spec.quant == "int8":
                run_tool([*tool, "int8", str(fp32), str(tmp)], None, log, "quantize ONNX to int8")
            else:
                block = str(dict(spec.options)["block_size"])
                run_tool([*tool, "int4", str(fp32), str(tmp), block], None, log, f"quantize ONNX to int4 (block {block})")
        return record_folder_variant(
            vid=vid, label=f"{source.model} ONNX {spec.quant}", fmt="onnx", runtime="onnxruntime", quant=spec.quant,
            target=target, ref=ref, source=source, seconds=time.perf_counter() - start, tools=self.tool_versions(),
            notes=dequantized_note(source, "exported"),
        )


def ensure_export(source: SourceModel, ref: Path, workspace: Path) -> Path:
    """The fp32 ONNX export (text-generation-with-past) every ONNX variant starts from, made once."""
    target = workspace / "intermediate" / f"{source.model}-onnx-fp32-{content_hash(source.sha256, ONNX().tool_versions())}"
    if not (target / MODEL).exists():
        log = workspace / "logs" / f"onnx-export-{source.model}.log"
        with atomic_dir(target) as tmp:
            cmd = [sys.executable, "-m", "toolkit.formats.onnx_tools", "export", str(ref), str(tmp)]
            run_tool(cmd, None, log, f"export {ref} to ONNX")
    return target
