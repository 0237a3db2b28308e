"""Pure selection logic: budget check, then Pareto front, utility and pick among what meets the budget.

Order of decisions (right by construction):
1. feasible = measured (status ok) and every limit met, on the conservative figures (p90 latency, p10 speed);
   a missing figure that a limit needs breaks the budget;
2. the front is the Pareto front *of the feasible options* ("in-budget front"): a variant over budget can
   neither be on it nor push a feasible one off it;
3. utility is normalised by the best feasible option, and the pick is the best feasible option by the
   priority (ties within TOLERANCE: undominated first, then TIE_RULE). Over-budget variants do not move it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from toolkit.recommend.metrics import BY_KEY, OBJECTIVES

# The Pareto objectives and their directions come from the metrics table; every limit is checked against
# the conservative figure (p90 latency, p10 speed).
TIE_RULE = "higher win probability, then lower KL, then lower perplexity (bits per byte across models), then smaller file"
STICKY_RULE = "keeping this device's previous certified pick, which is still among them"  # noise.settle
SPEED_SIGNALS = ("decode_tps", "ttft_ms")
# How well a model predicts the corpus: perplexity is per token of the model's own tokenizer, so it compares
# variants of one model only; bits per byte (the same text, per UTF-8 byte) compares across models.
PER_TOKEN, PER_BYTE = "perplexity", "bits_per_byte"
RULED_OUT = "not measured further: "  # the reason's start for a variant the staged search left (pipeline/search.py)


@dataclass(frozen=True)
class Limit:
    metric: str
    bound: float
    kind: str  # "max" or "min"

    def violation(self, value: float) -> float:
        """How far `value` is outside the limit (0 when inside)."""
        over = value - self.bound if self.kind == "max" else self.bound - value
        return max(over, 0.0)


@dataclass
class Option:
    id: str
    label: str
    metrics: dict[str, float | None]
    status: str = "ok"
    reason: str | None = None
    size_mb: float | None = None
    model: str = ""  # the candidate model: perplexity compares within one model only
    on_front: bool = False
    violations: list[str] = field(default_factory=list)
    dominated_by: str | None = None
    utility: float | None = None
    pcr: float | None = None
    verdict: str = ""

    @property
    def feasible(self) -> bool:
        """Measured and within every limit (valid once `choose` or `select` has checked the limits)."""
        return self.status == "ok" and not self.violations


def dominates(a: dict[str, float | None], b: dict[str, float | None], objectives: list[str]) -> bool:
    """a is at least as good as b everywhere and strictly better somewhere (objectives both have)."""
    strictly = False
    for m in objectives:
        x, y = a[m], b[m]
        assert x is not None and y is not None
        x, y = (x, y) if OBJECTIVES[m] == "min" else (-x, -y)
        if x > y:
            return False
        strictly = strictly or x < y
    return strictly


def likelihood_measure(options: list[Option]) -> str:
    """The corpus-likelihood figure these options compare on: perplexity when they all come from one model
    (one tokenizer), bits per byte when they span several models."""
    return PER_BYTE if len({o.model for o in options if o.status == "ok"}) > 1 else PER_TOKEN


def shared_objectives(options: list[Option]) -> list[str]:
    """Objectives every measured option in `options` has a value for (one of perplexity and bits per byte,
    see `likelihood_measure`: the two order one model's variants alike)."""
    ok = [o for o in options if o.status == "ok"]
    unused = ({PER_TOKEN, PER_BYTE} - {likelihood_measure(ok)})
    return [m for m in OBJECTIVES if ok and m not in unused and all(o.metrics.get(m) is not None for o in ok)]


def pareto_front(options: list[Option], objectives: list[str]) -> list[Option]:
    ok = [o for o in options if o.status == "ok"]
    return [o for o in ok if not any(dominates(p.metrics, o.metrics, objectives) for p in ok if p is not o)]


def check(option: Option, limits: list[Limit]) -> list[str]:
    out = []
    for limit in limits:
        value = option.metrics.get(limit.metric)
        metric = BY_KEY[limit.metric]
        if value is None:
            out.append(f"{metric.name} not measured{metric.missing}")
            continue
        gap = limit.violation(value)
        if gap > 0:
            sign = ">" if limit.kind == "max" else "<"
            unit, digits = f" {metric.unit}" if metric.unit else "", metric.limit_digits
            out.append(f"{metric.name} {value:.{digits}f}{unit} {sign} {limit.bound:g}{unit} "
                       f"({'over' if limit.kind == 'max' else 'under'} by {gap:.{digits}f}{unit})")
    return out


def utilities(options: list[Option], alpha: float) -> dict[str, float | None]:
    """U = alpha * quality + (1 - alpha) * responsiveness, relative to the best *feasible* option.

    The basis is the feasible options (all measured ones when none is feasible). A signal counts when every
    basis option has it and its best value is > 0: quality = mean of accuracy / best and best perplexity /
    perplexity (bits per byte in place of perplexity across models; 1 when neither counts), responsiveness = mean of decode / best and best TTFT / TTFT (1 when
    neither counts). A feasible option's U is <= 1; an option lacking a counted signal gets None.
    """
    ok = [o for o in options if o.status == "ok"]
    basis = [o for o in ok if o.feasible] or ok
    quality_signals = ("accuracy", likelihood_measure(basis))
    best = {m: _best(basis, m) for m in quality_signals + SPEED_SIGNALS}
    used = [m for m, b in best.items() if b is not None and b > 0 and all(o.metrics.get(m) is not None for o in basis)]
    out: dict[str, float | None] = {}
    for o in ok:
        ratios = {m: _ratio(o.metrics.get(m), best[m], OBJECTIVES[m]) for m in used}
        if any(r is None for r in ratios.values()):
            out[o.id] = None
            continue
        quality = [r for m, r in ratios.items() if m in quality_signals]
        speed = [r for m, r in ratios.items() if m in SPEED_SIGNALS]
        out[o.id] = alpha * _mean(quality) + (1 - alpha) * _mean(speed)
    return out


def _ratio(value: float | None, best: float | None, direction: str) -> float | None:
    if value is None or best is None or (direction == "min" and value <= 0):
        return None
    return value / best if direction == "max" else best / value


def _mean(values: list) -> float:
    return sum(values) / len(values) if values else 1.0


def _best(options: list[Option], metric: str) -> float | None:
    values = [v for o in options if (v := o.metrics.get(metric)) is not None]
    if not values:
        return None
    return min(values) if OBJECTIVES[metric] == "min" else max(values)


def performance_cost_ratio(option: Option) -> float | None:
    """The Edge-First paper's PCR = U / cost, with cost per 1,000 responses in USD (None without a cost > 0)."""
    cost = option.metrics.get("cost_per_1k_usd")
    return option.utility / cost if option.utility is not None and cost and cost > 0 else None


def _low(value: float | None) -> float:
    """Sort key for lower-is-better; a missing figure sorts last."""
    return math.inf if value is None else value


def _high(value: float | None) -> float:
    return math.inf if value is None else -value


# Sort keys, best first, of (option, likelihood measure: see likelihood_measure).
PRIORITY_KEY: dict[str, Callable[[Option, str], tuple[float, ...]]] = {
    "balanced": lambda o, _: (_high(o.utility),),
    "pcr": lambda o, _: (_high(o.pcr), _high(o.utility)),
    "cost": lambda o, _: (_low(o.metrics.get("cost_per_1k_usd")), _high(o.metrics.get("decode_tps"))),
    "quality": lambda o, lik: (_high(o.metrics.get("accuracy")), _low(o.metrics.get(lik)), _high(o.metrics.get("decode_tps"))),
    "speed": lambda o, _: (_high(o.metrics.get("decode_tps")), _low(o.metrics.get("ttft_ms"))),
    "memory": lambda o, _: (_low(o.metrics.get("memory_mb")), _high(o.metrics.get("decode_tps"))),
}


def tiebreak(o: Option, likelihood: str = PER_TOKEN) -> tuple:
    """Exact ties in one draw: better fidelity (KL, then perplexity, or bits per byte across models), then the
    smaller file, then the id."""
    return _low(o.metrics.get("kl")), _low(o.metrics.get(likelihood)), _low(o.size_mb), o.id


TOLERANCE = 1e-9  # priority figures this close are equal: the next figure, then the tie rule, decides


def _compare(a: tuple[float, ...], b: tuple[float, ...]) -> int:
    """-1 when key `a` ranks first, 1 when `b` does, 0 when every figure is within TOLERANCE."""
    for x, y in zip(a, b, strict=True):
        if abs(x - y) > TOLERANCE:  # two missing figures (inf) are equal: inf - inf is nan
            return -1 if x < y else 1
    return 0


def ranking(options: list[Option], priority: str) -> list[Option]:
    """Feasible options, best first: by the priority, figures within TOLERANCE counting as equal (a PCR that
    differs in the tenth decimal is the same PCR); ties go to undominated options, then TIE_RULE."""
    feasible = [o for o in options if o.feasible]
    objectives = shared_objectives(feasible)
    likelihood = likelihood_measure(feasible)
    keys = {o.id: PRIORITY_KEY[priority](o, likelihood) for o in feasible}
    ordered = sorted(feasible, key=functools.cmp_to_key(lambda a, b: _compare(keys[a.id], keys[b.id])))
    order: list[Option] = []
    while ordered:
        tied = [o for o in ordered if _compare(keys[ordered[0].id], keys[o.id]) == 0]
        tied.sort(key=lambda o: (any(dominates(p.metrics, o.metrics, objectives) for p in feasible), tiebreak(o, likelihood)))
        order += tied
        ordered = [o for o in ordered if o not in tied]
    return order


def choose(options: list[Option], limits: list[Limit], priority: str, alpha: float,
           vetoes: dict[str, str] | None = None) -> list[Option]:
    """Check limits, set utility and PCR on every measured option; return the feasible ones, best first.

    `vetoes` rule options out with a reason that is not a limit (a failed certification). The bootstrap in
    `noise.py` calls this on every resample, so it does no more than the pick needs.
    """
    vetoes = vetoes or {}
    for o in options:
        o.violations = check(o, limits) if o.status == "ok" else []
        if o.status == "ok" and o.id in vetoes:
            o.violations.append(vetoes[o.id])
    scores = utilities(options, alpha)
    for o in options:
        o.utility = scores.get(o.id)
        o.pcr = performance_cost_ratio(o)
    return ranking(options, priority)


def select(options: list[Option], limits: list[Limit], priority: str, alpha: float,
           vetoes: dict[str, str] | None = None) -> Option | None:
    """Mark violations, utility, in-budget front and a verdict on every option; return the pick or None."""
    order = choose(options, limits, priority, alpha, vetoes)
    pick = order[0] if order else None
    explain(options, pick, priority)
    return pick


def explain(options: list[Option], pick: Option | None, priority: str,
            win: dict[str, float] | None = None, tied: list[Option] | None = None, rule: str = TIE_RULE) -> None:
    """Front flags, dominators and verdicts relative to `pick` (which may come from a broken tie)."""
    feasible = [o for o in options if o.feasible]
    objectives = shared_objectives(feasible)
    front = {o.id for o in pareto_front(feasible, objectives)}
    for o in options:
        o.on_front = o.id in front
    for o in options:  # after every front flag is set: the named dominator is the best one on the front
        o.dominated_by = _dominator(o, feasible, objectives) if o.feasible and not o.on_front else None
    for o in options:
        o.verdict = _verdict(o, pick, options, objectives, priority, win or {}, tied or [], rule)


def _dominator(o: Option, feasible: list[Option], objectives: list[str]) -> str | None:
    better = [p for p in feasible if p is not o and dominates(p.metrics, o.metrics, objectives)]
    return max(better, key=lambda p: (p.on_front, p.utility or 0, p.id)).id if better else None


def _verdict(o: Option, pick: Option | None, options: list[Option], objectives: list[str], priority: str,
             win: dict[str, float], tied: list[Option], rule: str = TIE_RULE) -> str:
    if o.reason and o.reason.startswith(RULED_OUT):
        return o.reason
    if o.status == "incomplete":
        return f"not compared: {o.reason}"
    if o.status != "ok":
        return f"not measured: {o.status}" + (f" ({o.reason})" if o.reason else "")
    if o.violations:
        return "breaks the budget: " + "; ".join(o.violations)
    chance = f"win probability {win[o.id]:.2f}" if o.id in win else ""
    if pick is not None and o.id == pick.id:
        how = {
            "balanced": f"highest utility U={o.utility:.3f}",
            "pcr": f"highest performance-cost ratio PCR={o.pcr or 0:.1f} (U={o.utility:.3f})",
        }.get(priority, f"best {priority} in budget")
        if len(tied) > 1:
            others = ", ".join(t.label for t in tied if t is not o)
            return f"PICK: statistically tied with {others}; tie broken by {rule} ({chance}, U={o.utility:.3f})"
        return f"PICK: {how}" + (f" ({chance})" if chance else "")
    if pick is not None and any(t is o for t in tied):
        return f"statistically tied with the pick ({chance}); tie broken by {rule}"
    if o.dominated_by:
        winner = next(p for p in options if p.id == o.dominated_by)
        edges = [BY_KEY[m].better for m in objectives if _strictly_better(winner.metrics, o.metrics, m)]
        return f"dominated by {winner.label} ({', '.join(edges)})"
    if pick is not None and priority == "balanced" and o.utility is not None and pick.utility is not None:
        if o.utility < pick.utility:
            return f"on the front, lower utility U={o.utility:.3f} < {pick.utility:.3f}"
        return f"on the front, same utility U={o.utility:.3f}, ranked after the pick by {TIE_RULE}"
    if pick is not None and priority == "pcr" and o.pcr is not None and pick.pcr is not None:
        return f"on the front, lower PCR {o.pcr:.1f} < {pick.pcr:.1f}"
    return f"on the front, not the best for priority '{priority}'"


def _strictly_better(a: dict, b: dict, metric: str) -> bool:
    return a[metric] < b[metric] if OBJECTIVES[metric] == "min" else a[metric] > b[metric]
