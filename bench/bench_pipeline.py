"""Benchmark: the main job's wall time per stage, staged search against exhaustive sweep, and the pick of each.

From an empty workspace: compress, then the staged search (fidelity, profile, accuracy for the contenders,
profile again with certification); then the same workspace with every measurement deleted (the variants
kept) swept exhaustively (fidelity and accuracy of every variant, then profile); then the staged search
once more on the full cache (the cached rerun). Prints one table of seconds per stage and each mode's pick,
and how many variants each mode evaluated for accuracy and profiled.

Goals (issue #11): the staged demo from empty under 15 minutes on 2 cores; a cached rerun under 30 s; both
modes name the same pick.

    .venv/bin/python bench/bench_pipeline.py [--recipe recipes/demo.yaml] [--keep]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toolkit import pipeline  # noqa: E402
from toolkit.pipeline.accuracy import accuracy  # noqa: E402
from toolkit.pipeline.fidelity import fidelity  # noqa: E402
from toolkit.pipeline.workspace import corpus, load_manifest  # noqa: E402
from toolkit.recipe import load_recipe  # noqa: E402
from toolkit.recommend.engine import recommend  # noqa: E402

MEASUREMENTS = ("quality", "fidelity", "evals", "profiles", "reports")  # workspace folders; variants/ is kept


class Clock:
    """Seconds per named step, in order."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self.current, self.since = None, time.perf_counter()

    def step(self, name: str | None) -> None:
        now = time.perf_counter()
        if self.current:
            self.steps[self.current] = self.steps.get(self.current, 0.0) + now - self.since
        self.current, self.since = name, now


def forget_measurements(ws: Path) -> None:
    for name in MEASUREMENTS:
        shutil.rmtree(ws / name, ignore_errors=True)


def staged(recipe, clock: Clock):
    report, _ = pipeline.search(recipe, on_step=clock.step)
    clock.step(None)
    return report


def exhaustive(recipe, clock: Clock):
    manifest = load_manifest(recipe)
    clock.step("fidelity")
    fidelity(recipe, manifest, corpus(recipe))
    clock.step("accuracy")
    accuracy(recipe, manifest)
    clock.step("profile + certify")
    report, _ = pipeline.profile(recipe)
    clock.step(None)
    return report


def summary(recipe, report, clock: Clock) -> dict:
    rec = recommend(report, recipe.budget, recipe.costs)
    labels = {v.id: v.label for v in report.variants}
    evaluated = {r.variant_id for r in report.accuracy if r.status == "ok"}
    profiled = {p.variant_id for p in report.profiles if p.status != "skipped"}
    return {"steps": clock.steps, "total": sum(clock.steps.values()), "pick": labels.get(rec.pick, "cloud / none"),
            "tied": [labels[v] for v in rec.tied_with], "evaluated": len(evaluated), "profiled": len(profiled),
            "variants": len(report.variants)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/demo.yaml"))
    parser.add_argument("--workspace", type=Path, default=Path(".edgefirst/bench-pipeline"))
    parser.add_argument("--keep", action="store_true", help="start from the workspace as it is, not empty")
    parser.add_argument("--staged-only", action="store_true", help="only the staged search from empty (no sweep, no rerun)")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe).model_copy(update={"workspace": str(args.workspace.resolve())})
    ws = recipe.workspace_dir()
    if not args.keep:
        shutil.rmtree(ws, ignore_errors=True)
    results = {}
    clock = Clock()
    clock.step("compress")
    pipeline.compress(recipe)
    compress_s = time.perf_counter() - clock.since
    results["staged, from empty"] = summary(recipe, staged(recipe, clock), clock)
    print(f"staged: {results['staged, from empty']}", flush=True)
    if args.staged_only:
        table(args.recipe, recipe, results, compress_s)
        return
    forget_measurements(ws)
    clock = Clock()
    every = recipe.model_copy(update={"search": "exhaustive"})
    results["exhaustive, variants kept"] = summary(every, exhaustive(every, clock), clock)
    print(f"exhaustive: {results['exhaustive, variants kept']}", flush=True)
    clock = Clock()
    clock.step("compress")
    pipeline.compress(recipe)
    results["staged, cached rerun"] = summary(recipe, staged(recipe, clock), clock)  # the cache holds every accuracy
    table(args.recipe, recipe, results, compress_s)


def table(path: Path, recipe, results: dict, compress_s: float) -> None:
    steps = ["compress", "fidelity", "profile", "accuracy", "profile + certify"]
    print(f"\n{path}: {len(load_manifest(recipe).variants)} variants\n")
    print("| mode | " + " | ".join(steps) + " | total | accuracy runs | profiled | pick (tied with) |")
    print("|---|" + "---|" * (len(steps) + 4))
    for mode, r in results.items():
        times = dict(r["steps"])
        if mode.startswith("exhaustive"):
            times["compress"] = compress_s  # the variants are shared: built once, by the staged run
        total = sum(times.values())
        cells = [f"{times[s]:.0f} s" if s in times else "-" for s in steps]
        tied = f" ({', '.join(r['tied'])})" if r["tied"] else ""
        print(f"| {mode} | " + " | ".join(cells) + f" | {total / 60:.1f} min | {r['evaluated']}/{r['variants']} | "
              f"{r['profiled']}/{r['variants']} | {r['pick']}{tied} |")
    print(f"\nstaged from empty {results['staged, from empty']['total'] / 60:.1f} min (goal < 15)")
    if "exhaustive, variants kept" in results:
        same = results["staged, from empty"]["pick"] == results["exhaustive, variants kept"]["pick"]
        print(f"same pick in both modes: {same}; cached rerun {results['staged, cached rerun']['total']:.0f} s (goal < 30)")


if __name__ == "__main__":
    main()
