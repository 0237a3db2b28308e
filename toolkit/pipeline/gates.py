"""What the staged search (pipeline/search.py) rules out before measuring further: variants that break the
budget whatever else is measured, each with the reason its row shows ("not measured further: ..."). The checks
themselves are recommend/ruled_out.py's, which also tells when a later budget would not rule a variant out."""

from __future__ import annotations

from toolkit.recipe import Recipe
from toolkit.recommend.keys import budget_limits
from toolkit.recommend.options import options_at
from toolkit.recommend.ruled_out import QUALITY_LIMITS, TIMING_LIMITS, quality_breaks, quality_figures, timing_breaks
from toolkit.recommend.select import RULED_OUT, check
from toolkit.records import DeviceReport, Quality


def quality_limits(recipe: Recipe) -> dict[str, float]:
    """The budget's quality limits (each a maximum): where the staged search's fidelity scoring may stop."""
    return {lim.metric: lim.bound for lim in budget_limits(recipe.budget, QUALITY_LIMITS)}


def quality_gate(recipe: Recipe, quality: list[Quality]) -> dict[str, str]:
    """Variants whose fidelity breaks a quality limit of the budget, with the reason: as measured, or, where
    scoring stopped early (status `stopped`), at least by its lower bounds over the whole text."""
    out = {}
    for q in quality:
        if not (broken := quality_breaks(recipe.budget, quality_figures(q))):
            continue
        out[q.variant_id] = RULED_OUT + "; ".join(broken)
        if q.status == "stopped":
            out[q.variant_id] += (f" at least: scoring stopped after {q.chunks} of {recipe.quality.chunks} chunks, "
                                  "as the others could only add to it")
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
        if o.status in ("ok", "incomplete") and timing_breaks(o, budget, margin):
            out[o.id] = RULED_OUT + "; ".join(check(o, limits)) + f"; still over with timings {margin:.0%} better"
    return out
