"""Benchmark: ONNX int4 from onnxruntime-genai's model builder against optimum's export, beside GGUF Q4_K_M,
for every candidate of a recipe (default: the demo's SmolLM2-135M and Gemma 3 270M), in one run.

Per model and variant: size on disk, peak process memory and decode tok/s from the profiler (fresh processes,
median of every repeat), and KL divergence to the model's F16 GGUF on the fidelity text. Then the fp32 check:
each builder's fp32 model against the HF reference's logits (PyTorch) on the same fidelity tokens: top-1
agreement (goal >= 0.99) and the largest logit difference, and the two builders against each other.

Goals (issue #13): Gemma 3 270M genai int4 under 350 MB on disk; genai fp32 top-1 agreement >= 0.99.

    .venv/bin/python bench/bench_onnx_builders.py [--recipe recipes/demo.yaml] [--workspace .edgefirst/bench-onnx]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit import pipeline  # noqa: E402
from toolkit.pipeline.fidelity import fidelity  # noqa: E402
from toolkit.pipeline.workspace import corpus  # noqa: E402
from toolkit.recipe import load_recipe  # noqa: E402

INT4 = ("genai-int4-b32", "int4-b32", "Q4_K_M")


def bench_recipe(path: Path, workspace: Path):
    recipe = load_recipe(path)
    variants = recipe.variants
    keep = {name: None for name in type(variants).model_fields}
    keep["gguf"] = variants.gguf.model_copy(update={"quants": ["F16", "Q4_K_M"], "keep_source": False})
    keep["onnx"] = variants.onnx.model_copy(update={"builder": ["genai", "optimum"], "precisions": ["fp32", "int4"],
                                                    "int4_block_sizes": [32]})
    return recipe.model_copy(update={"variants": variants.model_copy(update=keep), "workspace": str(workspace),
                                     "search": "exhaustive"})


def fp32_agreement(manifest, recipe) -> list[str]:
    """Each builder's fp32 logits against the HF reference and against each other, on the fidelity windows."""
    import numpy as np

    from toolkit.quality.fidelity import text_windows, window_logits
    from toolkit.reference import reference_dir
    from toolkit.runtimes import get_runtime
    from toolkit.runtimes.torch_hf import open_session as torch_session
    from toolkit.sources import resolve

    lines, text = [], corpus(recipe).read_text(encoding="utf-8")
    for candidate in recipe.candidates:
        source = resolve(candidate, recipe)
        model, ref_dir = source.model, reference_dir(source, recipe.workspace_dir())
        fp32 = {v.quant: v for v in manifest.variants if v.model == model and v.quant in ("genai-fp32", "fp32")}
        hf = torch_session(str(ref_dir), 2, recipe.quality.ctx + 8, recipe.quality.ctx)
        windows, _ = text_windows(hf, text, recipe.quality.ctx, recipe.quality.chunks)
        truth = list(window_logits(hf, windows, batched=False))
        hf.close()
        rows = {}
        for quant, variant in fp32.items():
            session = get_runtime(variant.runtime).load().open_session(variant.path, 2, recipe.quality.ctx + 8, recipe.quality.ctx)
            rows[quant] = list(window_logits(session, windows, batched=False))
            session.close()
            top1 = np.mean(np.concatenate([a.argmax(1) == b.argmax(1) for a, b in zip(rows[quant], truth, strict=True)]))
            diff = max(float(np.abs(a - b).max()) for a, b in zip(rows[quant], truth, strict=True))
            lines.append(f"| {model} | {quant} vs HF reference | {top1:.4f} | {diff:.2e} |")
        if len(rows) == 2:
            a, b = rows.values()
            top1 = np.mean(np.concatenate([x.argmax(1) == y.argmax(1) for x, y in zip(a, b, strict=True)]))
            diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
            lines.append(f"| {model} | genai-fp32 vs optimum fp32 | {top1:.4f} | {diff:.2e} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/demo.yaml"))
    parser.add_argument("--workspace", type=Path, default=Path(".edgefirst/bench-onnx"))
    args = parser.parse_args()
    recipe = bench_recipe(args.recipe, args.workspace.resolve())
    manifest = pipeline.compress(recipe)
    for failure in manifest.not_built:
        print(f"not built: {failure.label}: {failure.reason}")
    quality = {q.variant_id: q for q in fidelity(recipe, manifest, corpus(recipe))}
    report, _ = pipeline.profile(recipe, certify_pick=False)
    profiles = {p.variant_id: p for p in report.profiles}
    print("\n| model | variant | built by | size | peak memory | decode tok/s (median, p10-p90) | KL to F16 |")
    print("|---|---|---|---|---|---|---|")
    for v in manifest.variants:
        if v.quant not in INT4:
            continue
        p, q = profiles[v.id], quality[v.id]
        builder = {"onnxruntime-genai": "onnxruntime-genai builder", "onnxruntime": "optimum export"}.get(v.runtime, "llama.cpp")
        decode = (f"{p.decode_tps.median:.1f} ({p.decode_tps.p10:.1f}-{p.decode_tps.p90:.1f})" if p.status == "ok"
                  else p.status)
        peak = f"{p.peak_rss_mb:.0f} MiB" if p.status == "ok" else "-"
        kl = f"{q.kl_mean:.4f}" if q.kl_mean is not None else q.status
        print(f"| {v.model} | {v.quant} | {builder} | {v.size_bytes / 2**20:.0f} MiB | {peak} | {decode} | {kl} |")
    print("\n| model | fp32 check | top-1 agreement | max abs logit difference |\n|---|---|---|---|")
    print("\n".join(fp32_agreement(manifest, recipe)))


if __name__ == "__main__":
    main()
