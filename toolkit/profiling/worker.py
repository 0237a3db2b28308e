"""Child process: load one variant in its runtime and measure it. `python -m ... JOB.json OUT.json`.

Runs alone in its process so that a crash, an out-of-memory or a hang is that variant's result.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from toolkit.profiling.energy import RaplMeter


def run_job(job: dict) -> dict:
    runtime = importlib.import_module(job["runtime_module"])
    n_ctx = job["n_ctx"]
    start = time.perf_counter()
    session = runtime.open_session(job["path"], job["threads"], n_ctx, job["n_batch"])
    load_ms = (time.perf_counter() - start) * 1000
    text = Path(job["corpus"]).read_text(encoding="utf-8")
    tokens = session.tokenize(text)
    try:
        if job["kind"] == "profile":
            result = profile(session, tokens, job)
        else:
            result = perplexity(session, tokens, job["ctx"], job["chunks"])
    finally:
        session.close()
    result["load_ms"] = load_ms
    return result


def _counters(session) -> dict | None:
    return session.perf() if hasattr(session, "perf") else None


def profile(session, tokens: list[int], job: dict) -> dict:
    lengths, n_decode = job["prompt_lengths"], job["decode_tokens"]
    meter = RaplMeter.open()
    watts: list[float] = []
    if len(tokens) < max(lengths):
        raise ValueError(f"corpus has {len(tokens)} tokens, fewer than the longest prompt {max(lengths)}")
    for _ in range(job["warmup"]):
        first = session.prefill(tokens[: lengths[0]])
        for _ in range(min(8, n_decode)):
            first = session.decode(first)
    prompts = []
    for length in lengths:
        ttft, runtime_tps = [], []
        for _ in range(job["repeats"]):
            session.reset_perf()
            j0 = meter.joules() if meter else 0.0
            t0 = time.perf_counter()
            session.prefill(tokens[:length])
            ttft.append((time.perf_counter() - t0) * 1000)
            if meter:
                watts.append((meter.joules() - j0) / (ttft[-1] / 1000))
            perf = _counters(session)
            if perf and perf["prefill_ms"] > 0:
                runtime_tps.append(perf["prefill_tokens"] / perf["prefill_ms"] * 1000)
        prompts.append({"prompt_tokens": length, "ttft_ms": ttft, "runtime_prefill_tps": runtime_tps})
    decode_tps, itl, runtime_decode = [], [], []
    for _ in range(job["repeats"]):
        token = session.prefill(tokens[: lengths[0]])
        session.reset_perf()
        steps = []
        j0 = meter.joules() if meter else 0.0
        for _ in range(n_decode):
            t0 = time.perf_counter()
            token = session.decode(token)
            steps.append((time.perf_counter() - t0) * 1000)
        if meter:
            watts.append((meter.joules() - j0) / (sum(steps) / 1000))
        itl.extend(steps)
        decode_tps.append(n_decode / (sum(steps) / 1000))
        perf = _counters(session)
        if perf and perf["decode_ms"] > 0:
            runtime_decode.append(perf["decode_tokens"] / perf["decode_ms"] * 1000)
    return {
        "prompts": prompts,
        "decode_tps": decode_tps,
        "itl_ms": itl,
        "runtime_decode_tps": runtime_decode,
        "decode_context": lengths[0],
        "rapl_watts": watts,
    }


def log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of `targets` under each row of `logits`, in float64."""
    x = logits.astype(np.float64)
    peak = x.max(axis=1, keepdims=True)
    lse = np.log(np.exp(x - peak).sum(axis=1)) + peak[:, 0]
    return lse - x[np.arange(len(targets)), targets]


def perplexity(session, tokens: list[int], ctx: int, chunks: int) -> dict:
    """llama.cpp's perplexity method: chunks of `ctx` tokens, score the second half of each."""
    available = len(tokens) // ctx
    if available < 1:
        raise ValueError(f"corpus has {len(tokens)} tokens, fewer than one chunk of {ctx}")
    nll = []
    for i in range(min(chunks, available)):
        chunk = list(tokens[i * ctx:(i + 1) * ctx])
        if session.add_bos and session.bos is not None:
            chunk[0] = session.bos
        logits = session.logits(chunk)
        first = ctx // 2
        nll.append(log_softmax_nll(logits[first - 1:ctx - 1], np.asarray(chunk[first:ctx])))
    values = np.concatenate(nll)
    return {
        "chunks": min(chunks, available),
        "tokens_scored": int(values.size),
        "perplexity": float(np.exp(values.mean())),
        "nll_stderr": float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0,
    }


def main(job_path: str, out_path: str) -> int:
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    try:
        result = {"ok": True, **run_job(job)}
        code = 0
    except MemoryError:
        result, code = {"ok": False, "status": "oom", "reason": "MemoryError in the runtime"}, 3
    except Exception as exc:  # noqa: BLE001 - the parent records any failure as this variant's result
        reason = exc.one_line() if hasattr(exc, "one_line") else f"{type(exc).__name__}: {exc}"
        result, code = {"ok": False, "status": "crash", "reason": reason}, 2
        traceback.print_exc()
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tmp = Path(out_path + ".part")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    tmp.replace(out_path)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
