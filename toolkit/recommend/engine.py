"""From a device report, a budget, costs and the cloud catalogue to a recommendation with reasons."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from toolkit.errors import UserError
from toolkit.io import content_hash
from toolkit.profiling.roofline import roofline_decode_tps, roofline_prefill_tps
from toolkit.recipe import Budget, Costs
from toolkit.recommend import noise
from toolkit.recommend.cloud import CloudModel
from toolkit.recommend.select import TIE_RULE, Limit, Option, check, choose, explain, select, shared_objectives
from toolkit.records import Certification, DeviceReport, Profile, Record, Stat

LIMITS = {
    "max_ttft_ms": ("ttft_ms", "max"),
    "min_decode_tps": ("decode_tps", "min"),
    "max_memory_mb": ("memory_mb", "max"),
    "max_perplexity": ("perplexity", "max"),
    "max_kl": ("kl", "max"),
    "min_accuracy": ("accuracy", "min"),
    "max_energy_j": ("energy_j", "max"),
    "max_cost_per_1k_usd": ("cost_per_1k_usd", "max"),
}
# What a cloud answer is checked against: latency, speed and price; memory and energy are not the
# edge device's, and perplexity is not comparable across tokenizers (a hosted model is far larger).
CLOUD_LIMITS = {"ttft_ms", "decode_tps", "cost_per_1k_usd"}
J_PER_KWH = 3.6e6


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
    detail: dict[str, float | str | None]
    on_front: bool
    dominated_by: str | None
    violations: list[str]
    utility: float | None
    pcr: float | None
    verdict: str
    win_probability: float | None = None
    rounds: int = 0  # fresh processes behind the timings


class CloudRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    provider: str
    model: str
    ttft_ms: float
    decode_tps: float
    response_s: float
    cost_per_1k_usd: float
    violations: list[str]
    formula: str = ""  # USD per response, as arithmetic on the prices used
    price_source: str = ""  # e.g. LiteLLM's price map with its version, or the catalogue's source


class Mixed(BaseModel):
    model_config = ConfigDict(extra="forbid")
    edge_variant: str
    edge_label: str
    max_prompt_tokens: int
    cloud: str
    rule: str


class Recommendation(Record):
    recipe: str
    device_id: str
    device: str
    prompt_tokens: int
    output_tokens: int
    budget: Budget
    costs: Costs
    energy_source: str
    objectives: list[str]  # shared by the in-budget variants (all measured ones when none is in budget)
    answer: Literal["edge", "cloud", "mixed", "none"]
    pick: str | None
    pick_label: str | None
    cloud_pick: str | None = None
    mixed: Mixed | None = None
    ruled_out_by: list[str] = []
    message: str
    rows: list[Row]
    cloud_rows: list[CloudRow] = []
    notes: list[str] = []
    resamples: int = 0  # bootstrap resamples behind each row's win_probability (0: not computed)
    tied_with: list[str] = []  # variants statistically tied with the pick (noise.py), best first
    tie_rule: str | None = None  # how the tie was broken, when tied_with is not empty
    certification: Certification | None = None  # the pick re-measured in fresh processes against this budget


def budget_key(budget: Budget, costs: Costs) -> str:
    """What a certification is valid for: the limits, the response shape and the prices (not the priority)."""
    return content_hash(budget.model_dump(mode="json", exclude={"priority", "alpha"}), costs.model_dump(mode="json"))


def certification_vetoes(report: DeviceReport, key: str) -> dict[str, str]:
    """Variants whose re-measurement missed this budget in some fresh process: never the pick."""
    out = {}
    for cert in report.certifications:
        if cert.budget_key == key and not cert.certified:
            failed = next(r for r in cert.runs if not r.meets)
            why = "; ".join(failed.violations) or failed.status
            out[cert.variant_id] = f"failed certification: met the budget in {cert.passed}/{len(cert.runs)} fresh runs ({why})"
    return out


def budget_limits(budget: Budget, metrics: set[str] | None = None) -> list[Limit]:
    limits = [Limit(m, v, kind) for key, (m, kind) in LIMITS.items() if (v := getattr(budget, key)) is not None]
    return [lim for lim in limits if metrics is None or lim.metric in metrics]


def recommend(
    report: DeviceReport, budget: Budget, costs: Costs | None = None, providers: list[CloudModel] | None = None
) -> Recommendation:
    costs = costs or Costs()
    profiled = sorted({p.prompt_tokens for prof in report.profiles for p in prof.prompts})
    if not profiled:
        raise UserError("the device report holds no successful profile; nothing to recommend from")
    prompt_tokens = budget.ttft_prompt_tokens or max(profiled)
    if prompt_tokens not in profiled:
        raise UserError(f"no TTFT measured at {prompt_tokens} tokens (measured: {profiled})", field="ttft_prompt_tokens")
    options, details = _options(report, prompt_tokens, budget.output_tokens, costs)
    limits = budget_limits(budget)
    key = budget_key(budget, costs)
    vetoes = certification_vetoes(report, key)
    order = choose(options, limits, budget.priority, budget.alpha, vetoes)
    pick, tied, win = (order[0] if order else None), [], {}
    if pick:
        draws = _draws(report, options, prompt_tokens, budget.output_tokens, costs)
        win = noise.win_probabilities(draws, limits, budget.priority, budget.alpha, vetoes)
        pick, tied = noise.settle(order, win)
    explain(options, pick, budget.priority, win, tied)
    clouds = [_cloud_row(c, prompt_tokens, budget) for c in providers or []]
    feasible_cloud = sorted((c for c in clouds if not c.violations), key=lambda c: (c.cost_per_1k_usd, c.id))
    rec = dict(
        recipe=report.recipe,
        device_id=report.device.id,
        device=f"{report.device.hostname}-{report.device.id[:4]}: {report.device.cpu_model}, {report.device.threads_used} threads",
        prompt_tokens=prompt_tokens,
        output_tokens=budget.output_tokens,
        budget=budget,
        costs=costs,
        energy_source=_energy_source(report),
        objectives=shared_objectives([o for o in options if o.feasible] or options),
        rows=_rows(report, options, details, win if pick else None),
        cloud_rows=clouds,
        notes=_notes(report),
        resamples=noise.RESAMPLES if pick else 0,
        tied_with=[o.id for o in tied if o is not pick],
        tie_rule=TIE_RULE if len(tied) > 1 else None,
    )
    cheapest = feasible_cloud[0] if feasible_cloud else None
    if pick:
        cert = next((c for c in report.certifications if c.variant_id == pick.id and c.budget_key == key), None)
        extra = f" Cheapest cloud meeting the budget: {_cloud_name(cheapest)}." if cheapest else ""
        return Recommendation(
            answer="edge", pick=pick.id, pick_label=pick.label, cloud_pick=None, certification=cert,
            message=f"Run {pick.label} on {report.device.cpu_model} ({report.device.threads_used} threads): "
            f"{_edge_cost(pick)}. {certified_line(cert)}{extra}",
            **rec,
        )
    ruled = _closest(options)
    mixed = _mixed(report, options, budget, costs, prompt_tokens, cheapest)
    if cheapest is None:
        return Recommendation(
            answer="none", pick=None, pick_label=None, ruled_out_by=ruled[1], mixed=mixed,
            message=f"No variant meets the budget on this device ({ruled[0]}), and no cloud option does either.",
            **rec,
        )
    best_edge = _cheapest_edge(options)
    edge_cost = f"; the cheapest edge variant, {best_edge.label}, would cost {_usd(best_edge.metrics['cost_per_1k_usd'])}" if best_edge and best_edge.metrics.get("cost_per_1k_usd") else ""
    message = (
        f"No edge variant meets the budget ({ruled[0]}). Cloud fallback: {_cloud_name(cheapest)} at "
        f"{_usd(cheapest.cost_per_1k_usd)} per 1,000 responses{edge_cost}."
    )
    if mixed:
        message += f" Mixed: {mixed.rule}."
    return Recommendation(
        answer="mixed" if mixed else "cloud", pick=None, pick_label=None, cloud_pick=cheapest.id, mixed=mixed,
        ruled_out_by=ruled[1], message=message, **rec,
    )


def certified_line(cert: Certification | None) -> str:
    if cert is None:
        return "Not certified for this budget (`toolkit profile` re-measures the pick for the recipe's budget)."
    return f"Certified: meets the budget in {cert.passed}/{len(cert.runs)} fresh runs."


def contenders(report: DeviceReport, budget: Budget, costs: Costs, margin: float) -> set[str]:
    """Variants that could still be the pick if run-to-run noise moved every timing by `margin` (noise.py)."""
    profiled = sorted({p.prompt_tokens for prof in report.profiles for p in prof.prompts})
    if not profiled:
        return set()
    options, _ = _options(report, budget.ttft_prompt_tokens or max(profiled), budget.output_tokens, costs)
    vetoes = certification_vetoes(report, budget_key(budget, costs))
    return noise.can_still_win(options, budget_limits(budget), budget.priority, budget.alpha, margin, vetoes)


def check_run(report: DeviceReport, run: Profile, budget: Budget, costs: Costs, prompt_tokens: int) -> Option:
    """One fresh-process measurement of a variant, with its fidelity and accuracy, checked against the budget."""
    options, _ = _options(report.model_copy(update={"profiles": [run]}), prompt_tokens, budget.output_tokens, costs)
    option = options[0]
    option.violations = check(option, budget_limits(budget)) if option.status == "ok" else []
    return option


def mean_accuracy(report: DeviceReport) -> dict[str, float]:
    """Mean score over the tasks every variant was evaluated on (variants missing a task get none)."""
    tasks = sorted({r.task for r in report.accuracy})
    by_variant: dict[str, dict[str, float]] = {}
    for r in report.accuracy:
        if r.status == "ok" and r.value is not None:
            by_variant.setdefault(r.variant_id, {})[r.task] = r.value
    return {vid: sum(s.values()) / len(tasks) for vid, s in by_variant.items() if tasks and len(s) == len(tasks)}


def _options(report: DeviceReport, prompt_tokens: int, output_tokens: int, costs: Costs):
    quality = {q.variant_id: q for q in report.quality if q.status == "ok"}
    accuracy = mean_accuracy(report)
    sizes = {v.id: v.size_bytes / 2**20 for v in report.variants}
    options, details = [], {}
    for prof in report.profiles:
        q = quality.get(prof.variant_id)
        timing = prof.prompt(prompt_tokens) if prof.status == "ok" else None
        watts = _watts(report, prof)
        timed, response_s = _timed(_figures(timing.ttft_ms if timing else None), _figures(prof.decode_tps),
                                   watts, output_tokens, costs)
        metrics = {
            "ttft_ms": timed["ttft_ms"],
            "decode_tps": timed["decode_tps"],
            "memory_mb": prof.deploy_rss_mb if prof.deploy_rss_mb is not None else prof.peak_rss_mb,
            "perplexity": q.perplexity if q else None,
            "accuracy": round(accuracy[prof.variant_id], 5) if prof.variant_id in accuracy else None,
            "kl": q.kl_mean if q else None,
            "energy_j": timed["energy_j"],
            "cost_per_1k_usd": timed["cost_per_1k_usd"],
        }
        details[prof.variant_id] = {
            "ttft_ms_median": round(timing.ttft_ms.median, 2) if timing else None,
            "prefill_tps_median": round(timing.prefill_tps.median, 1) if timing else None,
            "decode_tps_median": round(prof.decode_tps.median, 2) if prof.decode_tps else None,
            "itl_ms_p50": round(prof.itl_ms.median, 3) if prof.itl_ms else None,
            "itl_ms_p90": round(prof.itl_ms.p90, 3) if prof.itl_ms else None,
            "load_ms": prof.load_ms,
            "process_peak_mb": prof.peak_rss_mb,
            "response_s": round(response_s, 3) if response_s else None,
            "watts": round(watts, 2) if watts and response_s else None,
            "top1_agreement": q.top1_agreement if q else None,
            **_predicted(report, prof),
            **{f"acc_{r.task}": r.value for r in report.accuracy if r.variant_id == prof.variant_id and r.status == "ok"},
        }
        status = prof.status if prof.status != "ok" or timing else "skipped"
        options.append(Option(id=prof.variant_id, label=prof.variant_name, metrics=metrics, status=status,
                              reason=prof.reason, size_mb=sizes.get(prof.variant_id)))
    return options, details


Figures = dict[str, float]


def _figures(stat: Stat | None) -> Figures | None:
    return {"median": stat.median, "p10": stat.p10, "p90": stat.p90} if stat else None


def _timed(ttft: Figures | None, decode: Figures | None, watts: float | None, output_tokens: int,
           costs: Costs) -> tuple[dict[str, float | None], float | None]:
    """The budget figures that come from timings (TTFT p90, decode p10, energy, cost) and the response time."""
    response_s = ttft["median"] / 1000 + output_tokens / decode["median"] if ttft and decode and decode["median"] else None
    energy = watts * response_s if watts and response_s else None
    return {
        "ttft_ms": round(ttft["p90"], 2) if ttft else None,
        "decode_tps": round(decode["p10"], 2) if decode else None,
        "energy_j": round(energy, 3) if energy is not None else None,
        "cost_per_1k_usd": _edge_cost_per_1k(energy, response_s, costs),
    }, response_s


def _draws(report: DeviceReport, options: list[Option], prompt_tokens: int, output_tokens: int,
           costs: Costs) -> Iterator[list[Option]]:
    """noise.RESAMPLES option sets, each with the timing figures of every measured variant recomputed from
    its repeats redrawn with replacement (see noise.py); everything else as measured."""
    rng = np.random.default_rng(noise.SEED)
    n = noise.RESAMPLES
    measured = {o.id: o for o in options if o.status == "ok"}
    profiles = [p for p in report.profiles if p.variant_id in measured]
    ttfts = {p.variant_id: t.ttft_ms if (t := p.prompt(prompt_tokens)) else None for p in profiles}
    sigma = {"ttft": noise.process_sigma(ttfts.values()), "decode": noise.process_sigma(p.decode_tps for p in profiles),
             "rapl": noise.process_sigma(p.rapl_watts for p in profiles)}
    columns = []
    for prof in profiles:
        o = measured[prof.variant_id]
        ttft = noise.resample(ttfts[prof.variant_id], rng, n, sigma["ttft"])
        decode = noise.resample(prof.decode_tps, rng, n, sigma["decode"])
        rapl = noise.resample(prof.rapl_watts, rng, n, sigma["rapl"])
        watts = rapl["median"] if rapl else [_watts(report, prof)] * n
        columns.append((o, ttft, decode, watts))
    for b in range(n):
        drawn = []
        for o, ttft, decode, watts in columns:
            timed, _ = _timed(_at(ttft, b), _at(decode, b), watts[b], output_tokens, costs)
            drawn.append(Option(id=o.id, label=o.label, metrics={**o.metrics, **timed}, size_mb=o.size_mb))
        yield drawn


def _at(column: dict[str, list[float]] | None, b: int) -> Figures | None:
    return {k: v[b] for k, v in column.items()} if column else None


def _predicted(report: DeviceReport, prof: Profile) -> dict[str, float]:
    """Roofline predictions for this variant on this device, to set beside the measured figures."""
    variant = next((v for v in report.variants if v.id == prof.variant_id), None)
    if report.roofline is None or variant is None:
        return {}
    out = {"predicted_decode_tps": round(roofline_decode_tps(variant.size_bytes, report.roofline.bandwidth_gbs), 1)}
    if variant.n_params:
        out["predicted_prefill_tps"] = round(roofline_prefill_tps(variant.n_params, report.roofline.gflops), 1)
    return out


def _watts(report: DeviceReport, prof: Profile) -> float | None:
    if prof.rapl_watts:
        return prof.rapl_watts.median
    return report.power.busy_w if report.power else None


def _energy_source(report: DeviceReport) -> str:
    if any(p.rapl_watts for p in report.profiles):
        return "measured: RAPL package energy during the timed runs"
    if report.power:
        return f"estimated: busy power {report.power.busy_w:g} W x measured response time ({report.power.note})"
    return "unknown: no RAPL counters and no device.power figures in the recipe"


def _edge_cost_per_1k(energy_j: float | None, response_s: float | None, costs: Costs) -> float | None:
    if energy_j is None or response_s is None:
        return None
    per_response = energy_j / J_PER_KWH * costs.electricity_usd_per_kwh + costs.device_usd_per_hour * response_s / 3600
    return round(per_response * 1000, 8)


def _cloud_row(cloud: CloudModel, prompt_tokens: int, budget: Budget) -> CloudRow:
    cost = cloud.cost_usd(prompt_tokens, budget.output_tokens) * 1000
    option = Option(
        id=cloud.id, label=cloud.id,
        metrics={"ttft_ms": cloud.first_token_ms(), "decode_tps": cloud.tokens_per_s, "cost_per_1k_usd": cost},
    )
    return CloudRow(
        id=cloud.id, provider=cloud.provider, model=cloud.model, ttft_ms=cloud.first_token_ms(),
        decode_tps=cloud.tokens_per_s, response_s=round(cloud.response_s(budget.output_tokens), 3),
        cost_per_1k_usd=round(cost, 6), violations=check(option, budget_limits(budget, CLOUD_LIMITS)),
        formula=cloud.formula(prompt_tokens, budget.output_tokens), price_source=cloud.price_source,
    )


def _mixed(report, options, budget, costs, prompt_tokens, cloud) -> Mixed | None:
    """Edge for the prompts it can serve in budget (shorter ones), cloud for the rest."""
    if cloud is None or budget.max_ttft_ms is None:
        return None
    shorter = sorted({p.prompt_tokens for prof in report.profiles for p in prof.prompts if p.prompt_tokens < prompt_tokens}, reverse=True)
    for length in shorter:
        opts, _ = _options(report, length, budget.output_tokens, costs)
        pick = select(opts, budget_limits(budget), budget.priority, budget.alpha)
        if pick:
            rule = f"prompts up to {length} tokens on {pick.label} (edge), longer prompts to {_cloud_name(cloud)}"
            return Mixed(edge_variant=pick.id, edge_label=pick.label, max_prompt_tokens=length, cloud=cloud.id, rule=rule)
    return None


def _rows(report: DeviceReport, options: list[Option], details: dict, win: dict[str, float] | None) -> list[Row]:
    variants = {v.id: v for v in report.variants}
    rounds = {p.variant_id: p.rounds for p in report.profiles if p.status == "ok"}
    return [
        Row(
            variant_id=o.id, label=o.label, format=variants[o.id].format, quant=variants[o.id].quant,
            size_mb=round(variants[o.id].size_bytes / 2**20, 1), bits_per_weight=variants[o.id].bits_per_weight,
            status=o.status, metrics=o.metrics, detail=details[o.id], on_front=o.on_front, dominated_by=o.dominated_by,
            violations=o.violations, utility=round(o.utility, 4) if o.utility is not None else None,
            pcr=round(o.pcr, 3) if o.pcr is not None else None, verdict=o.verdict,
            win_probability=round(win.get(o.id, 0.0), 3) if win is not None and o.status == "ok" else None,
            rounds=rounds.get(o.id, 0),
        )
        for o in options
    ]


def _notes(report: DeviceReport) -> list[str]:
    notes = sorted({n for v in report.variants for n in v.notes if "dequantized" in n})
    return [f"Reference weights: {n}." for n in notes]


def _closest(options: list[Option]) -> tuple[str, list[str]]:
    measured = [o for o in options if o.status == "ok"]
    if not measured:
        return "no variant was measured successfully", []
    nearest = min(measured, key=lambda o: (len(o.violations), o.id))
    return f"closest is {nearest.label}: " + "; ".join(nearest.violations), nearest.violations


def _cheapest_edge(options: list[Option]) -> Option | None:
    priced = [o for o in options if o.status == "ok" and o.metrics.get("cost_per_1k_usd") is not None]
    return min(priced, key=lambda o: o.metrics["cost_per_1k_usd"], default=None)


def _edge_cost(pick: Option) -> str:
    cost, energy = pick.metrics.get("cost_per_1k_usd"), pick.metrics.get("energy_j")
    if cost is None:
        return "energy and cost unknown (no RAPL, no device.power in the recipe)"
    return f"{energy:.1f} J and {_usd(cost)} per 1,000 responses"


def _cloud_name(cloud: CloudRow | None) -> str:
    return f"{cloud.provider} {cloud.model}" if cloud else "none"


def _usd(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"
