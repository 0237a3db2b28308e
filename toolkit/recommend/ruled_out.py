"""The staged search's gates as budget checks (pipeline/gates.py applies them while measuring), and the variants it
ruled out that another budget, given at `toolkit recommend` time, would not: nothing compares the pick with
those, so the recommendation is provisional until they are measured under that budget."""

from __future__ import annotations

from toolkit.recipe import Budget
from toolkit.recommend.keys import budget_limits
from toolkit.recommend.noise import shifted
from toolkit.recommend.select import RULED_OUT, Option, check
from toolkit.records import DeviceReport, Quality

QUALITY_LIMITS = {"kl", "perplexity", "bits_per_byte"}
TIMING_LIMITS = {"ttft_ms", "decode_tps", "memory_mb", "energy_j", "cost_per_1k_usd"}


def quality_breaks(budget: Budget, figures: dict[str, float | None]) -> list[str]:
    """The budget's quality limits that `figures` (kl, perplexity, bits_per_byte) break, as check() words them;
    a figure not there breaks nothing."""
    limits = budget_limits(budget, QUALITY_LIMITS)
    return [v for v in check(Option(id="", label="", metrics=figures), limits) if "not measured" not in v]


def quality_figures(q: Quality) -> dict[str, float | None]:
    """What a fidelity result says for the gate: its figures, or, where scoring stopped early, its lower bounds."""
    if q.status == "stopped":
        return dict(q.lower_bounds or {})
    return {"kl": q.kl_mean, "perplexity": q.perplexity, "bits_per_byte": q.bits_per_byte} if q.status == "ok" else {}


def timing_breaks(option: Option, budget: Budget, margin: float) -> bool:
    """Whether `option` breaks a timing or memory limit of the budget even with its timings `margin` better."""
    return bool(check(shifted(option, 1 + margin), budget_limits(budget, TIMING_LIMITS)))


def untimed(options: list[Option]) -> str:
    """Why no variant has timings: the staged search ruled them out before timing (the first one's reason), or
    every measurement failed."""
    ruled = next((o for o in options if (o.reason or "").startswith(RULED_OUT)), None)
    return f"none was timed; {ruled.label}: {ruled.reason}" if ruled else "no variant was measured successfully"


def admitted(report: DeviceReport, options: list[Option], budget: Budget, margin: float) -> list[Option]:
    """Variants the staged search did not measure further that `budget` would not have ruled out: by fidelity
    (not profiled; their figures or lower bounds meet its quality limits) or by timing (profiled once, no
    accuracy; they meet its timing limits with the margin)."""
    quality = {q.variant_id: q for q in report.quality}
    out = []
    for o in options:
        if not (o.reason or "").startswith(RULED_OUT):
            continue
        if o.status == "skipped":
            q = quality.get(o.id)
            if q is not None and q.status in ("ok", "stopped") and not quality_breaks(budget, quality_figures(q)):
                out.append(o)
        elif o.status == "incomplete" and not timing_breaks(o, budget, margin) and not quality_breaks(budget, o.metrics):
            out.append(o)
    return out
