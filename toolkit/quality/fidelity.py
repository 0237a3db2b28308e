"""Scoring token windows: the one pass that perplexity, KL divergence, top-1 agreement and lm-eval's rolling
log-likelihood all read. Only numpy here: the fidelity worker of an ONNX variant loads neither torch nor lm-eval.

A window is (context, target): the log-probabilities of `target`'s tokens given everything before them. Sessions
with `score_many` (llama.cpp, onnxruntime) score many windows per runtime call and compute logits only where a
target token is predicted; any other session falls back to `logits()` on each window.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

LOGIT_BYTES = 256 * 2**20  # float32 logits held at once between the runtime and the reduction


def max_rows(session) -> int:
    """Logit rows that fit LOGIT_BYTES for this session's vocabulary (1,365 for a 49k vocabulary)."""
    return max(1, LOGIT_BYTES // (4 * int(session.n_vocab)))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    peak = x.max(axis=-1, keepdims=True)
    return x - (np.log(np.exp(x - peak).sum(axis=-1, keepdims=True)) + peak)


def log_normaliser(logits: np.ndarray) -> np.ndarray:
    """Per row, the term `log_softmax` subtracts (float64), so that `x[t] - log_normaliser(x)` is bit for bit
    `log_softmax(x)[t]` without building the whole matrix."""
    x = logits.astype(np.float64)
    peak = x.max(axis=-1, keepdims=True)
    return (np.log(np.exp(x - peak).sum(axis=-1, keepdims=True)) + peak)[..., 0]


def slices(groups: list, rows_of, limit: int) -> Iterator[list]:
    """Consecutive runs of `groups` holding at most `limit` logit rows (a larger group goes alone)."""
    current, rows = [], 0
    for group in groups:
        n = rows_of(group)
        if current and rows + n > limit:
            yield current
            current, rows = [], 0
        current.append(group)
        rows += n
    if current:
        yield current


def score_groups(session, groups: list[tuple[list[int], list[list[int]]]], batched: bool = True) -> list[list[np.ndarray]]:
    """Per (context, continuations) group, per continuation, the logits predicting each of its tokens."""
    if batched and hasattr(session, "score_many"):
        return session.score_many(groups)
    if hasattr(session, "score"):
        return [session.score(context, conts) for context, conts in groups]
    return [[session.logits(list(context) + list(cont))[len(context) - 1:len(context) - 1 + len(cont)] for cont in conts]
            for context, conts in groups]


def window_logits(session, windows: list[tuple[list[int], list[int]]], batched: bool = True) -> Iterator[np.ndarray]:
    """For each (context, target) window in order, the logits predicting `target` (len(target) x n_vocab)."""
    for part in slices(windows, lambda w: len(w[1]), max_rows(session)):
        for rows in score_groups(session, [(context, [target]) for context, target in part], batched):
            yield rows[0]


def target_logprobs(logits: np.ndarray, target: list[int]) -> np.ndarray:
    """log p(target[i]) from the logits predicting it, float64, the same numbers as log_softmax gives."""
    rows = np.arange(len(target))
    return logits[rows, target].astype(np.float64) - log_normaliser(logits)


def rolling_loglikelihood(session, windows: list[tuple[list[int], list[int]]], batched: bool = True) -> list[float]:
    """Sum of log p(target) over each window (lm-eval's rolling windows of one text, or of many)."""
    return [float(target_logprobs(logits, target).sum())
            for logits, (_, target) in zip(window_logits(session, windows, batched), windows, strict=True)]


def perplexity(session, tokens: list[int], ctx: int, chunks: int, reference: dict | None = None, batched: bool = True) -> dict:
    """llama.cpp's perplexity method: chunks of `ctx` tokens, score the second half of each.

    With `reference`, fidelity too: the reference run writes its token ids and next-token log-probs;
    every other variant reads them, scores the *same* token ids, and reports mean KL divergence
    (reference || variant) and top-1 agreement, as llama.cpp's KL-divergence mode does. Perplexity, KL and
    top-1 come from one pass: each chunk's second half is scored once (several chunks per runtime call where
    the session batches), and its log-softmax serves all three.
    """
    ref_dir = Path(reference["dir"]) if reference else None
    writing = bool(reference and reference["write"])
    if ref_dir and not writing:
        tokens = np.load(ref_dir / "tokens.npy").tolist()
    available = len(tokens) // ctx
    if available < 1:
        raise ValueError(f"corpus has {len(tokens)} tokens, fewer than one chunk of {ctx}")
    n_chunks = min(chunks, available)
    first = ctx // 2
    windows = []
    for i in range(n_chunks):
        chunk = list(tokens[i * ctx:(i + 1) * ctx])
        if session.add_bos and session.bos is not None:
            chunk[0] = session.bos
        windows.append((chunk[:first], chunk[first:]))
    nll, kl, agree = [], [], []
    for i, (logits, (_, target)) in enumerate(zip(window_logits(session, windows, batched), windows, strict=True)):
        logp = log_softmax(logits)
        nll.append(-logp[np.arange(len(target)), target])
        if writing:
            np.save(ref_dir / f"logp-{i}.npy", logp.astype(np.float16))
        elif ref_dir:
            ref = np.load(ref_dir / f"logp-{i}.npy").astype(np.float64)
            kl.append((np.exp(ref) * (ref - logp)).sum(axis=1))
            agree.append(ref.argmax(axis=1) == logp.argmax(axis=1))
    if writing:
        np.save(ref_dir / "tokens.npy", np.asarray(tokens[: n_chunks * ctx], dtype=np.int32))
    values = np.concatenate(nll)
    out = {
        "chunks": n_chunks,
        "tokens_scored": int(values.size),
        "perplexity": float(np.exp(values.mean())),
        "nll_stderr": float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0,
    }
    if kl:
        kls = np.concatenate(kl)
        out |= {"kl_mean": float(kls.mean()), "kl_p99": float(np.percentile(kls, 99)),
                "top1_agreement": float(np.concatenate(agree).mean())}
    return out
