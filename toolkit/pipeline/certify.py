"""Certification: the pick re-measured in fresh processes at the budget's response shape; a pick that misses
the budget in any run is vetoed and the next one certified, within `device.extra_time_s` of certification runs
(profiling/rounds.py, step 4)."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable
from pathlib import Path

from toolkit.errors import UserError
from toolkit.io import content_hash, state_root, write_json
from toolkit.pipeline.workspace import Progress, quiet
from toolkit.profiling.rounds import certify_runs
from toolkit.recipe import Recipe
from toolkit.recommend.engine import budget_key, check_run, pick_key, recommend
from toolkit.records import DeviceFingerprint, DeviceReport, Profile, Variant

MeasureRound = Callable[[Recipe, Variant, int], Profile]  # (recipe at the budget's shape, variant, run index)


def certify(recipe: Recipe, report: DeviceReport, measure_round: MeasureRound, progress: Progress = quiet) -> DeviceReport:
    n, budget = recipe.device.certify_runs, recipe.budget
    if n == 0 or not report.measured:
        return report
    key, spent, attempts = budget_key(budget, recipe.costs), 0.0, 0
    while attempts == 0 or spent < recipe.device.extra_time_s:  # each attempt vetoes a pick or certifies one
        rec = recommend(report, budget, recipe.costs)
        if rec.pick is None or rec.certification is not None:
            break
        variant = next(v for v in report.variants if v.id == rec.pick)
        shape = recipe.device.model_copy(update={"prompt_lengths": [rec.prompt_tokens], "decode_tokens": rec.output_tokens})
        at_shape = recipe.model_copy(update={"device": shape})
        runs = []
        for i in range(n):
            progress(f"certify {variant.label} ({i + 1}/{n})", i, n)
            runs.append(measure_round(at_shape, variant, i))
        spent, attempts = spent + sum(run.wall_s for run in runs), attempts + 1
        check = functools.partial(_check, report, recipe, rec.prompt_tokens)
        cert = certify_runs(runs, check, variant.id, key, rec.prompt_tokens, rec.output_tokens)
        report = report.model_copy(update={"certifications": [*report.certifications, cert]})
    return report


def _check(report: DeviceReport, recipe: Recipe, prompt_tokens: int, run: Profile) -> tuple[list[str], dict]:
    option = check_run(report, run, recipe.budget, recipe.costs, prompt_tokens)
    m = option.metrics
    figures = {"ttft_p90_ms": m["ttft_ms"], "decode_p10_tps": m["decode_tps"], "peak_rss_mb": m["memory_mb"],
               "energy_j": m["energy_j"]}
    return option.violations, figures


def previous_picks(recipe: Recipe, device: DeviceFingerprint) -> dict[str, str]:
    """This device's certified pick for the recipe's budget, which stays the pick while the new measurements
    cannot tell it from the best (recommend/noise.py): the latest one this machine made (`remember_pick`, in
    any workspace: a fresh clone keeps its answer too), else the one in the latest earlier report of this
    recipe (the workspace's, or the one shipped in the recipe's reports folder)."""
    key = pick_key(recipe.budget, recipe.costs)
    with contextlib.suppress(OSError, ValueError, KeyError):
        remembered = json.loads(_memory(device, recipe.name, key).read_text())
        if remembered["recipe"] == recipe.name and remembered["pick_key"] == key:
            return {key: remembered["variant_id"]}
    found = []
    for folder in (recipe.workspace_dir() / "reports", recipe.reports_path() / "devices"):
        for path in folder.glob(f"device-*{device.id}.json"):
            try:
                report = DeviceReport.load(path)
            except UserError:
                continue
            if report.recipe == recipe.name and report.device.id == device.id and report.measured:
                found.append(report)
    if not found:
        return {}
    pick = _certified_pick(max(found, key=lambda r: r.created), recipe)
    return {key: pick} if pick else {}


def remember_pick(recipe: Recipe, report: DeviceReport) -> None:
    """Record the report's certified pick for the recipe's budget as this machine's answer (previous_picks)."""
    if pick := _certified_pick(report, recipe):
        key = pick_key(recipe.budget, recipe.costs)
        record = {"recipe": recipe.name, "pick_key": key, "variant_id": pick, "created": report.created}
        write_json(_memory(report.device, recipe.name, key), record)


def _certified_pick(report: DeviceReport, recipe: Recipe) -> str | None:
    try:
        rec = recommend(report, recipe.budget, recipe.costs)
    except UserError:
        return None
    certified = rec.pick is not None and rec.certification is not None and rec.certification.certified
    return rec.pick if certified else None


def _memory(device: DeviceFingerprint, recipe_name: str, key: str) -> Path:
    """One file per device, recipe name and budget (`key`: pick_key), so that workspaces profiling at once never
    share one."""
    return state_root() / "picks" / device.id / f"{content_hash(recipe_name, key)}.json"
