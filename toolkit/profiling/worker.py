"""Child process: load one variant in its runtime and measure it. `python -m ... JOB.json OUT.json`.

Runs alone in its process so that a crash, an out-of-memory or a hang is that variant's result.

Memory, two figures:
- `peak_rss_mb`: the whole worker's peak resident memory (VmHWM): interpreter, the toolkit's own imports,
  runtime, model, KV cache and the measurement's buffers.
- `deploy_rss_mb`: the peak of a process that holds only the runtime and the model, i.e. what deploying the
  variant costs: `runtime_rss_mb` (a fresh interpreter that has imported only the runtime's libraries, the
  runtime module's IMPORTS) + (`peak_rss_mb` - `baseline_rss_mb`), where `baseline_rss_mb` is this worker's
  resident memory once those same libraries are imported, just before the model loads.
Both are taken with glibc's malloc thresholds pinned (see `pin_malloc`), so they repeat run to run.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from toolkit.profiling.meters import Choice, choose
from toolkit.profiling.meters.sampler import DEFAULT_HZ, IDLE_S, Recorder


def run_job(job: dict) -> dict:
    if job["kind"] == "lm_eval":
        return lm_eval_job(job)
    runtime = importlib.import_module(job["runtime_module"])
    if job["kind"] == "profile" and job.get("profiler") == "module":  # the runtime measures itself
        if job.get("llama_cpp_bin"):
            os.environ["EDGEFIRST_LLAMA_CPP_BIN"] = job["llama_cpp_bin"]
        return with_energy(job, lambda energy: runtime.profile(job, energy))
    for module in runtime.IMPORTS:
        importlib.import_module(module)
    baseline = rss_mb()
    n_ctx = job["n_ctx"]
    start = time.perf_counter()
    session = runtime.open_session(job["path"], job["threads"], n_ctx, job["n_batch"])
    load_ms = (time.perf_counter() - start) * 1000
    text = Path(job["corpus"]).read_text(encoding="utf-8")
    try:
        if job["kind"] == "profile":
            result = profile(session, session.tokenize(text), job)
        else:
            result = perplexity(session, text, job["ctx"], job["chunks"], job.get("reference"), job.get("stop_over"))
    finally:
        session.close()
    result["load_ms"] = load_ms
    if job["kind"] == "profile" and baseline is not None:
        result |= {"baseline_rss_mb": baseline, "runtime_rss_mb": runtime_only_rss_mb(runtime.IMPORTS)}
    return result


def _counters(session) -> dict | None:
    return session.perf()


def _energy_setting(job: dict, key: str, default: str) -> str:
    """An energy setting from the job, else from EDGEFIRST_<KEY> in the environment, else the default."""
    value = job.get(key)
    return str(value) if value is not None else os.environ.get("EDGEFIRST_" + key.upper(), default)


def profile(session, tokens: list[int], job: dict) -> dict:
    lengths = job["prompt_lengths"]
    if len(tokens) < max(lengths):
        raise ValueError(f"corpus has {len(tokens)} tokens, fewer than the longest prompt {max(lengths)}")
    return with_energy(job, lambda energy: timed_runs(session, tokens, job, energy))


def with_energy(job: dict, measure: Callable[[Recorder], dict]) -> dict:
    """Run `measure` with the energy recorder going (idle first), and add the energy figures."""
    choice = choose(_energy_setting(job, "energy_meter", "auto"), job.get("power"))
    with Recorder(choice.meter, float(_energy_setting(job, "energy_hz", str(DEFAULT_HZ)))) as energy:
        energy.idle(float(_energy_setting(job, "energy_idle_s", str(IDLE_S))))
        result = measure(energy)
    return result | energy_figures(energy, choice)


def energy_figures(energy: Recorder, choice: Choice) -> dict:
    """`energy`: the source, idle power and every window's joules; `rapl_watts`: RAPL package watts per window,
    as reports written before `energy` hold them."""
    figures = energy.result(choice.unused(), choice.label)
    rapl_watts = []
    if choice.meter is not None and choice.meter.name == "rapl":
        for w in energy.windows:
            if (parts := energy.parts_j(w)) is not None:
                rapl_watts.append(sum(v for k, v in parts.items() if k.startswith("package")) / (w.end.t - w.start.t))
    return {"energy": figures, "rapl_watts": rapl_watts}


def timed_runs(session, tokens: list[int], job: dict, energy: Recorder) -> dict:
    """`repeats` timed prefills of each prompt length, and `repeats` decodes of `decode_tokens` after a prompt of
    the longest length: the deepest context profiled, where a budget's response (its prompt is one of the
    lengths) decodes no slower, and the shape certification re-measures. The prefills before the decodes are that
    length's timed prefills: the same call on a fresh cache, not run twice."""
    lengths, n_decode = job["prompt_lengths"], job["decode_tokens"]
    deepest = max(lengths)
    for _ in range(job["warmup"]):
        first = session.prefill(tokens[: lengths[0]])
        for _ in range(min(8, n_decode)):
            first = session.decode(first)
    prompts = {length: {"prompt_tokens": length, "ttft_ms": [], "runtime_prefill_tps": []} for length in lengths}
    for length in [n for n in lengths if n != deepest]:
        for _ in range(job["repeats"]):
            timed_prefill(session, tokens[:length], energy, prompts[length])
    decode_tps, itl, runtime_decode = [], [], []
    for _ in range(job["repeats"]):
        token = timed_prefill(session, tokens[:deepest], energy, prompts[deepest])
        session.reset_perf()
        steps = []
        start = energy.mark()
        for _ in range(n_decode):
            t0 = time.perf_counter()
            token = session.decode(token)
            steps.append((time.perf_counter() - t0) * 1000)
        energy.window("decode", n_decode, start, energy.mark())
        itl.extend(steps)
        decode_tps.append(n_decode / (sum(steps) / 1000))
        perf = _counters(session)
        if perf and perf["decode_ms"] > 0:
            runtime_decode.append(perf["decode_tokens"] / perf["decode_ms"] * 1000)
    return {
        "prompts": list(prompts.values()),
        "decode_tps": decode_tps,
        "itl_ms": itl,
        "runtime_decode_tps": runtime_decode,
        "decode_context": deepest,
    }


def timed_prefill(session, prompt: list[int], energy: Recorder, into: dict) -> int:
    """One prefill on a fresh cache: its time to first token and runtime-counted speed added to `into`."""
    session.reset_perf()
    start = energy.mark()
    t0 = time.perf_counter()
    token = session.prefill(prompt)
    into["ttft_ms"].append((time.perf_counter() - t0) * 1000)
    energy.window("prefill", len(prompt), start, energy.mark())
    perf = _counters(session)
    if perf and perf["prefill_ms"] > 0:
        into["runtime_prefill_tps"].append(perf["prefill_tokens"] / perf["prefill_ms"] * 1000)
    return token


def perplexity(session, text: str, ctx: int, chunks: int, reference: dict | None = None,
               stop_over: dict[str, float] | None = None) -> dict:
    """Perplexity, bits per byte, KL divergence and top-1 agreement in one pass (`toolkit.quality.fidelity`)."""
    from toolkit.quality.fidelity import perplexity as score_fidelity

    return score_fidelity(session, text, ctx, chunks, reference, stop_over=stop_over)


def lm_eval_job(job: dict) -> dict:
    """Score one variant on its lm-eval tasks, through the variant's own runtime, with one model load."""
    import os

    if not job["stock_tasks"]:  # offline tasks read local files: no hub calls; a stock task may fetch its data
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    # lm-eval's whole task index takes 9-17 s to build: only the tasks' own folders, where they suffice
    manager = TaskManager(include_path=job["task_dirs"] or None, include_defaults=job["all_stock"])
    runtime = importlib.import_module(job["runtime_module"])
    start = time.perf_counter()
    if job["backend"] == "hflm":  # PyTorch: lm-eval's own HF class (fp32 reference, GPTQ)
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
    seeds = {}
    if job["backend"] == "session":  # no PyTorch in the scoring: neither its seed nor its environment report
        import lm_eval.evaluator  # (torch's collect_env: 2 s of subprocesses for a field nothing reads)

        lm_eval.evaluator.add_env_info = lambda results: None
        seeds["torch_random_seed"] = None
    results = lm_eval.simple_evaluate(model=lm, tasks=job["tasks"], limit=job["limit"], task_manager=manager,
                                      log_samples=True, **seeds)  # each item's score: noise.py's paired bootstrap
    return {"tasks": {task: _task_score(results, task, metric) for task, metric in zip(job["tasks"], job["metrics"], strict=True)},
            "load_s": load_s, "lm_eval_version": lm_eval.__version__}


def _task_score(results: dict, task: str, metric: str) -> dict:
    scores = results["results"][task]
    metric_key = next(k for k in scores if k.startswith(metric + ",") and "stderr" not in k)
    stderr = scores.get(metric_key.replace(",", "_stderr,", 1))
    n = results.get("n-samples", {}).get(task, {}).get("effective")
    name, filter_name = metric_key.split(",", 1)
    samples = sorted((s for s in results.get("samples", {}).get(task, []) if s.get("filter") == filter_name),
                     key=lambda s: s["doc_id"])
    items = [float(s[name]) for s in samples] if all(isinstance(s.get(name), int | float) for s in samples) else []
    return {"metric": name, "filter": filter_name, "value": float(scores[metric_key]), "items": items,
            "stderr": float(stderr) if isinstance(stderr, int | float) else None, "n": int(n) if n is not None else None}


M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 128 * 1024  # glibc's default starting value
# The probe: a fresh interpreter importing only the given modules prints its resident memory in kB.
_PROBE = (
    "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
    "print(next(ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmRSS:')))"
)


def pin_malloc() -> None:
    """Fix glibc's mmap threshold at its 128 KiB default, so every large buffer is mmap'ed and returned to the
    system when freed. Left adaptive, glibc raises the threshold (up to 32 MiB) when a large block is freed;
    later load-time buffers (onnxruntime's initializers, 0.1-32 MiB each) then land in the heap or not depending
    on the order in which threads allocate and free them, and freed heap memory stays resident: one ONNX fp32
    variant peaked at 922 or 1,175 MB in fresh processes (918 MB every time once pinned), at no measurable cost
    in speed. A deployment gets the same behaviour with MALLOC_MMAP_THRESHOLD_=131072."""
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not glibc
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float | None:
    """This process's resident memory now (VmRSS), where /proc is readable."""
    return _status_mb("VmRSS")


def runtime_only_rss_mb(modules: tuple[str, ...]) -> float | None:
    """Resident memory of a fresh interpreter that has imported only `modules` (malloc pinned the same way)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)}
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, *modules], capture_output=True, text=True, env=env, timeout=300, check=True)
        return int(out.stdout.split()[-1]) / 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def peak_rss_mb() -> float:
    """This process's peak resident memory since exec (VmHWM); ru_maxrss would include the parent's
    image copied at fork, which Linux keeps across exec."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def deploy_rss_mb(result: dict, peak: float) -> float | None:
    """The peak of a process holding only the runtime and the model (see the module docstring)."""
    baseline, runtime = result.get("baseline_rss_mb"), result.get("runtime_rss_mb")
    return round(runtime + peak - baseline, 1) if baseline is not None and runtime is not None else None


def main(job_path: str, out_path: str) -> int:
    pin_malloc()
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
    if "peak_rss_mb" not in result:  # a runtime that measures itself reports its own process's peak
        result["peak_rss_mb"] = peak = peak_rss_mb()
        if (deploy := deploy_rss_mb(result, peak)) is not None:
            result["deploy_rss_mb"] = deploy
    tmp = Path(out_path + ".part")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    tmp.replace(out_path)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
