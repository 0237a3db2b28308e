"""Certification: the pick re-measured in fresh processes at the budget's response shape; a pick that misses
the budget in any run is vetoed and the next one certified (profiling/rounds.py, step 4)."""

from __future__ import annotations

import functools
from collections.abc import Callable

from toolkit.pipeline.workspace import Progress, quiet
from toolkit.profiling.rounds import CERTIFY_ATTEMPTS, certify_runs
from toolkit.recipe import Recipe
from toolkit.recommend.engine import budget_key, check_run, recommend
from toolkit.records import DeviceReport, Profile, Variant

MeasureRound = Callable[[Recipe, Variant, int], Profile]  # (recipe at the budget's shape, variant, run index)


def certify(recipe: Recipe, report: DeviceReport, measure_round: MeasureRound, progress: Progress = quiet) -> DeviceReport:
    n, budget = recipe.device.certify_runs, recipe.budget
    if n == 0 or not report.measured:
        return report
    key = budget_key(budget, recipe.costs)
    for _ in range(CERTIFY_ATTEMPTS):
        rec = recommend(report, budget, recipe.costs)
        if rec.pick is None or rec.certification is not None:
            break
        variant = next(v for v in report.variants if v.id == rec.pick)
        shape = recipe.device.model_copy(update={"prompt_lengths": [rec.prompt_tokens], "decode_tokens": rec.output_tokens})
        at_shape = recipe.model_copy(update={"device": shape})
        runs = []
        for i in range(n):
            progress(f"certify {variant.label} ({i + 1}/{n})", i, n)
            runs.append(measure_round(at_shape, variant, i))
        check = functools.partial(_check, report, recipe, rec.prompt_tokens)
        cert = certify_runs(runs, check, variant.id, key, rec.prompt_tokens, rec.output_tokens)
        report = report.model_copy(update={"certifications": [*report.certifications, cert]})
    return report


def _check(report: DeviceReport, recipe: Recipe, prompt_tokens: int, run: Profile) -> tuple[list[str], dict]:
    option = check_run(report, run, recipe.budget, recipe.costs, prompt_tokens)
    m = option.metrics
    figures = {"ttft_p90_ms": m["ttft_ms"], "decode_p10_tps": m["decode_tps"], "peak_rss_mb": m["memory_mb"],
               "energy_j": m["energy_j"]}
    return option.violations, figures
