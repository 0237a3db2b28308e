"""GPTQ variants (4/8-bit) through GPTQModel, the maintained successor of AutoGPTQ, on the CPU."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from toolkit.config import Strict
from toolkit.errors import UserError
from toolkit.formats import Format, VariantSpec
from toolkit.formats.files import dequantized_note, record_folder_variant
from toolkit.io import atomic_dir, ensure_dir, write_text
from toolkit.procs import run_tool
from toolkit.quality.corpus import corpus_path
from toolkit.records import Variant
from toolkit.reference import reference_dir
from toolkit.sources import SourceModel


class Calibration(Strict):
    corpus: Literal["flores-eng"] = "flores-eng"
    lines: int = Field(128, ge=8, le=100_000)


class GPTQSpec(Strict):
    bits: list[Literal[4, 8]] = Field(default_factory=lambda: [4, 8], min_length=1)
    group_size: int = Field(64, description="must divide the model's hidden and intermediate sizes; -1 = per column")
    desc_act: bool = False
    calibration: Calibration = Field(default_factory=Calibration)

    @field_validator("group_size")
    @classmethod
    def _group(cls, size: int) -> int:
        if size != -1 and (size < 8 or size & (size - 1)):
            raise ValueError(f"group size {size} must be -1 or a power of two >= 8")
        return size


def calibration_text(corpus: str, lines: int) -> tuple[str, str]:
    """The first `lines` non-empty lines of a local corpus, and their sha256."""
    text = corpus_path(corpus).read_text(encoding="utf-8")
    chosen = [ln for ln in text.splitlines() if ln.strip()][:lines]
    if len(chosen) < lines:
        raise UserError(f"corpus {corpus} has only {len(chosen)} lines", field="variants.gptq.calibration.lines")
    joined = "\n".join(chosen) + "\n"
    return joined, hashlib.sha256(joined.encode()).hexdigest()


def check_group_size(ref: Path, group_size: int) -> None:
    config = json.loads((ref / "config.json").read_text(encoding="utf-8"))
    for key in ("hidden_size", "intermediate_size"):
        width = config.get(key)
        if group_size != -1 and width and width % group_size:
            raise UserError(
                f"group size {group_size} does not divide {key}={width} of {ref.name}; try {_divisor(width)}",
                field="variants.gptq.group_size",
            )


def _divisor(width: int) -> int:
    return next(g for g in (128, 64, 32, 16, 8) if width % g == 0)


class GPTQ(Format):
    name = "gptq"
    runtime = "torch"
    Spec = GPTQSpec
    packages = ("gptqmodel", "torch", "transformers")

    def specs(self, spec: GPTQSpec) -> list[VariantSpec]:
        options = (
            ("group_size", spec.group_size),
            ("desc_act", spec.desc_act),
            ("corpus", spec.calibration.corpus),
            ("lines", spec.calibration.lines),
        )
        return [VariantSpec("gptq", f"w{bits}g{spec.group_size}", (("bits", bits), *options)) for bits in spec.bits]

    def make(self, source: SourceModel, spec: VariantSpec, vid: str, folder: Path, workspace: Path,
             threads: int | None) -> Variant:
        if self.tool_versions()["gptqmodel"] == "missing":
            raise UserError("GPTQ variants need gptqmodel; ./scripts/setup.sh installs it", field="variants.gptq")
        opts = dict(spec.options)
        ref = reference_dir(source, workspace)
        check_group_size(ref, opts["group_size"])
        text, calib_sha = calibration_text(opts["corpus"], opts["lines"])
        work = ensure_dir(workspace / "gptq-work" / vid)  # GPTQModel's offload folder and logs land here
        calib = work / "calibration.txt"
        write_text(calib, text)
        start = time.perf_counter()
        target = folder / "model"
        with atomic_dir(target) as tmp:
            cmd = [sys.executable, "-m", "toolkit.formats.gptq_tools", str(ref), str(tmp), str(opts["bits"]),
                   str(opts["group_size"]), "1" if opts["desc_act"] else "0", str(calib)]
            run_tool(cmd, None, workspace / "logs" / f"gptq-{vid}.log", f"GPTQ-quantize {ref.name}", cwd=work)
        return record_folder_variant(
            vid=vid, label=f"{source.model} GPTQ {spec.quant}", fmt="gptq", runtime="torch", quant=spec.quant,
            target=target, ref=ref, source=source, seconds=time.perf_counter() - start, tools=self.tool_versions(),
            notes=dequantized_note(source, "quantized"),
            details={
                "bits": opts["bits"], "group_size": opts["group_size"], "desc_act": opts["desc_act"],
                "calibration_corpus": opts["corpus"], "calibration_lines": opts["lines"], "calibration_sha256": calib_sha,
            },
        )
