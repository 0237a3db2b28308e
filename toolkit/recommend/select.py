"""Pure selection logic: Pareto front, budget check, pick, and a reason for every variant."""

from __future__ import annotations

from dataclasses import dataclass, field

# metric -> direction; every metric is checked against its conservative figure (p90 latency, p10 speed).
OBJECTIVES: dict[str, str] = {
    "ttft_ms": "min",
    "decode_tps": "max",
    "memory_mb": "min",
    "perplexity": "min",
    "accuracy": "max",
    "energy_j": "min",
    "cost_per_1k_usd": "min",
}
UNITS = {"ttft_ms": "ms", "decode_tps": "tok/s", "memory_mb": "MB", "perplexity": "", "accuracy": "", "kl": "nats",
         "energy_j": "J", "cost_per_1k_usd": "USD"}
NAMES = {
    "ttft_ms": "TTFT p90", "decode_tps": "decode (p10)", "memory_mb": "peak memory", "perplexity": "perplexity",
    "accuracy": "mean accuracy", "kl": "KL divergence",
    "energy_j": "energy per response", "cost_per_1k_usd": "cost per 1,000 responses",
}
BETTER = {
    "ttft_ms": "lower TTFT", "decode_tps": "faster decode", "memory_mb": "less memory", "perplexity": "lower perplexity",
    "accuracy": "higher accuracy",
    "energy_j": "less energy", "cost_per_1k_usd": "cheaper",
}


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
    on_front: bool = False
    violations: list[str] = field(default_factory=list)
    dominated_by: str | None = None
    utility: float | None = None
    pcr: float | None = None
    verdict: str = ""


def dominates(a: dict[str, float], b: dict[str, float], objectives: list[str]) -> bool:
    """a is at least as good as b everywhere and strictly better somewhere."""
    strictly = False
    for m in objectives:
        x, y = (a[m], b[m]) if OBJECTIVES[m] == "min" else (-a[m], -b[m])
        if x > y:
            return False
        strictly = strictly or x < y
    return strictly


def shared_objectives(options: list[Option]) -> list[str]:
    """Objectives every measured option has a value for."""
    ok = [o for o in options if o.status == "ok"]
    return [m for m in OBJECTIVES if ok and all(o.metrics.get(m) is not None for o in ok)]


def pareto_front(options: list[Option], objectives: list[str]) -> list[Option]:
    ok = [o for o in options if o.status == "ok"]
    return [o for o in ok if not any(dominates(p.metrics, o.metrics, objectives) for p in ok if p is not o)]


def check(option: Option, limits: list[Limit]) -> list[str]:
    out = []
    for limit in limits:
        value = option.metrics.get(limit.metric)
        if value is None:
            out.append(f"{NAMES[limit.metric]} not measured")
            continue
        gap = limit.violation(value)
        if gap > 0:
            sign = ">" if limit.kind == "max" else "<"
            unit = UNITS[limit.metric]
            digits = {"cost_per_1k_usd": 4, "kl": 4, "accuracy": 3}.get(limit.metric, 1)
            out.append(
                f"{NAMES[limit.metric]} {value:.{digits}f} {unit} {sign} {limit.bound:g} {unit} "
                f"({'over' if limit.kind == 'max' else 'under'} by {gap:.{digits}f}{(' ' + unit) if unit else ''})"
            )
    return out


def utilities(options: list[Option], alpha: float) -> dict[str, float]:
    """U = alpha * quality + (1 - alpha) * responsiveness, each in (0, 1] relative to the best option.

    quality = the mean of accuracy / best accuracy (where every option has accuracy) and best perplexity /
    perplexity (fidelity: accuracy on a few dozen items is noisy, perplexity is not), 1 when neither is
    measured; responsiveness = mean of decode / best decode and best TTFT / TTFT.
    """
    ok = [o for o in options if o.status == "ok"]
    if not ok:
        return {}
    best = {m: _best(ok, m) for m in OBJECTIVES}
    use_accuracy = shared_objectives(options)
    out = {}
    for o in ok:
        m = o.metrics
        signals = []
        if "accuracy" in use_accuracy and best["accuracy"]:
            signals.append((m["accuracy"] or 0.0) / best["accuracy"])
        if best["perplexity"] and m.get("perplexity"):
            signals.append(best["perplexity"] / m["perplexity"])
        quality = sum(signals) / len(signals) if signals else 1.0
        speed = m["decode_tps"] / best["decode_tps"] if best["decode_tps"] else 1.0
        ttft = best["ttft_ms"] / m["ttft_ms"] if best["ttft_ms"] and m.get("ttft_ms") else 1.0
        out[o.id] = alpha * quality + (1 - alpha) * (speed + ttft) / 2
    return out


def _best(options: list[Option], metric: str) -> float | None:
    values = [o.metrics[metric] for o in options if o.metrics.get(metric) is not None]
    if not values:
        return None
    return min(values) if OBJECTIVES[metric] == "min" else max(values)


def performance_cost_ratio(option: Option) -> float | None:
    """The Edge-First paper's PCR = U / cost, with cost per 1,000 responses in USD."""
    cost = option.metrics.get("cost_per_1k_usd")
    if option.utility is None or not cost:
        return None
    return option.utility / cost


def _quality_key(o: Option) -> float:
    acc = o.metrics.get("accuracy")
    return -acc if acc is not None else (o.metrics.get("perplexity") or 0.0)


PRIORITY_KEY = {
    "pcr": lambda o: (-(o.pcr or 0.0), -(o.utility or 0.0)),
    "cost": lambda o: (o.metrics.get("cost_per_1k_usd") or 0.0, -o.metrics["decode_tps"]),
    "quality": lambda o: (_quality_key(o), o.metrics.get("perplexity") or 0.0, -o.metrics["decode_tps"]),
    "speed": lambda o: (-o.metrics["decode_tps"], o.metrics["ttft_ms"]),
    "memory": lambda o: (o.metrics["memory_mb"], -o.metrics["decode_tps"]),
}


def select(options: list[Option], limits: list[Limit], priority: str, alpha: float) -> Option | None:
    """Mark front, violations, utility and a verdict on every option; return the pick or None."""
    objectives = shared_objectives(options)
    front = {o.id for o in pareto_front(options, objectives)}
    scores = utilities(options, alpha)
    for o in options:
        o.on_front = o.id in front
        o.utility = scores.get(o.id)
        o.pcr = performance_cost_ratio(o)
        if o.status == "ok":
            o.violations = check(o, limits)
            o.dominated_by = None if o.on_front else _dominator(o, options, objectives)
    # Only front members can be picked: a dominated option always has a feasible, better twin.
    feasible = [o for o in options if o.status == "ok" and not o.violations and o.on_front]
    if priority == "balanced":
        pick = max(feasible, key=lambda o: (o.utility, o.id), default=None)
    else:
        pick = min(feasible, key=lambda o: (PRIORITY_KEY[priority](o), o.id), default=None)
    for o in options:
        o.verdict = _verdict(o, pick, options, objectives, priority)
    return pick


def _dominator(o: Option, options: list[Option], objectives: list[str]) -> str | None:
    better = [p for p in options if p.status == "ok" and p is not o and dominates(p.metrics, o.metrics, objectives)]
    if not better:
        return None
    return max(better, key=lambda p: (p.on_front, p.utility or 0)).id


def _verdict(o: Option, pick: Option | None, options: list[Option], objectives: list[str], priority: str) -> str:
    if o.status != "ok":
        return f"not measured: {o.status}" + (f" ({o.reason})" if o.reason else "")
    if pick is not None and o.id == pick.id:
        how = {
            "balanced": f"highest utility U={o.utility:.3f}",
            "pcr": f"highest performance-cost ratio PCR={o.pcr or 0:.1f} (U={o.utility:.3f})",
        }.get(priority, f"best {priority} in budget")
        return f"PICK: {how}"
    if o.violations:
        return "breaks the budget: " + "; ".join(o.violations)
    if o.dominated_by:
        winner = next(p for p in options if p.id == o.dominated_by)
        edges = [BETTER[m] for m in objectives if _strictly_better(winner.metrics, o.metrics, m)]
        return f"dominated by {winner.label} ({', '.join(edges)})"
    if pick is not None and priority == "balanced":
        return f"on the front, lower utility U={o.utility:.3f} < {pick.utility:.3f}"
    if pick is not None and priority == "pcr" and o.pcr is not None and pick.pcr is not None:
        return f"on the front, lower PCR {o.pcr:.1f} < {pick.pcr:.1f}"
    return f"on the front, not the best for priority '{priority}'"


def _strictly_better(a: dict, b: dict, metric: str) -> bool:
    return a[metric] < b[metric] if OBJECTIVES[metric] == "min" else a[metric] > b[metric]
