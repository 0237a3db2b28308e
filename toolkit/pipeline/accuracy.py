"""Stage 2b: accuracy with lm-evaluation-harness, each variant through its own runtime in its own process."""

from __future__ import annotations

import functools
from pathlib import Path

from toolkit.errors import UserError, first_sentence
from toolkit.io import content_hash, importable
from toolkit.pipeline import jobs
from toolkit.pipeline.cache import save, stored
from toolkit.pipeline.executor import LOCAL, Executor, fan_out
from toolkit.pipeline.workspace import Progress, note_scorers, quiet, runtime_versions, scorers, threads
from toolkit.recipe import Recipe
from toolkit.records import EvalResult, Manifest, Variant
from toolkit.runtimes import get_runtime
from toolkit.tasks import TASKS
from toolkit.tasks import prepare as prepare_task

ACCURACY_VERSION = 5  # bump when the lm-eval job changes, so cached results are recomputed


def task_dir(name: str) -> str | None:
    """The folder holding an offline task's YAML, or None for a stock lm-eval task (needs the hub)."""
    if name in TASKS:
        return str(prepare_task(name))
    if name not in _stock_index().all_tasks:
        raise UserError(
            f"unknown task {name!r}: not an offline task ({', '.join(TASKS)}) nor an lm-eval task", field="accuracy.tasks"
        )
    if unreachable := _unreachable_data(name):
        raise UserError(f"{name}: {unreachable}; use an offline task (toolkit tasks) or give this machine the hub",
                        field="accuracy.tasks")
    return None


@functools.cache
def _stock_index():
    from lm_eval.tasks import TaskManager

    return TaskManager()  # indexes every YAML lm-eval ships (seconds): once per process


@functools.cache
def stock_folders(names: tuple[str, ...]) -> list[str] | None:
    """The folders of lm-eval's own tasks that hold `names` and all they name (a group's tasks, a tag's members),
    for a job to index instead of every YAML lm-eval ships (9-17 s per job on 2 cores). None where an index of
    those folders alone would resolve some name differently: the job then indexes them all."""
    from lm_eval.tasks._index import TaskIndex

    full, needed, todo = _stock_index().task_index, set(), list(names)
    while todo:
        if (name := todo.pop()) in needed or name not in full:
            continue
        needed.add(name)
        todo += _named_by(full[name])
    folders = {full[n].yaml_path.parent for n in needed if full[n].yaml_path is not None}
    roots = sorted(f for f in folders if not any(other in f.parents for other in folders))
    subset = TaskIndex.build(roots)
    return [str(r) for r in roots] if all(subset.get(n) == full[n] for n in needed) else None


def _named_by(entry) -> list[str]:
    """The names an lm-eval index entry refers to: a tag's members, a group's tasks; a task refers to none."""
    from lm_eval.tasks._index import Kind

    if entry.kind is Kind.TAG:
        return sorted(entry.tags)
    return _strings(entry.cfg.get("task")) if entry.kind is Kind.GROUP else []


def _strings(cfg: object) -> list[str]:
    """Every string in a group's task list, however nested: the names it may refer to."""
    if isinstance(cfg, str):
        return [cfg]
    values = cfg.values() if isinstance(cfg, dict) else cfg if isinstance(cfg, list) else []
    return [s for v in values for s in _strings(v)]


@functools.cache
def _unreachable_data(name: str) -> str | None:
    """Why a stock task's data set cannot be had (not in the local cache, and the hub out of reach), or None: said
    once here rather than by every variant's accuracy job. A group is checked by its first task."""
    import datasets

    index = _stock_index().task_index
    entry = index[name]
    while "task" in entry.cfg and isinstance(entry.cfg["task"], list) and entry.cfg["task"]:
        first = entry.cfg["task"][0]
        if not isinstance(first, str) or first not in index:
            return None
        entry = index[first]
    if not (path := entry.cfg.get("dataset_path")):
        return None
    try:
        datasets.load_dataset_builder(path, entry.cfg.get("dataset_name"))
    except Exception as exc:  # noqa: BLE001 - whatever stops the builder stops every variant's job
        return f"its data set {path!r} cannot be loaded ({first_sentence(str(exc), 200)})"
    return None


def task_dirs(recipe: Recipe) -> dict[str, str | None]:
    """`task_dir` of each of the recipe's tasks, checked before any work starts: an unknown name is an error
    naming the recipe and the field, not a failure after compress and fidelity."""
    try:
        return {task: task_dir(task) for task in recipe.accuracy.tasks}
    except UserError as exc:
        raise UserError(exc.message, file=recipe.path, field=exc.field) from None


@functools.cache
def lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    if not importable("lm_eval"):  # metadata without the package (a broken or a half-removed install)
        return "not installed"
    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "not installed"


def eval_path(recipe: Recipe, variant: Variant, task: str, scored: dict | None = None) -> tuple[str, Path]:
    """Cache key and file of one variant's result on one task under the recipe's accuracy settings, with the
    runtime's and lm-eval's versions installed here, or as `scored` (workspace.scorers)."""
    spec = recipe.accuracy.model_dump(exclude={"tasks"})
    offline = TASKS.get(task)
    definition = (offline.source, offline.config, offline.metric) if offline else None
    lm_eval = (scored or {}).get("lm-eval") or lm_eval_version()
    key = content_hash(variant.id, variant.sha256, task, spec, "lm-eval", definition, runtime_versions(variant, scored),
                       lm_eval, ACCURACY_VERSION)
    return key, recipe.workspace_dir() / "evals" / f"{variant.id}-{task}-{key}.json"


def accuracy(recipe: Recipe, manifest: Manifest, progress: Progress = quiet,
             ruled_out: dict[str, str] | None = None, executor: Executor = LOCAL) -> list[EvalResult]:
    """Every variant on every task, except those in `ruled_out` (pipeline/search.py): they get the reason.
    One child per variant scores all of its tasks that are not cached yet (one model load, one lm-eval start);
    the executor runs as many variants at once as it can for these variants."""
    tasks, ruled_out = recipe.accuracy.tasks, ruled_out or {}
    folders = task_dirs(recipe)
    executor = executor.for_jobs(recipe, [v for v in manifest.variants if v.id not in ruled_out])
    note_scorers(recipe, {v.runtime for v in manifest.variants if v.id not in ruled_out}, lm_eval_version())
    done = [0]

    def one(variant: Variant) -> dict[str, EvalResult | None]:
        progress(f"accuracy {variant.label}", done[0], len(manifest.variants))
        if variant.id in ruled_out:
            found = {task: _stored_or_ruled_out(recipe, variant, task, ruled_out) for task in tasks}
        else:
            found = _variant_accuracy(recipe, variant, folders, executor)
        done[0] += 1
        return found
    per_variant = fan_out(executor, [functools.partial(one, v) for v in manifest.variants])
    return [found[task] for task in tasks for found in per_variant if found[task] is not None]


def _variant_accuracy(recipe: Recipe, variant: Variant, folders: dict[str, str | None],
                      executor: Executor) -> dict[str, EvalResult]:
    """The variant's stored ok result per task; the others computed in one child and stored."""
    paths = {task: eval_path(recipe, variant, task) for task in folders}
    found = {task: stored(path, EvalResult) for task, (_, path) in paths.items()}
    missing = [task for task, result in found.items() if result is None or result.status != "ok"]
    if missing:
        for task, result in _eval_tasks(recipe, variant, {t: folders[t] for t in missing}, paths, executor).items():
            found[task] = save(paths[task][1], result)
    return found


def _eval_tasks(recipe: Recipe, variant: Variant, folders: dict[str, str | None],
                paths: dict[str, tuple[str, Path]], executor: Executor) -> dict[str, EvalResult]:
    spec = recipe.accuracy
    base = {task: dict(key=paths[task][0], variant_id=variant.id, task=task, limit=spec.limit, runtime=variant.runtime)
            for task in folders}
    runtime = get_runtime(variant.runtime)
    if missing := runtime.available():
        return {task: EvalResult(status="skipped", reason=missing, **b) for task, b in base.items()}
    stock = [task for task, folder in folders.items() if folder is None]
    narrowed = stock_folders(tuple(stock)) if stock else []
    job = jobs.LmEvalJob(
        kind="lm_eval", runtime_module=runtime.module, path=variant.path, threads=threads(recipe), tasks=list(folders),
        task_dirs=sorted({f for f in folders.values() if f}) + (narrowed or []), stock_tasks=bool(stock),
        all_stock=narrowed is None,
        metrics=[TASKS[task].metric if task in TASKS else "acc" for task in folders], limit=spec.limit,
        max_length=spec.max_length, batch_size=spec.batch_size, backend=runtime.lm_eval_backend,
    )
    log = recipe.workspace_dir() / "logs" / f"lm-eval-{variant.id}.log"
    child = executor.run(job, recipe.device.timeout_s * 4 * len(folders), recipe.device.memory_cap_mb, log)
    wall_s = round(child.wall_s, 2)
    if child.status != "ok":
        return {task: EvalResult(status=child.status, reason=child.reason, wall_s=wall_s, **b) for task, b in base.items()}
    d = jobs.LmEvalResult.model_validate(child.data)
    return {task: EvalResult(
        status="ok", metric=s.metric, filter=s.filter, value=round(s.value, 5),
        stderr=round(s.stderr, 5) if s.stderr is not None else None, n=s.n, lm_eval_version=d.lm_eval_version,
        items=s.items, wall_s=wall_s, **base[task],
    ) for task, s in d.tasks.items()}


def _stored_or_ruled_out(recipe: Recipe, variant: Variant, task: str, ruled_out: dict[str, str],
                         scored: dict | None = None) -> EvalResult | None:
    """The stored result of `variant` on `task`; else, when it is in `ruled_out`, a skipped result with the reason."""
    key, path = eval_path(recipe, variant, task, scored)
    if (found := stored(path, EvalResult)) is not None or variant.id not in ruled_out:
        return found
    return EvalResult(key=key, variant_id=variant.id, task=task, limit=recipe.accuracy.limit, runtime=variant.runtime,
                      status="skipped", reason=ruled_out[variant.id])


def load_accuracy(recipe: Recipe, manifest: Manifest, ruled_out: dict[str, str] | None = None) -> list[EvalResult]:
    """Stored accuracy results for the manifest's variants under the recipe's current settings; a variant in
    `ruled_out` without one gets the reason it was not evaluated. Keyed by the versions the workspace records
    (a device reads what its build machine scored, without lm-eval)."""
    scored = scorers(recipe)
    found = (_stored_or_ruled_out(recipe, v, task, ruled_out or {}, scored) for task in recipe.accuracy.tasks
             for v in manifest.variants)
    return [r for r in found if r is not None]
