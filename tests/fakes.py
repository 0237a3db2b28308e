"""A fake format and runtime (like lm-eval's dummy model): real plug-ins, no model, milliseconds per call.

`FakeFormat` writes a small JSON "model" per variant; the runtime half of this module (IMPORTS, versions,
open_session, ...) loads it in the profiling worker's child process, sleeps for its prefill and decode time,
and returns logits from a fixed random table plus the variant's own noise, so fidelity has something to
measure. Register both with `install(monkeypatch)`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from toolkit import formats, runtimes
from toolkit.config import Strict
from toolkit.formats import Format, VariantSpec
from toolkit.io import sha256_file, write_json, write_text
from toolkit.records import Variant

VOCAB = 64
IMPORTS = ("json",)  # what a deployment of a fake variant loads


class FakeSpec(Strict):
    speeds: list[float] = Field(default_factory=lambda: [1.0, 4.0], min_length=1, description="relative speed of each variant")
    noise: float = Field(0.5, ge=0, description="logit noise per unit of speed above 1 (faster = less faithful)")
    step_ms: float = Field(2.0, gt=0, description="decode step of a speed-1 variant, ms")


class FakeFormat(Format):
    name = "fake"
    runtime = "fake"
    Spec = FakeSpec

    def tool_versions(self) -> dict[str, str]:
        return {"fake": "1"}

    def specs(self, spec: FakeSpec) -> list[VariantSpec]:
        return [VariantSpec("fake", f"x{s:g}", (("speed", s), ("noise", spec.noise * (s - 1)), ("step_ms", spec.step_ms)))
                for s in spec.speeds]

    def make(self, source, spec: VariantSpec, vid: str, folder: Path, workspace: Path, threads: int | None) -> Variant:
        target = folder / "model.json"
        write_text(target, json.dumps(dict(spec.options)))
        variant = Variant(
            id=vid, label=f"{source.model} fake {spec.quant}", model=source.model, format="fake", runtime="fake",
            quant=spec.quant, path=str(target.resolve()), size_bytes=target.stat().st_size, sha256=sha256_file(target),
            n_params=VOCAB * VOCAB, source=source.origin, source_sha256=source.sha256, seconds=0.0, tools=self.tool_versions(),
        )
        write_json(folder / "variant.json", variant)
        return variant


def install(monkeypatch) -> None:
    """Register the fake format and runtime for one test (monkeypatch undoes it)."""
    monkeypatch.setitem(formats.REGISTRY, "fake", FakeFormat)
    monkeypatch.setitem(runtimes.RUNTIMES, "fake", runtimes.Runtime("fake", "tests.fakes", ("fake",)))


def fake_source(folder: Path) -> Path:
    """A local "HF checkpoint" for a recipe's candidate: the files a source needs, no weights worth loading."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "fake"}')
    (folder / "model.safetensors").write_bytes(b"fake")
    return folder


# --- the runtime half, imported in the worker's child process ---


def check_installed() -> None:
    return None


def versions() -> dict[str, str]:
    return {"fake-runtime": "1"}


def build_flags() -> dict[str, str]:
    return {}


class FakeSession:
    n_vocab = VOCAB
    add_bos = False
    bos = None

    def __init__(self, options: dict):
        self.speed, self.noise, self.step_s = options["speed"], options["noise"], options["step_ms"] / 1000
        self.table = np.random.default_rng(0).normal(size=(VOCAB, VOCAB)).astype(np.float32) * 3

    def tokenize(self, text: str) -> list[int]:
        return [b % VOCAB for b in text.encode()]

    def detokenize(self, tokens: list[int]) -> str:
        return " ".join(map(str, tokens))

    def generate(self, prompt: str, max_tokens: int) -> str:
        return runtimes.greedy_generate(self, prompt, max_tokens)

    def reset(self) -> None:
        return None

    def prefill(self, tokens: list[int]) -> int:
        time.sleep(len(tokens) * self.step_s / 20 / self.speed)
        return int(self._rows(tokens[-1:])[-1].argmax())

    def decode(self, token: int) -> int:
        time.sleep(self.step_s / self.speed)
        return int(self._rows([token])[-1].argmax())

    def _rows(self, tokens: list[int]) -> np.ndarray:
        rows = self.table[np.asarray(tokens)]
        jitter = np.random.default_rng(len(tokens)).normal(size=rows.shape).astype(np.float32)
        return rows + self.noise * jitter

    def logits(self, tokens: list[int]) -> np.ndarray:
        return self._rows(tokens)

    def score(self, context: list[int], continuations: list[list[int]]) -> list[np.ndarray]:
        return [self._rows((context + cont)[len(context) - 1:-1]) for cont in continuations]

    def perf(self) -> None:
        return None

    def reset_perf(self) -> None:
        return None

    def close(self) -> None:
        return None


def open_session(path: str, threads: int, n_ctx: int, n_batch: int) -> FakeSession:
    return FakeSession(json.loads(Path(path).read_text(encoding="utf-8")))
