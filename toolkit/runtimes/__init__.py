"""Runtimes load a variant and run it; the profiler and quality metrics are written once over this."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from toolkit.errors import UserError


class Session(Protocol):
    """A loaded model, ready for timed prefill/decode and for scoring text."""

    n_vocab: int
    add_bos: bool
    bos: int | None

    def tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, tokens: list[int]) -> str: ...
    def generate(self, prompt: str, max_tokens: int) -> str: ...
    def reset(self) -> None: ...
    def prefill(self, tokens: list[int]) -> int:
        """Evaluate a prompt from an empty cache; return the greedy next token."""
    def decode(self, token: int) -> int:
        """Append one token; return the greedy next token."""
    def logits(self, tokens: list[int]) -> np.ndarray:
        """From an empty cache, the next-token logits at every position (n_tokens x n_vocab, float32)."""
    def perf(self) -> dict[str, float] | None:
        """The runtime's own counters since the last reset_perf (ms and token counts), if it has them."""
    def reset_perf(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Runtime:
    name: str
    module: str  # imported in the child process only
    formats: tuple[str, ...]

    def load(self):
        return importlib.import_module(self.module)

    def available(self) -> str | None:
        """None when installed, else why not."""
        try:
            self.load().check_installed()
        except ImportError as exc:
            return f"{self.name} is not installed here ({exc})"
        return None


RUNTIMES: dict[str, Runtime] = {}


def register(runtime: Runtime) -> Runtime:
    RUNTIMES[runtime.name] = runtime
    return runtime


register(Runtime("llama.cpp", "toolkit.runtimes.llamacpp", ("gguf",)))
register(Runtime("onnxruntime", "toolkit.runtimes.onnxrt", ("onnx",)))
register(Runtime("torch", "toolkit.runtimes.torch_hf", ("gptq", "hf")))


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError as exc:
        raise UserError(f"unknown runtime {name!r} (known: {', '.join(RUNTIMES)})") from exc
