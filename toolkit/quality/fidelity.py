"""Scoring token windows: the one pass that perplexity, bits per byte, KL divergence, top-1 agreement and
lm-eval's rolling log-likelihood all read. Only numpy here: the fidelity worker of an ONNX variant loads neither
torch nor lm-eval.

A window is (context, target): the log-probabilities of `target`'s tokens given everything before them. Sessions
with `score_many` (llama.cpp, onnxruntime) score many windows per runtime call and compute logits only where a
target token is predicted; any other session falls back to `logits()` on each window.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

LOGIT_BYTES = 256 * 2**20  # float32 logits held at once between the runtime and the reduction


def max_rows(session) -> int:
    """Logit rows that fit LOGIT_BYTES for this session's vocabulary (1,365 for a 49k vocabulary)."""
    return max(1, LOGIT_BYTES // (4 * int(session.n_vocab)))


def log_normaliser(logits: np.ndarray) -> np.ndarray:
    """Per row, log(sum(exp(x))) in float64: the exponentials in float32 (numpy's SIMD path, 15x faster than
    float64 on a 262k vocabulary), their sum and the log in float64. Shared by `log_softmax` and
    `target_logprobs`, so both give the same numbers."""
    x = np.asarray(logits, dtype=np.float32)
    peak = x.max(axis=-1, keepdims=True)
    shifted = np.subtract(x, peak)
    np.exp(shifted, out=shifted)
    return np.log(shifted.sum(axis=-1, dtype=np.float64)) + peak[..., 0].astype(np.float64)


def log_softmax(logits: np.ndarray, norm: np.ndarray | None = None) -> np.ndarray:
    """Log-probabilities, float32 (what KL and top-1 read; per-token NLL comes from `target_logprobs`).
    `norm`: the rows' `log_normaliser`, when already computed."""
    x = np.asarray(logits, dtype=np.float32)
    return x - (log_normaliser(x) if norm is None else norm)[..., None].astype(np.float32)


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


def score_groups(session, groups: list[tuple[list[int], list[list[int]]]], batched: bool = True,
                 windows: bool = False) -> list[list[np.ndarray]]:
    """Per (context, continuations) group, per continuation, the logits predicting each of its tokens.
    `windows`: the groups are long text windows, scored in the session's layout for them where it has one
    (llama.cpp's `score_windows`), batched or one at a time."""
    if windows and hasattr(session, "score_windows"):
        return session.score_windows(groups) if batched else [session.score_windows([g])[0] for g in groups]
    if batched and hasattr(session, "score_many"):
        return session.score_many(groups)
    if hasattr(session, "score"):
        return [session.score(context, conts) for context, conts in groups]
    return [[session.logits(list(context) + list(cont))[len(context) - 1:len(context) - 1 + len(cont)] for cont in conts]
            for context, conts in groups]


def window_logits(session, windows: list[tuple[list[int], list[int]]], batched: bool = True) -> Iterator[np.ndarray]:
    """For each (context, target) window in order, the logits predicting `target` (len(target) x n_vocab)."""
    for part in slices(windows, lambda w: len(w[1]), max_rows(session)):
        for rows in score_groups(session, [(context, [target]) for context, target in part], batched, windows=True):
            yield rows[0]


def target_logprobs(logits: np.ndarray, target: list[int], norm: np.ndarray | None = None) -> np.ndarray:
    """log p(target[i]) from the logits predicting it, float64. `norm`: as for `log_softmax`."""
    rows = np.arange(len(target))
    return logits[rows, target].astype(np.float64) - (log_normaliser(logits) if norm is None else norm)


BLOCK_ELEMENTS = 1 << 22  # logits per block of rows in `window_figures` (16 MiB of float32): cache-sized passes


@dataclass
class WindowFigures:
    nll: np.ndarray  # per target token, float64
    logp16: np.ndarray | None = None  # the log-probabilities as the reference stores them (float16)
    kl: np.ndarray | None = None  # KL(reference || this) per token, float64
    agree: np.ndarray | None = None  # top-1 agreement with the reference per token


def window_figures(logits: np.ndarray, target: list[int], ref: np.ndarray | None = None) -> WindowFigures:
    """Every per-token figure of one window from one normaliser per row, in blocks of rows: the numbers of
    `target_logprobs`, `log_softmax` and the KL/top-1 formulas exactly (each row's arithmetic is unchanged),
    without whole-window temporaries (a Gemma window's are 256 x 262k floats each). `ref`: the reference's
    float16 log-probabilities for these rows (None: return this window's, to be stored as the reference)."""
    rows, vocab = logits.shape
    step = max(1, BLOCK_ELEMENTS // vocab)
    out = WindowFigures(nll=np.empty(rows), logp16=np.empty((rows, vocab), np.float16) if ref is None else None,
                        kl=np.empty(rows) if ref is not None else None, agree=np.empty(rows, bool) if ref is not None else None)
    for start in range(0, rows, step):
        block = slice(start, min(start + step, rows))
        x = np.asarray(logits[block], dtype=np.float32)
        norm = log_normaliser(x)
        out.nll[block] = -target_logprobs(x, target[block], norm)
        logp = log_softmax(x, norm)
        if ref is None:
            out.logp16[block] = logp
            continue
        r = np.asarray(ref[block], dtype=np.float32)
        out.agree[block] = r.argmax(axis=1) == logp.argmax(axis=1)
        np.subtract(r, logp, out=logp)
        np.exp(r, out=r)
        np.multiply(r, logp, out=logp)
        out.kl[block] = logp.sum(axis=1, dtype=np.float64)
    return out


def rolling_loglikelihood(session, windows: list[tuple[list[int], list[int]]], batched: bool = True) -> list[float]:
    """Sum of log p(target) over each window (lm-eval's rolling windows of one text, or of many)."""
    return [float(target_logprobs(logits, target).sum())
            for logits, (_, target) in zip(window_logits(session, windows, batched), windows, strict=True)]


PASSAGE_BYTES_PER_CTX = 2  # a passage holds ctx * 2 bytes of text: about ctx / 2 tokens of English BPE


def passages(text: str, ctx: int, count: int) -> list[str]:
    """The first `count` passages of whole lines, each at least ctx * 2 bytes: the same text for every tokenizer,
    so that bits per byte compare across models."""
    out, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        current.append(line)
        size += len(line.encode())
        if size >= ctx * PASSAGE_BYTES_PER_CTX:
            out.append("".join(current))
            current, size = [], 0
            if len(out) == count:
                break
    return out


def text_windows(session, text: str, ctx: int, chunks: int) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """Scoring windows over `chunks` pairs of passages: the second passage of each pair given the first, in
    pieces of at most ctx / 2 tokens, each with as much preceding text as fits in ctx tokens. Returns the
    windows and, per window, the UTF-8 bytes its target tokens cover (the whole second passage per pair)."""
    found = passages(text, ctx, 2 * chunks)
    if len(found) < 2:
        raise ValueError(f"corpus has fewer than two passages of {ctx * PASSAGE_BYTES_PER_CTX} bytes")
    windows, sizes = [], []
    bos = [session.bos] if session.add_bos and session.bos is not None else []
    pairs, piece = len(found) // 2, max(1, ctx // 2)
    for first, second in zip(found[0:2 * pairs:2], found[1:2 * pairs:2], strict=True):
        context = bos + session.tokenize(first)
        joint = bos + session.tokenize(first + second)
        cut = _common_prefix(context, joint)  # a tokenizer may merge across the line break: score from there
        for start in range(cut, len(joint), piece):
            end = min(start + piece, len(joint))
            windows.append((joint[max(0, end - ctx):start], joint[start:end]))
            sizes.append(0)
        exact = cut == len(context)  # else the bytes of the tokens scored, as the tokenizer spells them
        sizes[-1] = len(second.encode()) if exact else len(session.detokenize(joint[cut:]).encode())
    return windows, sizes


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return max(n, 1)


# The least one row's KL can read: the reference's log-probabilities are stored as float16, off by at most 2^-8
# wherever they carry mass, so a row reads >= -0.004 (the closest variant measured: +5e-6); -0.01 leaves room.
KL_FLOOR = -0.01
DIGITS = {"perplexity": 4, "bits_per_byte": 5, "kl": 6}  # as records.Quality keeps each figure (pipeline/fidelity.py)


def perplexity(session, text: str, ctx: int, chunks: int, reference: dict | None = None, batched: bool = True,
               stop_over: dict[str, float] | None = None) -> dict:
    """Perplexity and bits per byte on the same text for every model, and fidelity to a reference.

    The text is cut into passages of whole lines (`text_windows`); each pair's second passage is scored given
    the first. Perplexity is per token of the model's own tokenizer; bits per byte divides the same
    log-likelihood by the text's UTF-8 bytes, which compares across tokenizers (lm-eval's `bits_per_byte`).
    With `reference`, fidelity too: the reference run writes its windows and next-token log-probs; every other
    variant of the model reads them, scores the *same* token ids, and reports mean KL divergence
    (reference || variant) and top-1 agreement, as llama.cpp's KL-divergence mode does. All of it comes from
    one pass: each window's log-softmax serves every figure.

    `stop_over` ({"kl" | "perplexity" | "bits_per_byte": limit}): stop after a pair of passages once a figure
    over the whole text is sure to exceed its limit whatever the unscored pairs hold (per-token NLL is >= 0 and
    KL >= KL_FLOOR), and return the figures so far with `lower_bounds`, the least each can be over the whole
    text. The reference itself never stops: every other variant reads its logits.
    """
    ref_dir = Path(reference["dir"]) if reference else None
    writing = bool(reference and reference["write"])
    if ref_dir and not writing:
        stored = np.load(ref_dir / "windows.npz")
        n = len(stored["sizes"])
        windows = [(stored[f"c{i}"].tolist(), stored[f"t{i}"].tolist()) for i in range(n)]
        sizes = stored["sizes"].tolist()
    else:
        windows, sizes = text_windows(session, text, ctx, chunks)
    stop_over = None if writing else stop_over
    nll, kl, agree, bounds, i = [], [], [], None, 0
    for pair in _pairs(sizes) if stop_over else [range(len(windows))]:
        part = [windows[j] for j in pair]
        for logits, (_, target) in zip(window_logits(session, part, batched), part, strict=True):
            nll.append(_window(logits, target, ref_dir, writing, i, kl, agree))
            i += 1
        if stop_over and i < len(windows) and (bounds := _over(windows, sizes, nll, kl, stop_over)):
            break
    if writing:  # last, so that its presence means the logits are all there
        arrays = {f"c{i}": np.asarray(c, np.int32) for i, (c, _) in enumerate(windows)}
        arrays |= {f"t{i}": np.asarray(t, np.int32) for i, (_, t) in enumerate(windows)}
        np.savez(ref_dir / "windows.npz", sizes=np.asarray(sizes, np.int64), **arrays)
    return _figures(nll, kl, agree, sizes[:i]) | ({"lower_bounds": bounds} if bounds else {})


def _window(logits: np.ndarray, target: list[int], ref_dir: Path | None, writing: bool, i: int, kl: list,
            agree: list) -> np.ndarray:
    """Window `i`'s per-token NLL; its KL and top-1 agreement appended to `kl` and `agree`, or its
    log-probabilities stored when this is the reference."""
    if not ref_dir:
        return -target_logprobs(logits, target)
    path = ref_dir / f"logp-{i}.npy"
    figures = window_figures(logits, target, None if writing else np.load(path, mmap_mode="r"))
    if writing:
        np.save(path, figures.logp16)
    else:
        kl.append(figures.kl)
        agree.append(figures.agree)
    return figures.nll


def _pairs(sizes: list[int]) -> list[range]:
    """The windows of each pair of passages (a pair's last window carries its bytes)."""
    ends = [i + 1 for i, size in enumerate(sizes) if size]
    return [range(start, end) for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def _over(windows: list, sizes: list[int], nll: list, kl: list, stop_over: dict[str, float]) -> dict[str, float] | None:
    """The least perplexity, bits per byte and KL the whole text can give after the windows scored so far, when
    one of them is already over its limit in `stop_over`. Rounded as stored: the whole text's figure, rounded
    the same way, is at least as large, so a bound over a limit means a stored figure over it."""
    rows = sum(len(t) for _, t in windows)
    nll_sum = float(sum(v.sum() for v in nll))
    bounds = {"perplexity": float(np.exp(nll_sum / rows)), "bits_per_byte": float(nll_sum / np.log(2) / sum(sizes))}
    if kl:
        left = rows - sum(v.size for v in kl)
        bounds["kl"] = (float(sum(v.sum() for v in kl)) + KL_FLOOR * left) / rows
    bounds = {k: round(v, DIGITS[k]) for k, v in bounds.items()}
    return bounds if any(bounds.get(m, -np.inf) > limit for m, limit in stop_over.items()) else None


def _figures(nll: list, kl: list, agree: list, sizes: list[int]) -> dict:
    values = np.concatenate(nll)
    out = {
        "chunks": sum(1 for s in sizes if s),
        "tokens_scored": int(values.size),
        "bytes_scored": int(sum(sizes)),
        "perplexity": float(np.exp(values.mean())),
        "bits_per_byte": float(values.sum() / np.log(2) / sum(sizes)),
        "nll_stderr": float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0,
    }
    if kl:
        kls = np.concatenate(kl)
        out |= {"kl_mean": float(kls.mean()), "kl_p99": float(np.percentile(kls, 99)),
                "top1_agreement": float(np.concatenate(agree).mean())}
    return out
