"""What the staged search (pipeline/search.py) rules out before measuring further: variants that break the
budget whatever else is measured, each with the reason its row shows ("not measured further: ...")."""

from __future__ import annotations

from toolkit.recipe import Recipe
from toolkit.recommend.engine import budget_limits
from toolkit.recommend.noise import shifted
from toolkit.recommend.options import options_at
from toolkit.recommend.select import RULED_OUT, Option, check
from toolkit.records import DeviceReport, Quality

QUALITY_LIMITS = {"kl", "perplexity", "bits_per_byte"}
TIMING_LIMITS = {"ttft_ms", "decode_tps", "memory_mb", "energy_j", "cost_per_1k_usd"}


def quality_limits(recipe: Recipe) -> dict[str, float]:
    """The budget's quality limits (each a maximum): where the staged search's fidelity scoring may stop."""
    return {lim.metric: lim.bound for lim in budget_limits(recipe.budget, QUALITY_LIMITS)}


def broken_quality(recipe: Recipe, figures: dict[str, float | None]) -> list[str]:
    """The budget's quality limits that `figures` (kl, perplexity, bits_per_byte) break, as check() words them."""
    limits = budget_limits(recipe.budget, QUALITY_LIMITS)
    return [v for v in check(Option(id="", label="", metrics=figures), limits) if not v.endswith("not measured")]


def quality_gate(recipe: Recipe, quality: list[Quality]) -> dict[str, str]:
    """Variants whose fidelity breaks a quality limit of the budget, with the reason: as measured, or, where
    scoring stopped early (status `stopped`), at least by its lower bounds over the whole text."""
    out = {}
    for q in quality:
        if q.status == "ok":
            if broken := broken_quality(recipe, {"kl": q.kl_mean, "perplexity": q.perplexity, "bits_per_byte": q.bits_per_byte}):
                out[q.variant_id] = RULED_OUT + "; ".join(broken)
        elif q.status == "stopped" and (broken := broken_quality(recipe, q.lower_bounds or {})):
            out[q.variant_id] = (RULED_OUT + "; ".join(broken) + f" at least: scoring stopped after {q.chunks} of "
                                 f"{recipe.quality.chunks} chunks, as the others could only add to it")
    return out


def timing_gate(recipe: Recipe, report: DeviceReport) -> dict[str, str]:
    """Profiled variants that break a timing or memory limit even with their timings `device.noise_margin`
    better (the most a rerun is expected to move them), with the reason."""
    budget, margin = recipe.budget, recipe.device.noise_margin
    limits = budget_limits(budget, TIMING_LIMITS)
    profiled = sorted({p.prompt_tokens for prof in report.profiles for p in prof.prompts})
    if not limits or not profiled:
        return {}
    options, _ = options_at(report, budget.ttft_prompt_tokens or max(profiled), budget.output_tokens, recipe.costs)
    out = {}
    for o in options:
        if o.status in ("ok", "incomplete") and check(shifted(o, 1 + margin), limits):
            out[o.id] = RULED_OUT + "; ".join(check(o, limits)) + f"; still over with timings {margin:.0%} better"
    return out
