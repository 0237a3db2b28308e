"""onnxruntime-genai: the generator applications ship with ONNX LLMs (KV cache, search, the model builder's
graphs), over variants its model builder wrote (toolkit/formats/onnx.py, `builder: genai`).

Timings come from `og.Generator` itself: `append_tokens` runs the prompt, `generate_next_token` picks the
greedy token from the logits it holds and runs the model on the token before it. Tokens come from the
`tokenizers` library (tokenizer.json beside the model): `og.Tokenizer` mis-encodes SmolLM2's byte-level BPE and
cannot load Gemma 3's tokenizer (../shared/MODELS.md), and a deployment needs only one of the two.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolkit.errors import UserError
from toolkit.runtimes import greedy_generate
from toolkit.runtimes.onnxrt import FastTokenizer

CONFIG = "genai_config.json"
IMPORTS = ("onnxruntime_genai", "tokenizers")  # what a deployment of a variant loads


def check_installed() -> None:
    import onnxruntime_genai  # noqa: F401
    import tokenizers  # noqa: F401


def versions() -> dict[str, str]:
    import onnxruntime_genai
    import tokenizers

    return {"onnxruntime-genai": onnxruntime_genai.__version__, "tokenizers": tokenizers.__version__}


def build_flags() -> dict[str, str]:
    import onnxruntime_genai as og

    gpus = [name for name in ("cuda", "dml", "rocm", "openvino", "qnn", "webgpu") if getattr(og, f"is_{name}_available")()]
    return {"onnxruntime_genai_devices": ",".join(["cpu", *gpus])}


class GenaiSession:
    """A Session over `og.Model` and one `og.Generator` at a time (greedy search)."""

    def __init__(self, path: str, threads: int, n_ctx: int, n_batch: int):
        import onnxruntime_genai as og

        folder = Path(path)
        if not (folder / CONFIG).exists():
            raise UserError(f"no {CONFIG} in the variant folder (build it with onnxruntime-genai's model builder)", file=folder)
        settings = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        config = og.Config(str(folder))
        options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        try:
            self.model = og.Model(config)
        except Exception as exc:  # noqa: BLE001 - onnxruntime-genai raises its own exception types
            raise UserError(f"onnxruntime-genai cannot load this model ({type(exc).__name__}: {str(exc)[:200]})", file=folder) from exc
        self.og = og
        self.tokenizer = FastTokenizer(folder)
        self.n_vocab = int(settings["model"]["vocab_size"])
        self.max_length = min(int(settings["model"]["context_length"]), max(n_ctx, 2 * n_batch) + 8)
        self.add_bos = self.tokenizer.add_bos_token
        self.bos = self.tokenizer.bos_token_id
        self.generator = None
        self.picked: int | None = None  # the token the generator chose last (already in its sequence)

    def _new_generator(self):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=self.max_length, do_sample=False, batch_size=1)
        self.generator = self.og.Generator(self.model, params)
        self.picked = None
        return self.generator

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def detokenize(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    def generate(self, prompt: str, max_tokens: int) -> str:
        return greedy_generate(self, prompt, max_tokens)

    def reset(self) -> None:
        self.generator, self.picked = None, None

    def _pick(self) -> int:
        self.generator.generate_next_token()
        self.picked = int(self.generator.get_next_tokens()[0])
        return self.picked

    def prefill(self, tokens: list[int]) -> int:
        self._new_generator().append_tokens(np.asarray(tokens, dtype=np.int32))
        return self._pick()

    def decode(self, token: int) -> int:
        if token != self.picked:  # not the generator's own choice: replace it with `token`
            self.generator.rewind_to(self.generator.token_count() - 1)
            self.generator.append_tokens(np.asarray([token], dtype=np.int32))
        return self._pick()

    def _append(self, tokens: list[int]) -> np.ndarray:
        """Run `tokens` after what the generator holds; the logits at each of their positions."""
        self.generator.append_tokens(np.asarray(tokens, dtype=np.int32))
        rows = np.asarray(self.generator.get_output("logits"), dtype=np.float32)
        return rows.reshape(-1, rows.shape[-1])[-len(tokens):]

    def logits(self, tokens: list[int]) -> np.ndarray:
        self._new_generator()
        return self._append(tokens)

    def score(self, context: list[int], continuations: list[list[int]]) -> list[np.ndarray]:
        """Logits predicting each continuation's tokens; the context runs once, the KV cache is rewound to it."""
        self._new_generator()
        last = self._append(context)[-1]
        out = []
        for cont in continuations:
            self.generator.rewind_to(len(context))
            rest = self._append(cont[:-1]) if len(cont) > 1 else np.empty((0, self.n_vocab), np.float32)
            out.append(np.concatenate([last[None, :], rest]))
        return out

    def perf(self) -> None:
        return None  # no per-phase counters comparable to llama.cpp's

    def reset_perf(self) -> None:
        return None

    def close(self) -> None:
        self.generator, self.model = None, None


def open_session(path: str, threads: int, n_ctx: int, n_batch: int) -> GenaiSession:
    return GenaiSession(path, threads, n_ctx, n_batch)
