"""ONNX variants, built one of two ways (`variants.onnx.builder`):

- `genai` (default): onnxruntime-genai's model builder from the HF reference (int4 MatMulNBits with the
  embedding quantized too and shared with the LM head; fp32), run by onnxruntime-genai's generator. This is how
  ONNX LLMs ship to devices.
- `optimum`: optimum's export with KV cache, then onnxruntime quantization (int8 dynamic, int4 MatMulNBits),
  run by the toolkit's own onnxruntime loop. The embedding and LM head stay fp32.
"""

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
from toolkit.formats.files import dequantized_note, package_versions, record_folder_variant
from toolkit.io import atomic_dir, content_hash
from toolkit.procs import run_tool
from toolkit.records import Variant
from toolkit.reference import reference_dir
from toolkit.sources import SourceModel

MODEL = "model.onnx"
PACKAGES = ("optimum", "optimum-onnx", "onnxruntime", "onnx", "transformers")
GENAI_PACKAGES = ("onnxruntime-genai", "onnxruntime", "onnx-ir", "transformers")
Builder = Literal["genai", "optimum"]
GENAI_PRECISIONS = ("fp32", "int4")  # what onnxruntime-genai's builder writes for the CPU


class ONNXSpec(Strict):
    builder: Builder | list[Builder] = "genai"  # one, or several side by side
    precisions: list[Literal["fp32", "int8", "int4"]] = Field(default_factory=lambda: ["fp32", "int4"], min_length=1)  # int8: optimum
    int4_block_sizes: list[int] = Field(default_factory=lambda: [32, 128], min_length=1)
    int4_accuracy_level: Literal[1, 2, 3, 4] = 4  # genai: MatMulNBits compute type (4: int8 activations, 1: fp32)
    # genai: the builder's int4 method. "default" decodes fastest; rtn shares an int4 embedding with the LM head
    # (smallest), rtn_last an int8 one (closest to F16, slowest); the k_quant ones break Gemma 3. Measured
    # (bench_onnx_builders, KL to F16 / MiB / decode tok/s): SmolLM2 default 0.44/103/147, rtn 0.60/86/126,
    # rtn_last 0.41/99/76; Gemma 3 default 0.51/338/112, rtn 0.61/238/72, rtn_last 0.43/318/36
    int4_algo: Literal["default", "rtn", "rtn_last", "k_quant", "k_quant_mixed", "k_quant_last"] = "default"

    @property
    def builders(self) -> list[str]:
        return [self.builder] if isinstance(self.builder, str) else list(dict.fromkeys(self.builder))

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
        for builder in spec.builders:
            prefix, extra = ("genai-", (("builder", "genai"),)) if builder == "genai" else ("", ())
            for precision in spec.precisions:
                if precision == "int4":
                    level = (("accuracy_level", spec.int4_accuracy_level), ("algo", spec.int4_algo)) if builder == "genai" else ()
                    out += [VariantSpec("onnx", f"{prefix}int4-b{b}", (("block_size", b), *level, *extra))
                            for b in spec.int4_block_sizes]
                else:
                    out.append(VariantSpec("onnx", prefix + precision, extra))
        return out

    def runtime_of(self, spec: VariantSpec) -> str:
        return "onnxruntime-genai" if dict(spec.options).get("builder") == "genai" else self.runtime

    def spec_tool_versions(self, spec: VariantSpec) -> dict[str, str]:
        return package_versions(*GENAI_PACKAGES) if self.runtime_of(spec) == "onnxruntime-genai" else self.tool_versions()

    def make(self, source: SourceModel, spec: VariantSpec, vid: str, folder: Path, workspace: Path,
             threads: int | None) -> Variant:
        if dict(spec.options).get("builder") == "genai":
            return self.make_genai(source, spec, vid, folder, workspace)
        if missing := self.check_available(PACKAGES):
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


    def make_genai(self, source: SourceModel, spec: VariantSpec, vid: str, folder: Path, workspace: Path) -> Variant:
        """onnxruntime-genai's model builder from the HF reference, never trusting remote code."""
        if missing := self.check_available(GENAI_PACKAGES):
            raise UserError(missing, field="variants.onnx.builder")
        precision = spec.quant.removeprefix("genai-").split("-")[0]
        if precision not in GENAI_PRECISIONS:
            raise UserError(f"onnxruntime-genai's builder writes {' and '.join(GENAI_PRECISIONS)} for the CPU, "
                            f"not {precision}; use builder: optimum for it", field="variants.onnx.precisions")
        start = time.perf_counter()
        ref = reference_dir(source, workspace)
        options = dict(spec.options)
        extra = ["hf_remote=false", "hf_token=false"]
        if precision == "int4":
            extra += [f"int4_block_size={options['block_size']}", f"int4_accuracy_level={options['accuracy_level']}"]
            if options["algo"] == "default":  # MatMuls and the embedding in int4, shared with the LM head where it can
                extra += ["int4_op_types_to_quantize=MatMul/Gather", "shared_embeddings=true"]
            else:
                extra.append(f"int4_algo_config={options['algo']}")
        target = folder / "model"
        cache = workspace / "intermediate" / f"genai-cache-{vid}"
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(ref), "-p", precision, "-e", "cpu",
               "-c", str(cache), "--extra_options", *extra]
        with atomic_dir(target) as tmp:
            run_tool([*cmd, "-o", str(tmp)], None, workspace / "logs" / f"onnx-genai-{vid}.log",
                     f"build ONNX {precision} with onnxruntime-genai")  # it saves the reference's tokenizer too
        shutil.rmtree(cache, ignore_errors=True)
        notes = dequantized_note(source, "built by onnxruntime-genai's model builder")
        return record_folder_variant(
            vid=vid, label=f"{source.model} ONNX {spec.quant}", fmt="onnx", runtime="onnxruntime-genai",
            quant=spec.quant, target=target, ref=ref, source=source, seconds=time.perf_counter() - start,
            tools=self.spec_tool_versions(spec), notes=notes,
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
