"""llama.cpp through llama-cpp-python's C API: no high-level wrapper between the timer and the runtime.

Contexts over one model: the one that `prefill`/`decode`/`logits` use (one sequence, as a deployment runs it,
so profiles measure that), and, made on first use, a scoring context per layout (`score_many` for requests,
`score_windows` for long windows) that holds many sequences in one unified KV cache, so one `llama_decode`
scores several requests (as llama.cpp's perplexity and hellaswag tools do) and a context shared by several
continuations is evaluated once, its tokens assigned to every continuation's sequence.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

from toolkit.errors import UserError
from toolkit.runtimes import greedy_generate
from toolkit.runtimes.llamacpp_batch import Shape, decode_round, plan_rounds, plan_units

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
        self.n_ctx = n_ctx
        self.threads = threads
        self._pos = 0
        self._one = (llama_cpp.llama_token * 1)()
        self._scoring: dict[str, tuple] = {}  # layout -> its scoring context and batch, made on first use

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
        """Logits predicting each continuation's tokens, evaluating the shared context only once: one group
        alone in the scoring context (one decode), the same numbers as when it is batched with others."""
        return self.score_many([(context, continuations)])[0]

    # -- batched scoring: many (context, continuations) groups per llama_decode
    SCORE_TOKENS = 1024  # tokens per decode: a round of requests packed together (n_batch and KV cells)
    SCORE_SEQS = 64  # sequences one round may hold (n_seq_max of the scoring context)
    SCORE_LOGIT_BYTES = 256 * 2**20  # float32 logit rows one round may return (llama.cpp's output buffer)
    # How a decode is laid out, so that a request's numbers never depend on its neighbours. ggml-cpu's flash
    # attention has two kernels: below 64 query rows in a ubatch, a scalar one that rounds queries to F16 and
    # walks each query's keys one by one (skipping other sequences' cells); from 64 rows, a tiled one in F32
    # that walks keys in 64-cell tiles, which a request's keys fall into by its offset in the cache.
    # - "requests" (lm-eval's loglikelihood: short contexts, many per decode): ubatches of 63 tokens, the
    #   scalar kernel always; a last ubatch of 1-3 tokens (other matmul kernels) is topped up to 4.
    # - "windows" (fidelity and rolling log-likelihood: windows of up to ctx tokens): ubatches of 256 with at
    #   least 64 rows (the tiled kernel always), each window starting at a multiple of 64 cells. 25% faster
    #   on SmolLM2's 512-token windows; on short requests the padding to 64 cells costs more than it saves.
    # Filler tokens, a sequence of their own, make up the alignment and the minimum rows.
    SCORE_SHAPES = {"requests": Shape(ubatch=63, min_rows=4, align=1), "windows": Shape(ubatch=256, min_rows=64, align=64)}

    @property
    def score_capacity(self) -> int:
        """KV cells for requests in a scoring decode: the larger of the session's context and SCORE_TOKENS."""
        return max(self.n_ctx, self.SCORE_TOKENS)

    def _scoring_context(self, layout: str):
        """The multi-sequence context of a layout, made on first use: unified KV (a token may belong to several
        sequences), n_ctx = n_batch = score_capacity plus room for filler, so any request the session accepts
        fits one decode; and its batch."""
        if layout not in self._scoring:
            ll, shape = self._ll, self.SCORE_SHAPES[layout]
            cparams = ll.llama_context_default_params()
            cparams.n_ctx = cparams.n_batch = self.score_capacity + shape.min_rows
            cparams.n_ubatch = shape.ubatch
            cparams.n_seq_max = self.SCORE_SEQS
            cparams.kv_unified = True
            # flash attention: a query skips the cells other sequences hold (plain attention multiplies them in,
            # masked: packing would cost attention work)
            cparams.flash_attn_type = ll.LLAMA_FLASH_ATTN_TYPE_ENABLED
            cparams.n_threads = self.threads
            cparams.n_threads_batch = self.threads
            cparams.no_perf = True
            ctx = ll.llama_init_from_model(self.model, cparams)
            if not ctx:
                raise RuntimeError("llama.cpp could not create the batched scoring context")
            self._scoring[layout] = (ctx, ll.llama_batch_init(self.score_capacity + shape.min_rows, 0, self.SCORE_SEQS))
        return self._scoring[layout]

    def score_many(self, groups: list[tuple[list[int], list[list[int]]]]) -> list[list[np.ndarray]]:
        """`score` for many groups at once: for each (context, continuations) group, per continuation the logits
        predicting each of its tokens (len(cont) x n_vocab, float32), as `score` returns them.

        Groups are packed into rounds of up to SCORE_TOKENS tokens, one `llama_decode` each, every group on
        its own sequence ids; a context is decoded once for all its continuations (its tokens carry every
        continuation's sequence id); logits are computed only where a continuation token is predicted."""
        return self._score(groups, "requests")

    def score_windows(self, groups: list[tuple[list[int], list[list[int]]]]) -> list[list[np.ndarray]]:
        """`score_many` in the "windows" layout: for long spans (fidelity's and rolling log-likelihood's
        windows). Its numbers differ from score_many's (F32 queries, not F16), and never with the batch."""
        return self._score(groups, "windows")

    def _score(self, groups, layout: str) -> list[list[np.ndarray]]:
        ctx, batch = self._scoring_context(layout)
        shape = self.SCORE_SHAPES[layout]
        out: list[list[np.ndarray | None]] = [[None] * len(conts) for _, conts in groups]
        max_outputs = max(1, self.SCORE_LOGIT_BYTES // (4 * self.n_vocab))
        seqs = self.SCORE_SEQS - 1  # for requests; the last one is the filler's
        units = plan_units(groups, self.score_capacity, seqs)
        for rnd in plan_rounds(units, min(self.SCORE_TOKENS, self.score_capacity), seqs, max_outputs, shape.align):
            decode_round(self._ll, ctx, batch, rnd, groups, out, self.n_vocab, shape)
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
        for ctx, batch in self._scoring.values():
            self._ll.llama_batch_free(batch)
            self._ll.llama_free(ctx)
        self._scoring.clear()
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
