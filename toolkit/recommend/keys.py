"""What a budget's pick and certifications are keyed by, and the limits and vetoes it sets on selection."""

from __future__ import annotations

from toolkit.io import content_hash
from toolkit.recipe import Budget, Costs
from toolkit.recommend.metrics import BY_BUDGET
from toolkit.recommend.select import Limit
from toolkit.records import DeviceReport


def budget_key(budget: Budget, costs: Costs) -> str:
    """What a certification is valid for: the limits, the response shape and the prices (not the priority)."""
    return content_hash(budget.model_dump(exclude={"priority", "alpha"}), costs.model_dump())  # numbers and names


def pick_key(budget: Budget, costs: Costs) -> str:
    """What a pick is the pick for: the whole budget (priority and alpha too) and the prices."""
    return content_hash(budget.model_dump(), costs.model_dump())


FAILED_CERTIFICATION = "failed certification"  # how a veto starts (reports.py finds the vetoed rows by it)


def certification_vetoes(report: DeviceReport, key: str) -> dict[str, str]:
    """Variants whose re-measurement missed this budget in some fresh process: never the pick."""
    out = {}
    for cert in report.certifications:
        if cert.budget_key == key and not cert.certified:
            failed = next(r for r in cert.runs if not r.meets)
            why = "; ".join(failed.violations) or failed.status
            out[cert.variant_id] = f"{FAILED_CERTIFICATION}: met the budget in {cert.passed}/{len(cert.runs)} fresh runs ({why})"
    return out


def budget_limits(budget: Budget, metrics: set[str] | None = None) -> list[Limit]:
    limits = [Limit(m.key, v, m.limit_kind) for field, m in BY_BUDGET.items() if (v := getattr(budget, field)) is not None]
    return [lim for lim in limits if metrics is None or lim.metric in metrics]
