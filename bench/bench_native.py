"""Benchmark: the native llama.cpp runtime (llama-server, as a served client sees it) against llama-bench on the
same GGUF files, threads and batch, and the bundled runtime (llama-cpp-python) against the native one.

For every GGUF variant of the recipe (default: the demo's two models), interleaved in one run: a native profile
(a fresh process: llama-server streamed completions, then llama-bench on the same file) and a bundled profile
(a fresh process), `--rounds` times. Printed as ratios:

- native / llama-bench, decode (tg at the profile's decode depth) and prefill (pp at each prompt length,
  against TTFT-derived prefill tok/s): the median of per-repeat ratios, each served repeat over the
  llama-bench run the runtime takes right after it. Goal (issue #19): >= 0.97.
- bundled / native, decode and prefill: reported, no goal.

    .venv/bin/python bench/bench_native.py [--recipe recipes/demo.yaml] [--quants Q8_0,Q4_K_M,Q4_0] [--rounds 2]
        [--workspace .edgefirst/bench-native] [--threads N]

Needs llama.cpp's binaries: `toolkit llama-cpp-build`, device.llama_cpp.bin_dir, or PATH.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit import pipeline  # noqa: E402
from toolkit.pipeline.profile import measure, profile_key  # noqa: E402
from toolkit.pipeline.workspace import corpus, device_fingerprint, workspace  # noqa: E402
from toolkit.recipe import load_recipe  # noqa: E402
from toolkit.stat import Stat  # noqa: E402

GOAL = 0.97


def gguf_recipe(path: Path, quants: list[str] | None, native: bool, ws: Path, threads: int | None):
    recipe = load_recipe(path)
    variants = recipe.variants
    keep = {name: None for name in type(variants).model_fields}
    keep["gguf"] = variants.gguf.model_copy(update={"quants": quants} if quants else {})
    llama_cpp = recipe.device.llama_cpp.model_copy(update={"runtime": "native" if native else "bundled"})
    device = recipe.device.model_copy(update={"llama_cpp": llama_cpp} | ({"threads": threads} if threads else {}))
    return recipe.model_copy(update={"variants": variants.model_copy(update=keep), "workspace": str(ws), "device": device})


def merged(profiles, pick) -> Stat:
    return Stat.merge([pick(p) for p in profiles])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/demo.yaml"))
    parser.add_argument("--quants", help="comma-separated GGUF quants (default: the recipe's)")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per runtime and variant")
    parser.add_argument("--workspace", type=Path, default=Path(".edgefirst/bench-native"))
    parser.add_argument("--threads", type=int, help="compute threads (default: the recipe's, else all cores); fewer "
                        "than the cores leaves one to the server's HTTP thread and the client")
    args = parser.parse_args()
    quants = args.quants.split(",") if args.quants else None
    ws = args.workspace.resolve()
    native = gguf_recipe(args.recipe, quants, True, ws, args.threads)
    bundled = gguf_recipe(args.recipe, quants, False, ws, args.threads)
    manifest = pipeline.compress(bundled)
    variants = [v for v in manifest.variants if v.format == "gguf" and (not quants or v.quant in quants)]
    ws, text = workspace(native), corpus(native)
    devices = {"native": device_fingerprint(native), "bundled": device_fingerprint(bundled)}
    runs: dict[tuple[str, str], list] = {}
    for index in range(args.rounds):
        for variant in variants:
            for name, recipe in (("native", native), ("bundled", bundled)):
                device = devices[name]
                key = profile_key(recipe, variant, device, "bench-native")
                result = measure(recipe, variant, device, key, text, ws, f"-bench-{name}-{index}")
                if result.status != "ok":
                    sys.exit(f"{variant.label} ({name}): {result.status}: {result.reason}")
                runs.setdefault((variant.id, name), []).append(result)
                print(f"round {index + 1}: {variant.label} {name}: decode {result.decode_tps.median:.1f} tok/s", flush=True)
    lengths = native.device.prompt_lengths
    print(f"\nthreads {devices['native'].threads_used}, llama.cpp {devices['native'].runtimes.get('llama.cpp-native')}, "
          f"llama-cpp-python {devices['bundled'].runtimes.get('llama_cpp_python')}, {args.rounds} rounds x "
          f"{native.device.repeats} repeats; native/bench: median of the paired ratios (each served repeat over the "
          "llama-bench run right after it); bundled/native: ratio of medians\n")
    head = " | ".join(f"native/bench pp{n}" for n in lengths)
    print(f"| variant | llama-bench tg tok/s | native/bench tg | {head} | bundled/native tg | bundled/native TTFT@{lengths[-1]} |")
    print("|---|---|---|" + "---|" * len(lengths) + "---|---|")
    worst = []
    for variant in variants:
        nat, bun = runs[(variant.id, "native")], runs[(variant.id, "bundled")]
        bench = [p.llama_bench for p in nat]
        tg = merged(bench, lambda b: b.decode_tps)
        decode = paired(merged(nat, lambda p: p.decode_tps), tg)
        pp = [paired(merged(nat, lambda p, n=n: p.prompt(n).prefill_tps), merged(bench, lambda b, n=n: b.prefill_tps[n]))
              for n in lengths]
        worst += [decode, *pp]
        bundled_tg = merged(bun, lambda p: p.decode_tps).median / merged(nat, lambda p: p.decode_tps).median
        ttft = (merged(bun, lambda p: p.prompt(lengths[-1]).ttft_ms).median
                / merged(nat, lambda p: p.prompt(lengths[-1]).ttft_ms).median)
        cells = " | ".join(f"{r:.3f}" for r in pp)
        print(f"| {variant.label} | {tg.median:.1f} | {decode:.3f} | {cells} | {bundled_tg:.3f} | {ttft:.3f} |")
    print(f"\nnative / llama-bench, lowest ratio: {min(worst):.3f} (goal >= {GOAL}): {'met' if min(worst) >= GOAL else 'NOT met'}")
    print(f"median over variants and measures: {statistics.median(worst):.3f}")


def paired(ours: Stat, theirs: Stat) -> float:
    """Median of the per-repeat ratios (the runtime takes one llama-bench run right after each served repeat)."""
    return statistics.median(a / b for a, b in zip(ours.values, theirs.values, strict=True))


if __name__ == "__main__":
    main()
