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
    if job["kind"] == "lm_eval":
        return lm_eval_job(job)
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
            result = perplexity(session, tokens, job["ctx"], job["chunks"], job.get("reference"))
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


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    peak = x.max(axis=1, keepdims=True)
    return x - (np.log(np.exp(x - peak).sum(axis=1, keepdims=True)) + peak)


def perplexity(session, tokens: list[int], ctx: int, chunks: int, reference: dict | None = None) -> dict:
    """llama.cpp's perplexity method: chunks of `ctx` tokens, score the second half of each.

    With `reference`, fidelity too: the reference run writes its token ids and next-token log-probs;
    every other variant reads them, scores the *same* token ids, and reports mean KL divergence
    (reference || variant) and top-1 agreement, as llama.cpp's KL-divergence mode does.
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
    nll, kl, agree = [], [], []
    for i in range(n_chunks):
        chunk = list(tokens[i * ctx:(i + 1) * ctx])
        if session.add_bos and session.bos is not None:
            chunk[0] = session.bos
        logp = log_softmax(session.logits(chunk)[first - 1:ctx - 1])
        nll.append(-logp[np.arange(ctx - first), chunk[first:ctx]])
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


def lm_eval_job(job: dict) -> dict:
    """Score one variant on one lm-eval task, through the variant's own runtime."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    task, limit = job["task"], job["limit"]
    manager = TaskManager(include_path=job["task_dir"]) if job["task_dir"] else TaskManager()
    runtime = importlib.import_module(job["runtime_module"])
    start = time.perf_counter()
    if hasattr(runtime, "load_model"):  # PyTorch: lm-eval's own HF class (fp32 reference, GPTQ)
        from lm_eval.models.huggingface import HFLM
        from transformers import AutoTokenizer

        model = runtime.load_model(Path(job["path"]), job["threads"])
        tokenizer = AutoTokenizer.from_pretrained(job["path"])
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=job["batch_size"], max_length=job["max_length"], device="cpu")
    else:
        from toolkit.evaluation.lm_adapter import SessionLM

        session = runtime.open_session(job["path"], job["threads"], job["max_length"], job["max_length"])
        lm = SessionLM(session, job["max_length"])
    load_s = time.perf_counter() - start
    results = lm_eval.simple_evaluate(model=lm, tasks=[task], limit=limit, task_manager=manager, log_samples=False)
    scores = results["results"][task]
    metric_key = next(k for k in scores if k.startswith(job["metric"] + ",") and "stderr" not in k)
    stderr = scores.get(metric_key.replace(",", "_stderr,", 1))
    n = results.get("n-samples", {}).get(task, {}).get("effective")
    return {
        "metric": metric_key.split(",")[0],
        "filter": metric_key.split(",")[1],
        "value": float(scores[metric_key]),
        "stderr": float(stderr) if isinstance(stderr, int | float) else None,
        "n": int(n) if n is not None else None,
        "load_s": load_s,
        "lm_eval_version": lm_eval.__version__,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory since exec (VmHWM); ru_maxrss would include the parent's
    image copied at fork, which Linux keeps across exec."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
    result["peak_rss_mb"] = peak_rss_mb()
    tmp = Path(out_path + ".part")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    tmp.replace(out_path)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
