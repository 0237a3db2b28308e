"""Runtimes load a variant and run it; the profiler, fidelity and lm-eval are written once over `Session`.

Adding a runtime is one file plus one registry line: `toolkit/runtimes/<name>.py` defining IMPORTS (the
libraries a deployment loads), `check_installed()` (raises ImportError when missing), `versions()`,
`build_flags()` and `open_session(path, threads, n_ctx, n_batch) -> Session`; then
`register(Runtime("<name>", "toolkit.runtimes.<name>", ("<format>",)))` below. The module is imported only
in the child process that measures a variant, so the parent never loads a runtime's libraries.
"""

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
    def score(self, context: list[int], continuations: list[list[int]]) -> list[np.ndarray]:
        """For each continuation, the logits that predict its tokens after `context` (len(cont) x n_vocab)."""
    def perf(self) -> dict[str, float] | None:
        """The runtime's own counters since the last reset_perf (ms and token counts), if it has them."""
    def reset_perf(self) -> None: ...
    def close(self) -> None: ...


def greedy_generate(session, prompt: str, max_tokens: int) -> str:
    """Greedy continuation of `prompt` (no sampling): a quick functional check of any session."""
    token, out = session.prefill(session.tokenize(prompt)), []
    for _ in range(max_tokens):
        out.append(token)
        token = session.decode(token)
    return session.detokenize(out)


class KVLoopSession:
    """Shared loop for runtimes driven token-batch by token-batch with their own KV cache (onnxruntime,
    PyTorch): subclasses set `tokenizer` and `n_batch` and implement `reset()` and `_run(tokens, all_rows)`,
    which appends tokens to the cache and returns next-token logits (every row, or the last one)."""

    tokenizer = None
    n_batch: int = 512

    def _run(self, tokens: list[int], all_rows: bool) -> np.ndarray:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def detokenize(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def generate(self, prompt: str, max_tokens: int) -> str:
        return greedy_generate(self, prompt, max_tokens)

    def _chunks(self, tokens: list[int]) -> list[list[int]]:
        return [tokens[s:s + self.n_batch] for s in range(0, len(tokens), self.n_batch)]

    def prefill(self, tokens: list[int]) -> int:
        self.reset()
        rows = None
        for chunk in self._chunks(tokens):
            rows = self._run(chunk, all_rows=False)
        return int(rows[-1].argmax())

    def decode(self, token: int) -> int:
        return int(self._run([token], all_rows=False)[-1].argmax())

    def logits(self, tokens: list[int]) -> np.ndarray:
        self.reset()
        return np.concatenate([self._run(c, all_rows=True) for c in self._chunks(tokens)]).astype(np.float32, copy=False)

    def perf(self) -> None:
        return None  # no per-phase token counters comparable to llama.cpp's

    def reset_perf(self) -> None:
        return None


@dataclass(frozen=True)
class Runtime:
    name: str
    module: str  # imported in the child process only; defines IMPORTS (the libraries a deployment loads),
    # check_installed, versions, build_flags and open_session
    formats: tuple[str, ...]
    lm_eval_backend: str = "session"  # "session": lm-eval through our Session adapter; "hflm": the module's
    # load_model() handed to lm-eval's own HF class
    profiler: str = "session"  # "session": the worker's timed loop over open_session(); "module": the module's
    # own profile(job, energy) returns the same result (llama.cpp's native binaries, measured as a served client)

    def load(self):
        return importlib.import_module(self.module)

    def versions(self) -> dict[str, str]:
        """The installed runtime's package versions ({} when it is not installed): results depend on them."""
        try:
            return dict(self.load().versions())
        except ImportError:
            return {}

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
register(Runtime("onnxruntime", "toolkit.runtimes.onnxrt", ("onnx",)))  # optimum's export
register(Runtime("onnxruntime-genai", "toolkit.runtimes.onnxrt_genai", ("onnx",)))  # onnxruntime-genai's builder
register(Runtime("llama.cpp-native", "toolkit.runtimes.llamacpp_native", ("gguf",), profiler="module"))  # profiling
register(Runtime("torch", "toolkit.runtimes.torch_hf", ("gptq", "hf"), lm_eval_backend="hflm"))


def get_runtime(name: str) -> Runtime:
    try:
        return RUNTIMES[name]
    except KeyError as exc:
        raise UserError(f"unknown runtime {name!r} (known: {', '.join(RUNTIMES)})") from exc
