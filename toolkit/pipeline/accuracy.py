"""Stage 2b: accuracy with lm-evaluation-harness, each variant through its own runtime in its own process."""

from __future__ import annotations

import functools
from pathlib import Path

from toolkit.errors import UserError
from toolkit.io import content_hash
from toolkit.pipeline import jobs
from toolkit.pipeline.cache import load_or_compute, stored
from toolkit.pipeline.workspace import Progress, quiet, runtime_versions, threads
from toolkit.recipe import Recipe
from toolkit.records import EvalResult, Manifest, Variant
from toolkit.runtimes import get_runtime
from toolkit.tasks import TASKS
from toolkit.tasks import prepare as prepare_task

ACCURACY_VERSION = 2  # bump when the lm-eval job changes, so cached results are recomputed


def task_dir(name: str) -> str | None:
    """The folder holding an offline task's YAML, or None for a stock lm-eval task (needs the hub)."""
    if name in TASKS:
        return str(prepare_task(name))
    from lm_eval.tasks import TaskManager

    if name not in TaskManager().all_tasks:
        raise UserError(
            f"unknown task {name!r}: not an offline task ({', '.join(TASKS)}) nor an lm-eval task", field="accuracy.tasks"
        )
    return None


@functools.cache
def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "not installed"


def eval_path(recipe: Recipe, variant: Variant, task: str) -> tuple[str, Path]:
    """Cache key and file of one variant's result on one task under the recipe's accuracy settings."""
    spec = recipe.accuracy.model_dump(exclude={"tasks"})
    offline = TASKS.get(task)
    definition = (offline.source, offline.config, offline.metric) if offline else None
    key = content_hash(variant.id, variant.sha256, task, spec, "lm-eval", definition, runtime_versions(variant),
                       lm_eval_version(), ACCURACY_VERSION)
    return key, recipe.workspace_dir() / "evals" / f"{variant.id}-{task}-{key}.json"


def accuracy(recipe: Recipe, manifest: Manifest, progress: Progress = quiet,
             ruled_out: dict[str, str] | None = None) -> list[EvalResult]:
    """Every variant on every task, except those in `ruled_out` (pipeline/search.py): they get the reason."""
    results, ruled_out = [], ruled_out or {}
    for task in recipe.accuracy.tasks:
        folder = task_dir(task)
        metric = TASKS[task].metric if task in TASKS else "acc"
        for done, variant in enumerate(manifest.variants):
            progress(f"{task} {variant.label}", done, len(manifest.variants))
            if variant.id in ruled_out:
                results.append(_stored_or_ruled_out(recipe, variant, task, ruled_out))
                continue
            key, path = eval_path(recipe, variant, task)
            evaluate = functools.partial(_eval_task, recipe, variant, task, folder, metric, key)
            results.append(load_or_compute(path, EvalResult, evaluate))
    return results


def _eval_task(recipe: Recipe, variant: Variant, task: str, folder: str | None, metric: str, key: str) -> EvalResult:
    spec = recipe.accuracy
    base = dict(key=key, variant_id=variant.id, task=task, limit=spec.limit, runtime=variant.runtime)
    runtime = get_runtime(variant.runtime)
    if missing := runtime.available():
        return EvalResult(status="skipped", reason=missing, **base)
    job = jobs.LmEvalJob(
        kind="lm_eval", runtime_module=runtime.module, path=variant.path, threads=threads(recipe), task=task,
        task_dir=folder, limit=spec.limit, metric=metric, max_length=spec.max_length, batch_size=spec.batch_size,
        backend=runtime.lm_eval_backend,
    )
    log = recipe.workspace_dir() / "logs" / f"lm-eval-{task}-{variant.id}.log"
    child = jobs.run(job, recipe.device.timeout_s * 4, recipe.device.memory_cap_mb, log)
    if child.status != "ok":
        return EvalResult(status=child.status, reason=child.reason, wall_s=round(child.wall_s, 2), **base)
    d = jobs.LmEvalResult.model_validate(child.data)
    return EvalResult(
        status="ok", metric=d.metric, filter=d.filter, value=round(d.value, 5),
        stderr=round(d.stderr, 5) if d.stderr is not None else None, n=d.n, lm_eval_version=d.lm_eval_version,
        wall_s=round(child.wall_s, 2), **base,
    )


def _stored_or_ruled_out(recipe: Recipe, variant: Variant, task: str, ruled_out: dict[str, str]) -> EvalResult | None:
    """The stored result of `variant` on `task`; else, when it is in `ruled_out`, a skipped result with the reason."""
    key, path = eval_path(recipe, variant, task)
    if (found := stored(path, EvalResult)) is not None or variant.id not in ruled_out:
        return found
    return EvalResult(key=key, variant_id=variant.id, task=task, limit=recipe.accuracy.limit, runtime=variant.runtime,
                      status="skipped", reason=ruled_out[variant.id])


def load_accuracy(recipe: Recipe, manifest: Manifest, ruled_out: dict[str, str] | None = None) -> list[EvalResult]:
    """Stored accuracy results for the manifest's variants under the recipe's current settings; a variant in
    `ruled_out` without one gets the reason it was not evaluated."""
    found = (_stored_or_ruled_out(recipe, v, task, ruled_out or {}) for task in recipe.accuracy.tasks for v in manifest.variants)
    return [r for r in found if r is not None]
