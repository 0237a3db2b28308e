"""Benchmark: lm-eval requests/s through the GGUF adapter against lm-eval's HF fp32 backend, and the
adapter's overhead over raw llama.cpp evaluation of the same tokens.

Goals: the GGUF adapter >= 3x the HF backend's requests/s on the same items; overhead < 10%.

    .venv/bin/python bench/bench_lm_eval.py [--items 40] [--threads N]

Uses the demo workspace (run `toolkit compress recipes/demo.yaml` first): its F16 GGUF and its HF
reference (dequantized from the same Q4_1 file), and the first items of the offline MMLU task.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main() -> None:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from toolkit.evaluation.lm_adapter import SessionLM, log_softmax
    from toolkit.profiling.device import usable_cpus
    from toolkit.runtimes.llamacpp import open_session
    from toolkit.tasks import prepare

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--threads", type=int, default=usable_cpus())
    args = parser.parse_args()
    ws = Path(".edgefirst/demo")
    f16 = next((ws / "variants").glob("*-gguf-f16-*/model.gguf"), None)
    ref = next((ws / "reference").glob("*"), None)
    if f16 is None or ref is None:
        raise SystemExit("run `toolkit compress recipes/demo.yaml` first (needs the F16 GGUF and the HF reference)")
    rows = [json.loads(line) for line in (prepare("mmlu_offline") / "mmlu_offline.jsonl").read_text().splitlines()[: args.items]]
    requests = []
    for r in rows:
        context = f"{r['question']}\nA. {r['choices'][0]}\nB. {r['choices'][1]}\nC. {r['choices'][2]}\nD. {r['choices'][3]}\nAnswer:"
        requests += [Instance("loglikelihood", {}, (context, f" {c}"), i) for i, c in enumerate("ABCD")]

    session = open_session(str(f16), args.threads, 1024, 1024)
    gguf = SessionLM(session, 1024)
    start = time.perf_counter()
    gguf.loglikelihood(requests)
    gguf_s = time.perf_counter() - start

    # raw llama.cpp on exactly the tokens the adapter evaluates: each context once, then each answer token
    pairs = [gguf._encode_pair(*req.args) for req in requests]
    contexts = {tuple(ctx): [] for ctx, _ in pairs}
    for ctx, cont in pairs:
        contexts[tuple(ctx)].append(cont)
    start = time.perf_counter()
    for ctx, conts in contexts.items():
        for logits, cont in zip(session.score(list(ctx), conts), conts, strict=True):
            log_softmax(logits)[range(len(cont)), cont]
    raw_s = time.perf_counter() - start

    import torch

    torch.set_num_threads(args.threads)
    hf = HFLM(pretrained=AutoModelForCausalLM.from_pretrained(ref, torch_dtype=torch.float32),
              tokenizer=AutoTokenizer.from_pretrained(ref), batch_size=8, device="cpu")
    start = time.perf_counter()
    hf.loglikelihood(requests)
    hf_s = time.perf_counter() - start

    n = len(requests)
    print(f"{n} loglikelihood requests ({args.items} MMLU items x 4 choices), {args.threads} threads")
    print(f"GGUF F16 adapter   {n / gguf_s:8.1f} req/s")
    print(f"HF fp32 (lm-eval)  {n / hf_s:8.1f} req/s   speed-up {hf_s / gguf_s:.2f}x (goal >= 3x)")
    print(f"raw llama.cpp      {n / raw_s:8.1f} req/s   adapter overhead {(gguf_s - raw_s) / raw_s:+.1%} (goal < 10%)")


if __name__ == "__main__":
    main()
