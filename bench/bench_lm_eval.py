"""Benchmark: lm-eval loglikelihood requests/s through the toolkit's adapters against lm-eval's HF fp32 backend,
on the same items, in one run.

Goals: the llama.cpp adapter (GGUF F16) >= 3x the HF fp32 backend; the onnxruntime adapter (ONNX fp32) batched
>= 1.5x its unbatched self; the llama.cpp adapter's overhead over raw llama.cpp scoring of the same groups < 10%.

    .venv/bin/python bench/bench_lm_eval.py [--items 40] [--threads N] [--workspace .edgefirst/bench-lm-eval]

Items: the first N items of each demo task (mmlu_offline: 4 one-token choices per question; social_iqa_bb: 3
multi-token answers), as lm-eval's multiple-choice tasks build them. Models: the demo recipe's SmolLM2-135M
candidate as GGUF F16 and ONNX fp32 and the HF reference they come from (dequantized from the 4-bit Q4_1 file on
PyPI), built once into the workspace. Every backend scores a few requests untimed first (page-in, allocation,
the onnxruntime adapter's scoring graph), then all of them `--repeats` times; the best time counts (other
processes on a 2-core machine only ever slow a run down).

The ceiling line bounds what any backend multiplying in fp32 could do on this machine: the least work the items
need (each distinct context once, only the continuations' logit rows) at the measured fp32 matmul peak, over HF.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MAX_LENGTH = 1024
WARMUP = 8


def build(recipe_path: Path, workspace: Path) -> tuple[Path, Path, Path]:
    """The F16 GGUF, the fp32 ONNX folder and the HF reference, from the demo recipe (cached in `workspace`)."""
    from toolkit import pipeline
    from toolkit.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    variants = recipe.variants
    keep = {name: None for name in type(variants).model_fields}
    keep["gguf"] = variants.gguf.model_copy(update={"quants": ["F16"], "keep_source": False})
    keep["onnx"] = variants.onnx.model_copy(update={"precisions": ["fp32"]})
    recipe = recipe.model_copy(update={"variants": variants.model_copy(update=keep), "workspace": str(workspace)})
    manifest = pipeline.compress(recipe)
    gguf = next(Path(v.path) for v in manifest.variants if v.format == "gguf")
    onnx = next(Path(v.path) for v in manifest.variants if v.format == "onnx")
    reference = next(p for p in (recipe.workspace_dir() / "reference").iterdir() if (p / "config.json").exists())
    return gguf, onnx, reference


def items(task: str, n: int):
    from lm_eval.api.instance import Instance

    from toolkit.tasks import prepare

    rows = [json.loads(line) for line in (prepare(task) / f"{task}.jsonl").read_text().splitlines()[:n]]
    requests = []
    for r in rows:
        if task == "mmlu_offline":
            context = "{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:".format(r["question"], *r["choices"])
            choices = list("ABCD")
        else:
            context, choices = f"{r['question']}\nAnswer:", r["choices"]
        requests += [Instance("loglikelihood", {}, (context, f" {c}"), i) for i, c in enumerate(choices)]
    return requests


def timed(score, requests, repeats: int) -> tuple[float, list]:
    score(requests[:WARMUP])
    best, out = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        out = score(requests)
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    import numpy as np
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.evaluation.lm_adapter import SessionLM, log_softmax
    from toolkit.profiling.device import usable_cpus
    from toolkit.runtimes import llamacpp, onnxrt

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40, help="items per task")
    parser.add_argument("--threads", type=int, default=usable_cpus())
    parser.add_argument("--recipe", type=Path, default=Path("recipes/smollm2-formats.yaml"))
    parser.add_argument("--workspace", type=Path, default=Path(".edgefirst/bench-lm-eval"))
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per backend (the best counts)")
    args = parser.parse_args()
    gguf_path, onnx_path, ref = build(args.recipe, args.workspace)
    tasks = {task: items(task, args.items) for task in ("mmlu_offline", "social_iqa_bb")}
    requests = [r for reqs in tasks.values() for r in reqs]
    seconds: dict[str, float] = {}
    results: dict[str, list] = {}

    def run(name, score):
        seconds[name], results[name] = timed(score, requests, args.repeats)

    session = llamacpp.open_session(str(gguf_path), args.threads, MAX_LENGTH, MAX_LENGTH)
    gguf = SessionLM(session, MAX_LENGTH)
    run("llama.cpp adapter", gguf.loglikelihood)
    run("llama.cpp unbatched", SessionLM(session, MAX_LENGTH, batched=False).loglikelihood)

    # raw llama.cpp on exactly the groups the adapter scores (each context once with its continuations), from
    # tokens prepared beforehand
    pairs = {id(req): gguf._encode_pair(*req.args) for req in requests}

    def raw(reqs):
        groups: dict[tuple[int, ...], list[list[int]]] = {}
        for req in reqs:
            ctx, cont = pairs[id(req)]
            groups.setdefault(tuple(ctx), []).append(cont)
        work = [(list(ctx), conts) for ctx, conts in groups.items()]
        for (_, conts), rows in zip(work, session.score_many(work), strict=True):
            for logits, cont in zip(rows, conts, strict=True):
                log_softmax(logits)[range(len(cont)), cont]

    seconds["raw llama.cpp"] = timed(raw, requests, args.repeats)[0]
    session.close()
    fed, predicted = work(pairs.values())

    # separate sessions: the adapter swaps in its scoring graph, the unbatched path runs the graph as exported
    for name, batched in (("onnxruntime adapter", True), ("onnxruntime unbatched", False)):
        ort = onnxrt.open_session(str(onnx_path), args.threads, MAX_LENGTH, MAX_LENGTH)
        run(name, SessionLM(ort, MAX_LENGTH, batched=batched).loglikelihood)
        ort.close()

    import torch

    torch.set_num_threads(args.threads)
    hf = HFLM(pretrained=AutoModelForCausalLM.from_pretrained(ref, torch_dtype=torch.float32),
              tokenizer=AutoTokenizer.from_pretrained(ref), batch_size=8, max_length=MAX_LENGTH, device="cpu")
    run("HF fp32 (lm-eval HFLM, batch 8)", hf.loglikelihood)

    def gap(a: str, b: str) -> float:
        return float(np.max(np.abs([x - y for (x, _), (y, _) in zip(results[a], results[b], strict=True)])))

    n = len(requests)
    hf_s = seconds["HF fp32 (lm-eval HFLM, batch 8)"]
    counts = ", ".join(f"{len(reqs)} {task}" for task, reqs in tasks.items())
    print(f"\n{n} loglikelihood requests ({counts}; {args.items} items per task), {args.threads} threads\n")
    print("| backend | req/s | seconds | vs HF fp32 |\n|---|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {n / s:.1f} | {s:.2f} | {hf_s / s:.2f}x |")
    print(f"\nllama.cpp adapter vs HF fp32: {hf_s / seconds['llama.cpp adapter']:.2f}x (goal >= 3x)")
    print(f"onnxruntime batched vs unbatched: {seconds['onnxruntime unbatched'] / seconds['onnxruntime adapter']:.2f}x "
          f"(goal >= 1.5x)")
    print(f"llama.cpp adapter overhead over raw llama.cpp: "
          f"{(seconds['llama.cpp adapter'] - seconds['raw llama.cpp']) / seconds['raw llama.cpp']:+.1%} (goal < 10%)")
    print(ceiling(hf.model, fed, predicted, hf_s, seconds["llama.cpp adapter"], args.threads))
    print(f"max |loglikelihood| difference, batched vs unbatched: llama.cpp {gap('llama.cpp adapter', 'llama.cpp unbatched'):.2e}, "
          f"onnxruntime {gap('onnxruntime adapter', 'onnxruntime unbatched'):.2e}; "
          f"GGUF F16 vs HF fp32 {gap('llama.cpp adapter', 'HF fp32 (lm-eval HFLM, batch 8)'):.2e}")


def work(pairs) -> tuple[int, int]:
    """Tokens the least work must run through the model (each distinct context once, then its continuations)
    and positions whose logits it needs (the continuations' tokens)."""
    groups: dict[tuple[int, ...], list[list[int]]] = {}
    for ctx, cont in pairs:
        groups.setdefault(tuple(ctx), []).append(cont)
    predicted = sum(len(c) for conts in groups.values() for c in conts)
    return sum(len(ctx) for ctx in groups) + predicted, predicted


def torch_gflops(threads: int, n: int = 1024, repeats: int = 5) -> float:
    """float32 matrix-multiply throughput through torch's BLAS, the HF backend's own."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(n, n)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def ceiling(model, fed: int, predicted: int, hf_s: float, adapter_s: float, threads: int) -> str:
    """The fastest any fp32-FMA backend could score these items at this machine's fp32 matmul peak, over HF fp32:
    2 FLOPs per weight for every token fed through the body and for every predicted logit row through the output
    projection; attention, norms and softmax left out, so the bound is generous."""
    from toolkit.profiling.roofline import measure_gflops

    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    body -= 0 if model.config.tie_word_embeddings else head
    flops = 2 * (body * fed + head * predicted)
    peak = max(measure_gflops(threads), torch_gflops(threads))
    return (f"ceiling: {fed} tokens fed, {predicted} logit rows = {flops / 1e9:.0f} GFLOP; fp32 matmul peak (numpy's or torch's "
            f"BLAS, the faster) {peak:.0f} GFLOP/s ({threads} threads) -> at best {flops / peak / 1e9:.2f} s, {hf_s * peak * 1e9 / flops:.2f}x HF fp32; "
            f"the llama.cpp adapter ran at {flops / adapter_s / 1e9:.0f} GFLOP/s ({flops / adapter_s / 1e9 / peak:.0%} of peak)")


if __name__ == "__main__":
    main()
