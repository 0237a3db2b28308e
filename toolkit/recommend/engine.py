"""From a device report, a budget, costs and the cloud catalogue to a recommendation with reasons."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

from toolkit.errors import UserError
from toolkit.profiling.meters.summary import energy_source
from toolkit.recipe import Budget, Costs
from toolkit.recommend import noise
from toolkit.recommend.cloud import CloudModel
from toolkit.recommend.keys import budget_key, budget_limits, certification_vetoes, pick_key
from toolkit.recommend.notes import priority_notes, report_notes
from toolkit.recommend.options import draws, noise_margin, options_at
from toolkit.recommend.ruled_out import admitted, untimed
from toolkit.recommend.select import (
    STICKY_RULE,
    TIE_RULE,
    Option,
    check,
    choose,
    explain,
    select,
    shared_objectives,
)
from toolkit.records import Certification, DeviceReport, Profile, Record

# What a cloud answer is checked against: latency, speed and price; memory and energy are not the
# edge device's, and perplexity is not comparable across tokenizers (a hosted model is far larger).
CLOUD_LIMITS = {"ttft_ms", "decode_tps", "cost_per_1k_usd"}


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    variant_id: str
    label: str
    model: str = ""  # the candidate model the variant comes from
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
    unmeasured: list[str] = []  # ruled out by the staged search under the recipe's budget, not by this one
    message: str
    rows: list[Row]
    cloud_rows: list[CloudRow] = []
    notes: list[str] = []
    resamples: int = 0  # bootstrap resamples behind each row's win_probability (0: not computed)
    tied_with: list[str] = []  # variants statistically tied with the pick (noise.py), best first
    tie_rule: str | None = None  # how the tie was broken, when tied_with is not empty
    tie_equivalence: float | None = None  # share of resamples with the tie set's utilities within 0.01 (balanced)
    certification: Certification | None = None  # the pick re-measured in fresh processes against this budget


def recommend(report: DeviceReport, budget: Budget, costs: Costs | None = None, providers: list[CloudModel] | None = None,
              recipe_prompt: int | None = None) -> Recommendation:
    """`recipe_prompt` (Recipe.response_prompt_tokens): the prompt when no variant was timed (rows say why)."""
    costs = costs or Costs()
    profiled = sorted({p.prompt_tokens for prof in report.profiles for p in prof.prompts})
    prompt_tokens = budget.ttft_prompt_tokens or (max(profiled) if profiled else recipe_prompt)
    if not report.profiles or prompt_tokens is None:
        raise UserError("the device report holds no successful profile; nothing to recommend from")
    if profiled and prompt_tokens not in profiled:
        raise UserError(f"no TTFT measured at {prompt_tokens} tokens (measured: {profiled})", field="budget.ttft_prompt_tokens")
    options, details = options_at(report, prompt_tokens, budget.output_tokens, costs)
    limits = budget_limits(budget)
    key = budget_key(budget, costs)
    vetoes = certification_vetoes(report, key)
    order = choose(options, limits, budget.priority, budget.alpha, vetoes)
    pick, tied, win, rule, equivalent = (order[0] if order else None), [], {}, TIE_RULE, None
    reach = noise.within_reach(options, limits, noise_margin(report), vetoes) if pick else set()
    if pick and noise.spread_measured([p for p in report.profiles if p.variant_id in reach], prompt_tokens):
        drawn = draws(report, options, prompt_tokens, budget.output_tokens, costs, reach)
        utilities: list[dict[str, float]] = []
        win = noise.win_probabilities(drawn, limits, budget.priority, budget.alpha, vetoes, utilities)
        previous = report.previous_picks.get(pick_key(budget, costs))
        pick, tied = noise.settle(order, win, previous=previous)
        rule = STICKY_RULE if pick is not noise.settle(order, win)[0] else TIE_RULE  # when keeping it changed the pick
        if len(tied) > 1 and budget.priority == "balanced":
            equivalent = round(noise.equivalence(utilities, [o.id for o in tied]), 3)
    explain(options, pick, budget.priority, win, tied, rule)
    pending = admitted(report, options, budget, noise_margin(report))
    for o in pending:
        o.verdict += "; this budget would not rule it out: not compared with the pick until measured under it"
    provisional = f" {_provisional(pending)}" if pending else ""
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
        energy_source=energy_source(report),
        objectives=shared_objectives([o for o in options if o.feasible] or options),
        rows=_rows(report, options, details, win or None),
        cloud_rows=clouds,
        notes=report_notes(report, prompt_tokens, budget.output_tokens) + priority_notes(options, budget.priority)
        + ([noise.SINGLE_TIMINGS] if pick and not win else []),
        unmeasured=[o.id for o in pending],
        resamples=noise.RESAMPLES if win else 0,
        tied_with=[o.id for o in tied if o is not pick],
        tie_rule=rule if len(tied) > 1 else None,
        tie_equivalence=equivalent,
    )
    cheapest = feasible_cloud[0] if feasible_cloud else None
    if pick:
        cert = next((c for c in report.certifications if c.variant_id == pick.id and c.budget_key == key), None)
        failed = [o.label for o in options if o.id in vetoes]
        extra = f" Cheapest cloud meeting the budget: {_cloud_name(cheapest)}." if cheapest else ""
        return Recommendation(
            answer="edge", pick=pick.id, pick_label=pick.label, certification=cert,
            message=f"Run {pick.label} on {report.device.cpu_model} ({report.device.threads_used} threads): "
            f"{_edge_cost(pick)}. {certified_line(cert, failed)}{extra}{provisional}",
            **rec,
        )
    ruled = _closest(options)
    if cheapest is None:
        return Recommendation(
            answer="none", pick=None, pick_label=None, ruled_out_by=ruled[1],
            message=f"No variant meets the budget on this device ({ruled[0]}), and no cloud option does either.{provisional}",
            **rec,
        )
    mixed = _mixed(report, budget, costs, prompt_tokens, cheapest)
    best_edge = _cheapest_edge(options)
    edge_cost = f"; the cheapest edge variant, {best_edge.label}, would cost {_usd(best_edge.metrics['cost_per_1k_usd'])}" if best_edge and best_edge.metrics.get("cost_per_1k_usd") else ""
    message = (
        f"No edge variant meets the budget ({ruled[0]}). Cloud fallback: {_cloud_name(cheapest)} at "
        f"{_usd(cheapest.cost_per_1k_usd)} per 1,000 responses{edge_cost}."
    )
    if mixed:
        message += f" Mixed: {mixed.rule}."
    message += provisional
    return Recommendation(
        answer="mixed" if mixed else "cloud", pick=None, pick_label=None, cloud_pick=cheapest.id, mixed=mixed,
        ruled_out_by=ruled[1], message=message, **rec,
    )


def _provisional(pending: list[Option]) -> str:
    names = ", ".join(o.label for o in pending)
    return (f"Provisional: the staged search did not measure {names} further under the recipe's budget, and this "
            "budget would not rule them out; put it in the recipe and rerun `toolkit run` (cached work is reused) "
            "to compare them.")


def certified_line(cert: Certification | None, failed: list[str] | None = None) -> str:
    """The certification sentence; `failed`: the picks before this one that failed this budget's."""
    if cert is None and failed:
        return (f"Not certified: the picks before it failed certification ({', '.join(failed)}), and the time for "
                "certifying (device.extra_time_s) ran out before its turn.")
    if cert is None:
        return "Not certified for this budget (`toolkit profile` re-measures the pick for the recipe's budget)."
    return f"Certified: meets the budget in {cert.passed}/{len(cert.runs)} fresh runs."


def contenders(report: DeviceReport, budget: Budget, costs: Costs, margin: float) -> set[str]:
    """Variants that could still be the pick if run-to-run noise moved every timing by `margin` (noise.py)."""
    profiled = sorted({p.prompt_tokens for prof in report.profiles for p in prof.prompts})
    if not profiled:
        return set()
    options, _ = options_at(report, budget.ttft_prompt_tokens or max(profiled), budget.output_tokens, costs)
    vetoes = certification_vetoes(report, budget_key(budget, costs))
    return noise.can_still_win(options, budget_limits(budget), budget.priority, budget.alpha, margin, vetoes)


def check_run(report: DeviceReport, run: Profile, budget: Budget, costs: Costs, prompt_tokens: int) -> Option:
    """One fresh-process measurement of a variant, with its fidelity and accuracy, checked against the budget."""
    options, _ = options_at(report.model_copy(update={"profiles": [run]}), prompt_tokens, budget.output_tokens, costs)
    option = options[0]
    option.violations = check(option, budget_limits(budget)) if option.status == "ok" else []
    return option


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


def _mixed(report: DeviceReport, budget: Budget, costs: Costs, prompt_tokens: int, cloud: CloudRow) -> Mixed | None:
    """Edge for the prompts it can serve in budget (shorter ones), `cloud` for the rest."""
    if budget.max_ttft_ms is None:
        return None
    shorter = sorted({p.prompt_tokens for prof in report.profiles for p in prof.prompts if p.prompt_tokens < prompt_tokens}, reverse=True)
    for length in shorter:
        opts, _ = options_at(report, length, budget.output_tokens, costs)
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
            variant_id=o.id, label=o.label, model=variants[o.id].model, format=variants[o.id].format, quant=variants[o.id].quant,
            size_mb=round(variants[o.id].size_bytes / 2**20, 1), bits_per_weight=variants[o.id].bits_per_weight,
            status=o.status, metrics=o.metrics, detail=details[o.id], on_front=o.on_front, dominated_by=o.dominated_by,
            violations=o.violations, utility=round(o.utility, 4) if o.utility is not None else None,
            pcr=round(o.pcr, 3) if o.pcr is not None else None, verdict=o.verdict,
            win_probability=round(win.get(o.id, 0.0), 3) if win is not None and o.status == "ok" else None,
            rounds=rounds.get(o.id, 0),
        )
        for o in options
    ]


def _closest(options: list[Option]) -> tuple[str, list[str]]:
    measured = [o for o in options if o.status == "ok"]
    if not measured:
        return untimed(options), []
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


def _cloud_name(cloud: CloudRow) -> str:
    return f"{cloud.provider} {cloud.model}"


def _usd(value: float) -> str:
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"
