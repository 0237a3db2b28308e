"""Benchmark: is the pick stable? Profile + recommend K times from an empty profile cache on one machine.

Builds (once, cached) the demo recipe's GGUF ladder with its fidelity and accuracy, then K times: delete every
cached profile, run `toolkit profile` (rounds of fresh processes, adaptive repeats, certification) and
recommend for the recipe's budget. Prints how often each variant was the pick, whether every run's pick
lies in every run's reported tie set, each variant's max/min peak memory across runs, and whether each
certified pick met the budget in every re-measurement.

Goals: every run's tie set holds the picks of all runs; memory max/min <= 1.05; certified in N/N runs. Each
run after the first starts from the previous run's certified pick (kept while tied, recommend/noise.py), as a
user's re-measurement does, in this workspace or a fresh clone on this machine; `--forget` deletes the earlier
reports and gives each run an empty machine state, so that every run decides alone.

    .venv/bin/python bench/bench_stability.py [--recipe recipes/smollm2-formats.yaml] [--runs 5] [--format gguf]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit import pipeline  # noqa: E402
from toolkit.recipe import load_recipe  # noqa: E402
from toolkit.recommend.engine import recommend  # noqa: E402

MEMORY_GOAL = 1.05


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/smollm2-formats.yaml"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--format", default="gguf", help="the variant format to keep from the recipe")
    parser.add_argument("--workspace", type=Path, default=Path(".edgefirst/bench-stability"))
    parser.add_argument("--forget", action="store_true", help="delete every earlier device report and this machine's "
                        "remembered pick too, so no run keeps the previous run's pick (each run as on a new machine)")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    dropped = {name: None for name, _ in recipe.variants if name != args.format}
    recipe = recipe.model_copy(update={"variants": recipe.variants.model_copy(update=dropped), "workspace": str(args.workspace)})
    t0 = time.perf_counter()
    manifest = pipeline.compress(recipe)
    pipeline.evaluate(recipe)
    print(f"{len(manifest.variants)} {args.format} variants built and evaluated in {time.perf_counter() - t0:.0f} s", flush=True)
    labels = {v.id: v.label for v in manifest.variants}
    picks, ties, memory, deploy, certs, rounds = [], [], {}, {}, [], Counter()
    for k in range(args.runs):
        shutil.rmtree(recipe.workspace_dir() / "profiles", ignore_errors=True)
        if args.forget:  # and this machine's remembered pick (pipeline/certify.py), in a state folder of the run's own
            shutil.rmtree(recipe.workspace_dir() / "reports", ignore_errors=True)
            os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="bench-stability-state-")
        start = time.perf_counter()
        report, _ = pipeline.profile(recipe)
        rec = recommend(report, recipe.budget, recipe.costs)
        picks.append(rec.pick)
        ties.append({rec.pick, *rec.tied_with})
        for p in report.profiles:
            if p.peak_rss_mb is not None:
                memory.setdefault(p.variant_id, []).append(p.peak_rss_mb)
            if p.deploy_rss_mb is not None:
                deploy.setdefault(p.variant_id, []).append(p.deploy_rss_mb)
            rounds[p.variant_id] += p.rounds
        cert = rec.certification
        certs.append(f"{cert.passed}/{len(cert.runs)}" if cert else "none")
        win = next((r.win_probability for r in rec.rows if r.variant_id == rec.pick), None)
        print(f"run {k + 1}: pick {labels.get(rec.pick, rec.pick)} (win probability {win}), tie set "
              f"{sorted(labels[v] for v in ties[-1] if v)}, certified {certs[-1]}, {time.perf_counter() - start:.0f} s",
              flush=True)
    every_pick = {p for p in picks if p}
    print(f"\npicks over {args.runs} runs: " + ", ".join(f"{labels.get(v, v)} x{n}" for v, n in Counter(picks).most_common()))
    inside = [every_pick <= tie for tie in ties]
    print(f"every run's tie set holds the picks of all runs: {all(inside)} ({sum(inside)}/{len(inside)})")
    print(f"certified pick met the budget in every re-measurement: {all(c != 'none' and c.split('/')[0] == c.split('/')[1] for c in certs)} "
          f"({', '.join(certs)})")
    print("\n| variant | picked | in tie sets | rounds (mean) | deploy MB min-max | max/min | process peak MB min-max | max/min |"
          "\n|---|---|---|---|---|---|---|---|")
    worst = 1.0
    for vid, label in labels.items():
        cells = []
        for figures in (deploy.get(vid, []), memory.get(vid, [])):
            ratio = max(figures) / min(figures) if figures else None
            worst = max(worst, ratio or 1.0)
            cells += [f"{min(figures):.1f}-{max(figures):.1f}", f"{ratio:.3f}"] if figures else ["-", "-"]
        print(f"| {label} | {picks.count(vid)} | {sum(vid in t for t in ties)} | {rounds[vid] / args.runs:.1f} | " + " | ".join(cells) + " |")
    print(f"\nworst memory max/min across runs (deploy and process peak): {worst:.3f} (goal <= {MEMORY_GOAL})")


if __name__ == "__main__":
    main()
