"""onnxruntime (CPU) over an optimum export with KV cache: our own loop, so timings are the runtime's.

Only onnxruntime, numpy and the `tokenizers` library are loaded (the optimum export writes tokenizer.json), so a
profile measures what a deployment would hold: no torch, no transformers.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np

from toolkit.errors import UserError
from toolkit.runtimes import KVLoopSession
from toolkit.runtimes.onnxrt_batch import score_many as batched_scores

MODEL = "model.onnx"
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


IMPORTS = ("onnxruntime", "tokenizers")  # what a deployment of a variant loads


def check_installed() -> None:
    import onnxruntime  # noqa: F401
    import tokenizers  # noqa: F401


def versions() -> dict[str, str]:
    import onnxruntime
    import tokenizers

    return {"onnxruntime": onnxruntime.__version__, "tokenizers": tokenizers.__version__}


def build_flags() -> dict[str, str]:
    import onnxruntime

    return {"onnxruntime_providers": ",".join(onnxruntime.get_available_providers())}


class FastTokenizer:
    """tokenizer.json through the `tokenizers` library: the backend transformers' fast tokenizers run, read with
    the rules transformers takes from tokenizer_config.json (BOS token, whether to add it, decode clean-up)."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        if not (folder / "tokenizer.json").exists():
            raise UserError("no tokenizer.json in the variant folder (export it again with optimum)", file=folder)
        self.backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
        bos = config.get("bos_token")
        bos = bos.get("content") if isinstance(bos, dict) else bos
        self.bos_token_id: int | None = self.backend.token_to_id(bos) if bos else None
        if "add_bos_token" in config:
            self.add_bos_token = bool(config["add_bos_token"])
        else:  # no rule written: whether the post-processor puts BOS first
            first = self.backend.encode("a", add_special_tokens=True).ids[:1]
            self.add_bos_token = self.bos_token_id is not None and first == [self.bos_token_id]
        self.clean_up = bool(config.get("clean_up_tokenization_spaces", False))

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.backend.encode(text, add_special_tokens=add_special_tokens).ids}

    def decode(self, tokens: list[int]) -> str:
        text = self.backend.decode(tokens, skip_special_tokens=False)
        if self.clean_up:  # transformers' clean_up_tokenization
            for old, new in _CLEAN_UP:
                text = text.replace(old, new)
        return text


_CLEAN_UP = [(f" {p}", p) for p in (".", "?", "!", ",")] + [(" ' ", "'")] + [(f" {s}", s) for s in ("n't", "'m", "'s", "'ve", "'re")]


class OrtSession(KVLoopSession):
    def __init__(self, path: str, threads: int, n_ctx: int, n_batch: int):
        import onnxruntime as ort

        folder = Path(path)
        if not (folder / MODEL).exists():
            raise UserError(f"no {MODEL} in the variant folder", file=folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(folder / MODEL), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UserError(f"onnxruntime cannot load this model ({type(exc).__name__}: {str(exc)[:200]})", file=folder / MODEL) from exc
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        self.tokenizer = FastTokenizer(folder)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = sorted((n for n in self.inputs if n.startswith("past_key_values")), key=_layer_order)
        self.present_names = [n.replace("past_key_values", "present") for n in self.past_names]
        heads = config.get("num_key_value_heads", config["num_attention_heads"])
        head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
        first = self.inputs[self.past_names[0]] if self.past_names else None
        self.kv_dtype = _DTYPES.get(first.type, np.float32) if first else np.float32
        self.kv_shape = (1, heads, 0, head_dim)
        self.n_vocab = int(config["vocab_size"])
        self.add_bos = self.tokenizer.add_bos_token
        self.bos = self.tokenizer.bos_token_id
        self.n_batch = n_batch
        self.model_file = folder / MODEL
        self._per_tensor_activations: bool | None = None
        self.reset()

    def reset(self) -> None:
        self.past = self._empty_past(1)
        self.pos = 0

    def _empty_past(self, rows: int) -> dict[str, np.ndarray]:
        return {name: np.zeros((rows, *self.kv_shape[1:]), dtype=self.kv_dtype) for name in self.past_names}

    def _run(self, tokens: list[int], all_rows: bool = True) -> np.ndarray:
        n = len(tokens)
        feed = {"input_ids": np.asarray([tokens], dtype=np.int64)}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, self.pos + n), dtype=np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(self.pos, self.pos + n, dtype=np.int64)[None, :]
        feed.update(self.past)
        outputs = self.session.run(["logits", *self.present_names], feed)
        self.past = dict(zip(self.past_names, outputs[1:], strict=True))
        self.pos += n
        return outputs[0][0]

    def score(self, context: list[int], continuations: list[list[int]]) -> list[np.ndarray]:
        """Logits predicting each continuation's tokens, evaluating the shared context only once."""
        self.reset()
        last = self._run(context)[-1]
        saved, pos = self.past, self.pos
        out = []
        for cont in continuations:
            self.past, self.pos = saved, pos
            rest = self._run(cont[:-1]) if len(cont) > 1 else np.empty((0, self.n_vocab), np.float32)
            out.append(np.concatenate([last[None, :], rest]).astype(np.float32, copy=False))
        return out

    # -- batched scoring (toolkit/runtimes/onnxrt_batch.py)
    SCORE_TOKENS = 512  # padded tokens (rows x length) per forward pass (1024 and up: no faster on 2 cores)
    SCORE_LOGIT_BYTES = 256 * 2**20  # float32 logits per pass at most (the graph returns every position)

    def quantizes_activations_per_tensor(self) -> bool:
        """Whether the graph quantizes activations with one scale for the whole tensor (onnxruntime's dynamic
        int8: DynamicQuantizeLinear). Such a model's numbers depend on every row in the batch, padding included,
        so it is scored unbatched; weight-only and per-block schemes (MatMulNBits) score the same either way."""
        if self._per_tensor_activations is None:
            with open(self.model_file, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                self._per_tensor_activations = data.find(b"DynamicQuantizeLinear") >= 0
        return self._per_tensor_activations

    def score_many(self, groups: list[tuple[list[int], list[list[int]]]]) -> list[list[np.ndarray]]:
        """`score` for many groups at once (the same output), padded rows of similar length per forward pass."""
        if "attention_mask" not in self.inputs or not self.past_names or self.quantizes_activations_per_tensor():
            return [self.score(context, conts) for context, conts in groups]  # padding could not be masked
        budget = min(self.SCORE_TOKENS, self.SCORE_LOGIT_BYTES // (4 * self.n_vocab))
        return batched_scores(self, groups, max(1, budget))

    def empty_past(self, rows: int) -> dict[str, np.ndarray]:
        return self._empty_past(rows)

    def forward(self, ids: np.ndarray, mask: np.ndarray, past: dict[str, np.ndarray], start: np.ndarray, want: np.ndarray):
        """One forward pass over a padded batch: `ids` rows x length, `mask` over past + new tokens, `start` the
        position of each row's first new token; the logits at `want` (flat indices into rows x length) and the
        new KV cache."""
        feed = {"input_ids": ids}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = mask
        if "position_ids" in self.inputs:
            feed["position_ids"] = start[:, None] + np.arange(ids.shape[1], dtype=np.int64)[None, :]
        feed.update(past)
        outputs = self.session.run(["logits", *self.present_names], feed)
        return outputs[0].reshape(-1, outputs[0].shape[-1])[want], dict(zip(self.past_names, outputs[1:], strict=True))

    def close(self) -> None:
        self.session = None


def _layer_order(name: str) -> tuple[int, str]:
    parts = name.split(".")
    return int(parts[1]), parts[2]


def open_session(path: str, threads: int, n_ctx: int, n_batch: int) -> OrtSession:
    return OrtSession(path, threads, n_ctx, n_batch)
