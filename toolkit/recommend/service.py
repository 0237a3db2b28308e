"""Recommendations for a recipe: which device reports, which budget (recipe + overrides), which cloud
options; one device or a fleet. The CLI parses and renders; this builds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.config import validate
from toolkit.errors import UserError
from toolkit.fleet import load_reports
from toolkit.recipe import Budget, Cluster, Recipe
from toolkit.recommend.cloud import CloudModel, load_providers
from toolkit.recommend.engine import Recommendation, recommend
from toolkit.recommend.metrics import BY_BUDGET
from toolkit.recommend.options import QUALITY_METRICS
from toolkit.records import DeviceReport


def providers(recipe: Recipe) -> list[CloudModel]:
    """The cloud options the recipe prices (none when `cloud.enabled` is false)."""
    return load_providers(recipe.cloud.providers, recipe.base_dir, recipe.cloud, recipe.path) if recipe.cloud.enabled else []


def latest_report(recipe: Recipe) -> Path:
    """This workspace's most recent device report."""
    folder = recipe.workspace_dir() / "reports"
    reports = sorted(folder.glob("device-*.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise UserError(f"no device report yet; run `toolkit profile {recipe.path}` or pass --report", file=folder)
    return reports[-1]


def device_reports(recipe: Recipe, paths: list[Path] | None = None) -> list[DeviceReport]:
    """The reports at `paths` (files or folders), or this device's latest."""
    return load_reports(paths) if paths else [DeviceReport.load(latest_report(recipe))]


def with_overrides(recipe: Recipe, section: str, overrides: dict[str, Any]) -> Any:
    """A recipe section with command-line values on top (None = not given), validated like the recipe."""
    current = getattr(recipe, section)
    given = {k: v for k, v in overrides.items() if v is not None}
    if not given:
        return current
    return validate(type(current), current.model_dump() | given, f"{recipe.path} + command-line flags", section)


def budget(recipe: Recipe, **overrides: Any) -> Budget:
    return with_overrides(recipe, "budget", overrides)


def cluster(recipe: Recipe, **overrides: Any) -> Cluster:
    return with_overrides(recipe, "cluster", overrides)


def recommend_each(recipe: Recipe, reports: list[DeviceReport], budget: Budget | None = None) -> list[Recommendation]:
    """One recommendation per device report (a fleet when several), for `budget` (default: the recipe's)."""
    clouds, given = providers(recipe), budget or recipe.budget
    try:
        return [foreign(measured(recommend(report, given, recipe.costs, clouds, recipe.response_prompt_tokens), given), recipe)
                for report in reports]
    except UserError as error:  # a budget field the reports cannot serve: name where the budget came from
        if error.file or not (error.field or "").startswith("budget."):
            raise
        source = recipe.path if given == recipe.budget else f"{recipe.path} + command-line flags"
        raise UserError(error.message, file=source, field=error.field) from None


UNSCORED = "`toolkit evaluate` has not scored fidelity, or there is no reference to compare with"
WHY_UNMEASURED = {"accuracy": "accuracy.tasks names no task, or `toolkit evaluate` has not run",
                  **{key: UNSCORED for key in QUALITY_METRICS if key != "accuracy"}}


def measured(rec: Recommendation, budget: Budget) -> Recommendation:
    """`rec`, unless the budget limits a figure no measured variant has (accuracy without tasks, energy without a
    meter or a power model): every variant would "break" it for want of a measurement and the cloud, not held
    to it, would win; so it is an error instead."""
    timed = [row for row in rec.rows if row.status == "ok"]
    for field, metric in BY_BUDGET.items():
        if getattr(budget, field) is not None and timed and all(row.metrics.get(metric.key) is None for row in timed):
            why = WHY_UNMEASURED.get(metric.key) or metric.missing.strip(" ()") or "not measured"
            raise UserError(f"no variant in the device report has {metric.name} to hold to it ({why})", field=f"budget.{field}")
    return rec


def foreign(rec: Recommendation, recipe: Recipe) -> Recommendation:
    """`rec`, with a warning when its device report was profiled for another recipe than the one deciding."""
    if rec.recipe != recipe.name:
        rec.notes.insert(0, f"Recipe: the device report comes from recipe {rec.recipe!r}; the budget, costs and cloud "
                         f"options here are those of {recipe.path} (recipe {recipe.name!r}); its reports folder keeps them apart "
                         f"from its own (recommendation-<device>-from-{rec.recipe})")
    return rec


def recommendations(recipe: Recipe, budget: Budget | None = None, paths: list[Path] | None = None) -> list[Recommendation]:
    """The recommendations for the device reports at `paths` (default: this device's latest)."""
    return recommend_each(recipe, device_reports(recipe, paths), budget)
