"""llama.cpp through llama-cpp-python's C API: no high-level wrapper between the timer and the runtime."""

from __future__ import annotations

import ctypes
import os

import numpy as np

from toolkit.errors import UserError
from toolkit.runtimes import greedy_generate

IMPORTS = ("llama_cpp",)  # what a deployment of a variant loads


def check_installed() -> None:
    import llama_cpp  # noqa: F401


def versions() -> dict[str, str]:
    import llama_cpp

    return {"llama_cpp_python": llama_cpp.__version__}


def build_flags() -> dict[str, str]:
    """llama.cpp's system info line (SIMD features the build uses), parsed into a mapping."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    flags: dict[str, str] = {}
    for part in info.replace("|", ";").split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            flags[key.split(":")[-1].strip()] = value.strip()
    return flags


class LlamaCppSession:
    def __init__(self, path: str, threads: int, n_ctx: int, n_batch: int):
        import llama_cpp

        self._ll = llama_cpp
        llama_cpp.llama_backend_init()
        llama_cpp.llama_log_set(_silent_log, ctypes.c_void_p(0))
        if not os.path.exists(path):
            raise UserError("model file not found", file=path)
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise UserError("llama.cpp could not load this GGUF (corrupt, truncated or unsupported)", file=path)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, 512)
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.no_perf = False
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise UserError("llama.cpp could not create a context", file=path)
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        bos = int(llama_cpp.llama_vocab_bos(self.vocab))
        self.bos = bos if bos >= 0 else None
        self.n_batch = n_batch
        self._pos = 0
        self._one = (llama_cpp.llama_token * 1)()

    def tokenize(self, text: str) -> list[int]:
        raw = text.encode()
        buf = (self._ll.llama_token * (len(raw) + 8))()
        n = self._ll.llama_tokenize(self.vocab, raw, len(raw), buf, len(buf), False, False)
        if n < 0:
            raise RuntimeError("tokenize buffer too small")
        return list(buf[:n])

    def detokenize(self, tokens: list[int]) -> str:
        buf = ctypes.create_string_buffer(len(tokens) * 64 + 64)
        arr = (self._ll.llama_token * len(tokens))(*tokens)
        n = self._ll.llama_detokenize(self.vocab, arr, len(tokens), buf, len(buf), False, False)
        return buf.raw[: max(n, 0)].decode(errors="replace")

    def generate(self, prompt: str, max_tokens: int) -> str:
        return greedy_generate(self, prompt, max_tokens)

    def reset(self) -> None:
        self._ll.llama_memory_clear(self._ll.llama_get_memory(self.ctx), True)
        self._pos = 0

    def _decode(self, arr, n: int) -> None:
        rc = self._ll.llama_decode(self.ctx, self._ll.llama_batch_get_one(arr, n))
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")
        self._pos += n

    def _greedy_last(self) -> int:
        ptr = self._ll.llama_get_logits_ith(self.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).argmax())

    def prefill(self, tokens: list[int]) -> int:
        self.reset()
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            self._decode((self._ll.llama_token * len(chunk))(*chunk), len(chunk))
        return self._greedy_last()

    def decode(self, token: int) -> int:
        self._one[0] = token
        self._decode(self._one, 1)
        return self._greedy_last()

    def _eval(self, tokens: list[int], start: int, all_logits: bool) -> np.ndarray:
        """Decode `tokens` at positions start.. into the cache; logits for every token or the last one."""
        ll, n = self._ll, len(tokens)
        out = np.empty((n if all_logits else 1, self.n_vocab), dtype=np.float32)
        batch = ll.llama_batch_init(self.n_batch, 0, 1)
        try:
            for offset in range(0, n, self.n_batch):
                chunk = tokens[offset:offset + self.n_batch]
                last_chunk = offset + len(chunk) == n
                batch.n_tokens = len(chunk)
                for i, tok in enumerate(chunk):
                    batch.token[i] = tok
                    batch.pos[i] = start + offset + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 1 if all_logits or (last_chunk and i == len(chunk) - 1) else 0
                if ll.llama_decode(self.ctx, batch) != 0:
                    raise RuntimeError("llama_decode failed while scoring")
                ptr = ll.llama_get_logits(self.ctx)
                if all_logits:
                    out[offset:offset + len(chunk)] = np.ctypeslib.as_array(ptr, shape=(len(chunk), self.n_vocab))
                elif last_chunk:
                    out[0] = np.ctypeslib.as_array(ptr, shape=(1, self.n_vocab))[0]
        finally:
            ll.llama_batch_free(batch)
        self._pos = start + n
        return out

    def logits(self, tokens: list[int]) -> np.ndarray:
        self.reset()
        return self._eval(tokens, 0, all_logits=True)

    def score(self, context: list[int], continuations: list[list[int]]) -> list[np.ndarray]:
        """Logits predicting each continuation's tokens, evaluating the shared context only once."""
        self.reset()
        last = self._eval(context, 0, all_logits=False)[0].copy()
        memory = self._ll.llama_get_memory(self.ctx)
        out = []
        for cont in continuations:
            self._ll.llama_memory_seq_rm(memory, 0, len(context), -1)
            rest = self._eval(cont[:-1], len(context), all_logits=True) if len(cont) > 1 else np.empty((0, self.n_vocab), np.float32)
            out.append(np.concatenate([last[None, :], rest]))
        return out

    def perf(self) -> dict[str, float]:
        data = self._ll.llama_perf_context(self.ctx)
        return {
            "prefill_ms": data.t_p_eval_ms,
            "prefill_tokens": data.n_p_eval,
            "decode_ms": data.t_eval_ms,
            "decode_tokens": data.n_eval,
        }

    def reset_perf(self) -> None:
        self._ll.llama_perf_context_reset(self.ctx)

    def close(self) -> None:
        if self.ctx:
            self._ll.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self._ll.llama_model_free(self.model)
            self.model = None


def open_session(path: str, threads: int, n_ctx: int, n_batch: int) -> LlamaCppSession:
    return LlamaCppSession(path, threads, n_ctx, n_batch)


@ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
def _silent_log(level, text, user_data):  # keep llama.cpp's load chatter out of the output
    return None
