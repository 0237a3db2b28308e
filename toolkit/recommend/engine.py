"""From a device report and a budget to a recommendation record with a reason per variant."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from toolkit.errors import UserError
from toolkit.recipe import Budget
from toolkit.recommend.select import Limit, Option, select, shared_objectives
from toolkit.records import DeviceReport, Record

LIMITS = {
    "max_ttft_ms": ("ttft_ms", "max"),
    "min_decode_tps": ("decode_tps", "min"),
    "max_memory_mb": ("memory_mb", "max"),
    "max_perplexity": ("perplexity", "max"),
}


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant_id: str
    label: str
    format: str
    quant: str
    size_mb: float
    bits_per_weight: float | None
    status: str
    metrics: dict[str, float | None]
    detail: dict[str, float | None]
    on_front: bool
    dominated_by: str | None
    violations: list[str]
    utility: float | None
    verdict: str


class Recommendation(Record):
    recipe: str
    device_id: str
    device: str
    prompt_tokens: int
    budget: Budget
    objectives: list[str]
    pick: str | None
    pick_label: str | None
    message: str
    rows: list[Row]


def budget_limits(budget: Budget) -> list[Limit]:
    return [Limit(metric, value, kind) for key, (metric, kind) in LIMITS.items() if (value := getattr(budget, key)) is not None]


def recommend(report: DeviceReport, budget: Budget) -> Recommendation:
    profiled = sorted({p.prompt_tokens for prof in report.profiles for p in prof.prompts})
    if not profiled:
        raise UserError("the device report holds no successful profile; nothing to recommend from")
    prompt_tokens = budget.ttft_prompt_tokens or max(profiled)
    if prompt_tokens not in profiled:
        raise UserError(f"no TTFT measured at {prompt_tokens} tokens (measured: {profiled})", field="ttft_prompt_tokens")
    options, details = _options(report, prompt_tokens)
    pick = select(options, budget_limits(budget), budget.priority, budget.alpha)
    variants = {v.id: v for v in report.variants}
    rows = [
        Row(
            variant_id=o.id,
            label=o.label,
            format=variants[o.id].format,
            quant=variants[o.id].quant,
            size_mb=round(variants[o.id].size_bytes / 2**20, 1),
            bits_per_weight=variants[o.id].bits_per_weight,
            status=o.status,
            metrics=o.metrics,
            detail=details[o.id],
            on_front=o.on_front,
            dominated_by=o.dominated_by,
            violations=o.violations,
            utility=round(o.utility, 4) if o.utility is not None else None,
            verdict=o.verdict,
        )
        for o in options
    ]
    if pick:
        message = f"Run {pick.label} on {report.device.cpu_model} ({report.device.threads_used} threads)."
    else:
        message = "No variant meets the budget on this device: " + _closest(options)
    return Recommendation(
        recipe=report.recipe,
        device_id=report.device.id,
        device=f"{report.device.hostname}: {report.device.cpu_model}",
        prompt_tokens=prompt_tokens,
        budget=budget,
        objectives=shared_objectives(options),
        pick=pick.id if pick else None,
        pick_label=pick.label if pick else None,
        message=message,
        rows=rows,
    )


def _options(report: DeviceReport, prompt_tokens: int) -> tuple[list[Option], dict[str, dict]]:
    quality = {q.variant_id: q for q in report.quality if q.status == "ok"}
    options, details = [], {}
    for prof in report.profiles:
        q = quality.get(prof.variant_id)
        timing = prof.prompt(prompt_tokens) if prof.status == "ok" else None
        metrics = {
            "ttft_ms": round(timing.ttft_ms.p90, 2) if timing else None,
            "decode_tps": round(prof.decode_tps.p10, 2) if prof.decode_tps else None,
            "memory_mb": prof.peak_rss_mb,
            "perplexity": q.perplexity if q else None,
        }
        details[prof.variant_id] = {
            "ttft_ms_median": round(timing.ttft_ms.median, 2) if timing else None,
            "prefill_tps_median": round(timing.prefill_tps.median, 1) if timing else None,
            "decode_tps_median": round(prof.decode_tps.median, 2) if prof.decode_tps else None,
            "itl_ms_p50": round(prof.itl_ms.median, 3) if prof.itl_ms else None,
            "itl_ms_p90": round(prof.itl_ms.p90, 3) if prof.itl_ms else None,
            "load_ms": prof.load_ms,
        }
        status = prof.status if prof.status != "ok" or timing else "skipped"
        options.append(Option(id=prof.variant_id, label=prof.variant_name, metrics=metrics, status=status, reason=prof.reason))
    return options, details


def _closest(options: list[Option]) -> str:
    measured = [o for o in options if o.status == "ok"]
    if not measured:
        return "no variant was measured successfully."
    nearest = min(measured, key=lambda o: len(o.violations))
    return f"closest is {nearest.label}, which " + "; ".join(nearest.violations) + "."
