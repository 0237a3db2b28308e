"""The pipeline's stages as plain functions: recipe in, records on disk out. The CLI only calls these."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from pathlib import Path

from toolkit import __version__
from toolkit.errors import UserError
from toolkit.formats import VariantSpec, get_format
from toolkit.io import content_hash, ensure_dir, sha256_file, sweep_stale, write_json
from toolkit.profiling.device import fingerprint, usable_cpus
from toolkit.profiling.harness import run_child
from toolkit.profiling.roofline import Roofline
from toolkit.profiling.roofline import measure as measure_roofline
from toolkit.quality.corpus import corpus_path
from toolkit.recipe import Recipe
from toolkit.records import (
    DeviceFingerprint,
    DevicePower,
    DeviceReport,
    EvalResult,
    Manifest,
    Profile,
    PromptTiming,
    Quality,
    Stat,
    Variant,
)
from toolkit.runtimes import get_runtime
from toolkit.sources import resolve
from toolkit.tasks import TASKS
from toolkit.tasks import prepare as prepare_task

Progress = Callable[[str, int, int], None]  # (description, done, total)
PROFILER_VERSION = 3  # bump when the measurement method changes, so cached profiles are re-measured
FIDELITY_VERSION = 2  # the same for perplexity / KL scoring
ACCURACY_VERSION = 1  # and for the lm-eval job


def _quiet(description: str, done: int, total: int) -> None:
    return None


def workspace(recipe: Recipe) -> Path:
    """The recipe's workspace, rid of the temporaries a killed run left (its finished files are kept)."""
    ws = ensure_dir(recipe.workspace_dir())
    sweep_stale(ws, recursive=True)
    return ws


def variant_specs(recipe: Recipe) -> list[VariantSpec]:
    specs: list[VariantSpec] = []
    for name in type(recipe.variants).model_fields:
        spec = getattr(recipe.variants, name)
        if spec is not None:
            specs.extend(get_format(name).specs(spec))
    return specs


def compress(recipe: Recipe, progress: Progress = _quiet) -> Manifest:
    ws = workspace(recipe)
    specs = variant_specs(recipe)
    variants: list[Variant] = []
    total, done = len(recipe.candidates) * len(specs), 0
    for candidate in recipe.candidates:
        source = resolve(candidate, recipe)
        for spec in specs:
            progress(f"{source.model} {spec.format} {spec.quant}", done, total)
            variant = get_format(spec.format).build(source, spec, ws, recipe.device.threads)
            if variant is not None:
                variants.append(variant)
            done += 1
    progress("done", total, total)
    manifest = Manifest(recipe=recipe.name, variants=variants)
    write_json(ws / "manifest.json", manifest)
    return manifest


def load_manifest(recipe: Recipe) -> Manifest:
    path = recipe.workspace_dir() / "manifest.json"
    if not path.exists():
        raise UserError(f"no manifest yet; run `toolkit compress {recipe.path}` first", file=path)
    return Manifest.load(path)


def _threads(recipe: Recipe) -> int:
    return recipe.device.threads or usable_cpus()


def device_fingerprint(recipe: Recipe) -> DeviceFingerprint:
    runtimes, flags = {}, {}
    for runtime in _runtimes_in_use(recipe):
        if runtime.available() is None:
            module = runtime.load()
            runtimes.update(module.versions())
            flags.update(module.build_flags())
    return fingerprint(_threads(recipe), runtimes, flags)


def _runtimes_in_use(recipe: Recipe):
    names = {get_format(spec.format).runtime for spec in variant_specs(recipe)}
    return [get_runtime(name) for name in sorted(names)]


def _job(recipe: Recipe, variant: Variant, kind: str, corpus: Path) -> dict:
    dev = recipe.device
    longest = max(max(dev.prompt_lengths), recipe.quality.ctx)
    return {
        "kind": kind,
        "runtime_module": get_runtime(variant.runtime).module,
        "path": variant.path,
        "threads": _threads(recipe),
        "n_ctx": max(max(dev.prompt_lengths) + 16, dev.prompt_lengths[0] + dev.decode_tokens + 16, recipe.quality.ctx),
        "n_batch": longest,
        "corpus": str(corpus),
        "prompt_lengths": dev.prompt_lengths,
        "decode_tokens": dev.decode_tokens,
        "warmup": dev.warmup,
        "repeats": dev.repeats,
        "ctx": recipe.quality.ctx,
        "chunks": recipe.quality.chunks,
    }


ROUND_SETTINGS = {"power", "rounds", "max_rounds", "target_win_probability", "extra_time_s", "noise_margin", "certify_runs"}


def profile(
    recipe: Recipe, progress: Progress = _quiet, out: Path | None = None, formats: list[str] | None = None
) -> tuple[DeviceReport, Path]:
    """Measure every variant on this device in rounds of fresh processes (profiling/rounds.py), certify the
    pick, and write the device report."""
    from toolkit.profiling.rounds import Rounds, run_rounds

    ws = workspace(recipe)
    manifest = load_manifest(recipe)
    if formats:
        manifest = Manifest(recipe=manifest.recipe, variants=[v for v in manifest.variants if v.format in formats])
        if not manifest.variants:
            raise UserError(f"no variant of format {', '.join(formats)} in the manifest", field="--format")
    device = device_fingerprint(recipe)
    corpus = corpus_path(recipe.quality.corpus)
    variants = {v.id: v for v in manifest.variants}
    count = {"done": 0}

    def one_round(vid: str, index: int) -> Profile:
        progress(f"profile {variants[vid].label} (round {index + 1})", count["done"], len(variants) * recipe.device.rounds)
        count["done"] += 1
        return _round(recipe, variants[vid], device, corpus, ws, index)

    base = DeviceReport(
        roofline=device_roofline(ws, device), recipe=recipe.name, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        toolkit_version=__version__, device=device,
        power=DevicePower(**recipe.device.power.model_dump()) if recipe.device.power else None,
        variants=manifest.variants, profiles=[], quality=load_quality(recipe, manifest, sha256_file(corpus)),
        accuracy=load_accuracy(recipe, manifest),
    )
    dev = recipe.device
    report = run_rounds(
        Rounds(list(variants), one_round), lambda profiles: base.model_copy(update={"profiles": profiles}),
        lambda rep: _contenders(recipe, rep), lambda rep: _standing(recipe, rep),
        dev.rounds, dev.max_rounds, dev.target_win_probability, dev.extra_time_s,
    )
    report = certify(recipe, report, corpus, ws, progress)
    progress("done", count["done"], count["done"])
    target = out or ws / "reports" / f"device-{device.hostname}-{device.id}.json"
    write_json(target, report)
    return report, target


def _measured(report: DeviceReport) -> bool:
    return any(p.status == "ok" for p in report.profiles)


def _contenders(recipe: Recipe, report: DeviceReport) -> set[str]:
    from toolkit.recommend.engine import contenders

    if not _measured(report):
        return set()
    return contenders(report, recipe.budget, recipe.costs, recipe.device.noise_margin)


def _standing(recipe: Recipe, report: DeviceReport) -> tuple[str | None, float, list[str]]:
    """The pick for the recipe's budget, its win probability and the variants tied with it."""
    from toolkit.recommend.engine import recommend

    if not _measured(report):
        return None, 0.0, []
    rec = recommend(report, recipe.budget, recipe.costs)
    win = next((r.win_probability or 0.0 for r in rec.rows if r.variant_id == rec.pick), 0.0)
    return rec.pick, win, rec.tied_with


def _profile_key(recipe: Recipe, variant: Variant, device: DeviceFingerprint, *extra) -> str:
    settings = recipe.device.model_dump(mode="json", exclude=ROUND_SETTINGS)
    return content_hash(variant.id, variant.sha256, settings, device.id, "profile", PROFILER_VERSION, *extra)


def _round(recipe: Recipe, variant: Variant, device: DeviceFingerprint, corpus: Path, ws: Path, index: int,
           *extra) -> Profile:
    """One fresh-process measurement, cached on its own; a failure is kept with its reason and retried next run."""
    key = _profile_key(recipe, variant, device, *extra)
    suffix = "".join(f"-{e}" for e in extra) + (f"-r{index}" if index else "")
    cached = ws / "profiles" / f"{variant.id}-{key}{suffix}.json"
    if cached.exists():
        result = Profile.load(cached)
        if result.status == "ok":
            return result
    result = measure(recipe, variant, device, key, corpus, ws, log_suffix=suffix)
    if result.status != "skipped":
        write_json(cached, result)
    return result


def certify(recipe: Recipe, report: DeviceReport, corpus: Path, ws: Path, progress: Progress = _quiet) -> DeviceReport:
    """Re-measure the pick in fresh processes at the budget's response shape; a pick that misses the budget in
    any run is vetoed and the next one certified (profiling/rounds.py, step 4)."""
    from toolkit.profiling.rounds import CERTIFY_ATTEMPTS, certify_runs
    from toolkit.recommend.engine import budget_key, recommend

    n, budget = recipe.device.certify_runs, recipe.budget
    if n == 0 or not _measured(report):
        return report
    key = budget_key(budget, recipe.costs)
    for _ in range(CERTIFY_ATTEMPTS):
        rec = recommend(report, budget, recipe.costs)
        if rec.pick is None or rec.certification is not None:
            break
        variant = next(v for v in report.variants if v.id == rec.pick)
        shape = recipe.device.model_copy(update={"prompt_lengths": [rec.prompt_tokens], "decode_tokens": rec.output_tokens})
        at_shape = recipe.model_copy(update={"device": shape})
        runs = []
        for i in range(n):
            progress(f"certify {variant.label} ({i + 1}/{n})", i, n)
            runs.append(_round(at_shape, variant, report.device, corpus, ws, i, "certify"))
        check = functools.partial(_check_certify_run, report, recipe, rec.prompt_tokens)
        cert = certify_runs(runs, check, variant.id, key, rec.prompt_tokens, rec.output_tokens)
        report = report.model_copy(update={"certifications": [*report.certifications, cert]})
    return report


def _check_certify_run(report: DeviceReport, recipe: Recipe, prompt_tokens: int, run: Profile) -> tuple[list[str], dict]:
    from toolkit.recommend.engine import check_run

    option = check_run(report, run, recipe.budget, recipe.costs, prompt_tokens)
    m = option.metrics
    figures = {"ttft_p90_ms": m["ttft_ms"], "decode_p10_tps": m["decode_tps"], "peak_rss_mb": m["memory_mb"],
               "energy_j": m["energy_j"]}
    return option.violations, figures


def device_roofline(ws: Path, device: DeviceFingerprint) -> Roofline:
    """Memory bandwidth and compute of this device, measured once per device fingerprint."""
    path = ws / "profiles" / f"roofline-{device.id}.json"
    if path.exists():
        return Roofline.model_validate_json(path.read_text(encoding="utf-8"))
    result = measure_roofline(device.threads_used)
    write_json(path, result)
    return result


def measure(recipe: Recipe, variant: Variant, device: DeviceFingerprint, key: str, corpus: Path, ws: Path,
            log_suffix: str = "") -> Profile:
    base = dict(
        key=key,
        variant_id=variant.id,
        variant_name=variant.label,
        format=variant.format,
        runtime=variant.runtime,
        device=device,
        settings=recipe.device.model_dump(mode="json", exclude={"prompt_lengths", "power"}),
        file_size_mb=round(variant.size_bytes / 2**20, 2),
    )
    missing = get_runtime(variant.runtime).available()
    if missing:
        return Profile(status="skipped", reason=missing, **base)
    dev = recipe.device
    child = run_child(
        _job(recipe, variant, "profile", corpus), dev.timeout_s, dev.memory_cap_mb, ws / "logs" / f"profile-{variant.id}{log_suffix}.log"
    )
    if child.status != "ok":
        return Profile(status=child.status, reason=child.reason, peak_rss_mb=child.data.get("peak_rss_mb"), wall_s=child.wall_s, **base)
    data = child.data
    prompts = [
        PromptTiming(
            prompt_tokens=p["prompt_tokens"],
            ttft_ms=Stat.of(p["ttft_ms"]),
            prefill_tps=Stat.of([p["prompt_tokens"] / (ms / 1000) for ms in p["ttft_ms"]]),
            runtime_prefill_tps=Stat.of(p["runtime_prefill_tps"]) if p["runtime_prefill_tps"] else None,
        )
        for p in data["prompts"]
    ]
    return Profile(
        status="ok",
        load_ms=round(data["load_ms"], 2),
        prompts=prompts,
        decode_tokens=dev.decode_tokens,
        decode_tps=Stat.of(data["decode_tps"]),
        itl_ms=Stat.of(data["itl_ms"], keep_values=False),
        runtime_decode_tps=Stat.of(data["runtime_decode_tps"]) if data["runtime_decode_tps"] else None,
        rapl_watts=Stat.of(data["rapl_watts"]) if data.get("rapl_watts") else None,
        peak_rss_mb=round(data["peak_rss_mb"], 1),
        deploy_rss_mb=round(data["deploy_rss_mb"], 1) if data.get("deploy_rss_mb") is not None else None,
        wall_s=round(child.wall_s, 2),
        **base,
    )


def reference_variant(manifest: Manifest) -> Variant:
    """The base model for fidelity: the F16 GGUF if built, else the GGUF as shipped, else the first."""
    by_quant = {(v.format, v.quant): v for v in manifest.variants}
    shipped = next((v for v in manifest.variants if "the source file as shipped" in v.notes), None)
    return by_quant.get(("gguf", "F16")) or shipped or manifest.variants[0]


def evaluate(recipe: Recipe, progress: Progress = _quiet) -> tuple[list[Quality], list[EvalResult]]:
    """Fidelity (perplexity, KL divergence, top-1 agreement) and accuracy (lm-eval tasks) of every variant."""
    ws = workspace(recipe)
    manifest = load_manifest(recipe)
    corpus = corpus_path(recipe.quality.corpus)
    digest = sha256_file(corpus)
    reference = reference_variant(manifest)
    ref_key = content_hash(digest, recipe.quality.model_dump(), reference.sha256, _versions(reference), FIDELITY_VERSION)
    ref_dir = ensure_dir(ws / "fidelity" / f"{reference.id}-{ref_key}")
    ordered = [reference] + [v for v in manifest.variants if v.id != reference.id]
    results = []
    for done, variant in enumerate(ordered):
        progress(f"fidelity {variant.label}", done, len(ordered))
        path = _quality_path(recipe, variant, digest, reference)
        is_ref = variant.id == reference.id
        if path.exists() and (not is_ref or (ref_dir / "tokens.npy").exists()):
            stored = Quality.load(path)
            if stored.status == "ok":  # a failure is kept with its reason and retried on the next run
                results.append(stored)
                continue
        results.append(_score(recipe, variant, corpus, digest, path, {"dir": str(ref_dir), "write": is_ref}, reference.id))
    order = {v.id: i for i, v in enumerate(manifest.variants)}
    results.sort(key=lambda q: order[q.variant_id])
    accuracy = evaluate_accuracy(recipe, manifest, progress)
    progress("done", len(ordered), len(ordered))
    return results, accuracy


@functools.cache
def _runtime_versions(runtime: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(get_runtime(runtime).versions().items()))


def _versions(variant: Variant) -> tuple[tuple[str, str], ...]:
    return _runtime_versions(variant.runtime)


def _quality_path(recipe: Recipe, variant: Variant, corpus_sha: str, reference: Variant) -> Path:
    """Everything a fidelity result depends on: the variant's and the reference's bytes, the corpus, the
    settings, both runtimes' versions and the scoring method."""
    key = content_hash(variant.id, variant.sha256, corpus_sha, recipe.quality.model_dump(), "fidelity", reference.id,
                       reference.sha256, _versions(variant), _versions(reference), FIDELITY_VERSION)
    return recipe.workspace_dir() / "quality" / f"{variant.id}-{key}.json"


def _score(recipe: Recipe, variant: Variant, corpus: Path, digest: str, path: Path, reference: dict, ref_id: str) -> Quality:
    q = recipe.quality
    base = dict(key=path.stem, variant_id=variant.id, corpus=q.corpus, corpus_sha256=digest, ctx=q.ctx, chunks=q.chunks)
    missing = get_runtime(variant.runtime).available()
    if missing:
        return Quality(status="skipped", reason=missing, **base)
    job = _job(recipe, variant, "perplexity", corpus) | {"reference": reference}
    log = recipe.workspace_dir() / "logs" / f"quality-{variant.id}.log"
    child = run_child(job, recipe.device.timeout_s, recipe.device.memory_cap_mb, log)
    if child.status != "ok":
        result = Quality(status=child.status, reason=child.reason, wall_s=child.wall_s, **base)
    else:
        d = child.data
        base["chunks"] = d["chunks"]
        result = Quality(
            status="ok",
            tokens_scored=d["tokens_scored"],
            perplexity=round(d["perplexity"], 4),
            nll_stderr=round(d["nll_stderr"], 5),
            reference_id=ref_id,
            kl_mean=round(d["kl_mean"], 6) if "kl_mean" in d else (0.0 if reference["write"] else None),
            kl_p99=round(d["kl_p99"], 6) if "kl_p99" in d else None,
            top1_agreement=round(d["top1_agreement"], 5) if "top1_agreement" in d else (1.0 if reference["write"] else None),
            wall_s=round(child.wall_s, 2),
            **base,
        )
    write_json(path, result)
    return result


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
def _lm_eval_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "not installed"


def _eval_path(recipe: Recipe, variant: Variant, task: str) -> tuple[str, Path]:
    """Cache key and file of one variant's result on one task under the recipe's accuracy settings."""
    spec = recipe.accuracy.model_dump(exclude={"tasks"})
    offline = TASKS.get(task)
    definition = (offline.source, offline.config, offline.metric) if offline else None
    key = content_hash(variant.id, variant.sha256, task, spec, "lm-eval", definition, _versions(variant),
                       _lm_eval_version(), ACCURACY_VERSION)
    return key, recipe.workspace_dir() / "evals" / f"{variant.id}-{task}-{key}.json"


def evaluate_accuracy(recipe: Recipe, manifest: Manifest, progress: Progress = _quiet) -> list[EvalResult]:
    spec = recipe.accuracy
    results = []
    for task in spec.tasks:
        folder = task_dir(task)
        metric = TASKS[task].metric if task in TASKS else "acc"
        for done, variant in enumerate(manifest.variants):
            progress(f"{task} {variant.label}", done, len(manifest.variants))
            key, path = _eval_path(recipe, variant, task)
            if path.exists():
                stored = EvalResult.load(path)
                if stored.status == "ok":  # a failure is kept with its reason and retried on the next run
                    results.append(stored)
                    continue
            results.append(_eval_task(recipe, variant, task, folder, metric, key, path))
    return results


def _eval_task(recipe: Recipe, variant: Variant, task: str, folder: str | None, metric: str, key: str, path: Path) -> EvalResult:
    spec = recipe.accuracy
    base = dict(key=key, variant_id=variant.id, task=task, limit=spec.limit, runtime=variant.runtime)
    missing = get_runtime(variant.runtime).available()
    if missing:
        return EvalResult(status="skipped", reason=missing, **base)
    job = {
        "kind": "lm_eval", "runtime_module": get_runtime(variant.runtime).module, "path": variant.path,
        "threads": _threads(recipe), "task": task, "task_dir": folder, "limit": spec.limit, "metric": metric,
        "max_length": spec.max_length, "batch_size": spec.batch_size,
    }
    log = recipe.workspace_dir() / "logs" / f"lm-eval-{task}-{variant.id}.log"
    child = run_child(job, recipe.device.timeout_s * 4, recipe.device.memory_cap_mb, log)
    if child.status != "ok":
        result = EvalResult(status=child.status, reason=child.reason, wall_s=round(child.wall_s, 2), **base)
    else:
        d = child.data
        result = EvalResult(
            status="ok", metric=d["metric"], filter=d["filter"], value=round(d["value"], 5),
            stderr=round(d["stderr"], 5) if d["stderr"] is not None else None, n=d["n"],
            lm_eval_version=d["lm_eval_version"], wall_s=round(child.wall_s, 2), **base,
        )
    write_json(path, result)
    return result


def load_accuracy(recipe: Recipe, manifest: Manifest) -> list[EvalResult]:
    """Stored accuracy results for the manifest's variants under the recipe's current settings."""
    spec, out = recipe.accuracy, []
    for task in spec.tasks:
        for variant in manifest.variants:
            path = _eval_path(recipe, variant, task)[1]
            if path.exists():
                out.append(EvalResult.load(path))
    return out


def load_quality(recipe: Recipe, manifest: Manifest, corpus_sha: str) -> list[Quality]:
    """Stored quality results for the manifest's variants under the recipe's current settings."""
    reference = reference_variant(manifest)
    paths = (_quality_path(recipe, variant, corpus_sha, reference) for variant in manifest.variants)
    return [Quality.load(path) for path in paths if path.exists()]
