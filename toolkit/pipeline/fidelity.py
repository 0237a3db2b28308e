"""Stage 2a: fidelity of every variant to its model's reference: perplexity, bits per byte, KL divergence and
top-1 agreement on identical tokens of the recipe's corpus, each variant in its own runtime and process."""

from __future__ import annotations

import functools
from pathlib import Path

from toolkit.io import content_hash, ensure_dir, sha256_file
from toolkit.pipeline import jobs
from toolkit.pipeline.cache import is_ok, load_or_compute, save, stored
from toolkit.pipeline.executor import LOCAL, Executor, fan_out
from toolkit.pipeline.gates import quality_limits
from toolkit.pipeline.workspace import Progress, note_scorers, quiet, runtime_versions, scorers
from toolkit.quality.fidelity import DIGITS
from toolkit.recipe import Recipe
from toolkit.recommend.ruled_out import quality_breaks
from toolkit.records import Manifest, Quality, Variant
from toolkit.runtimes import get_runtime

FIDELITY_VERSION = 6  # bump when the scoring method changes, so cached results are recomputed


def reference_variant(manifest: Manifest, model: str | None = None) -> Variant:
    """The base model for fidelity of `model`'s variants (default: the first model's): its F16 GGUF if built,
    else its source as shipped (a variant, or the manifest's reference when every variant is quantized), else its
    least compressed variant (an ONNX fp32 over its int4). Each candidate model has its own reference: KL between
    models with different tokenizers means nothing."""
    model = model or manifest.variants[0].model
    own = [v for v in manifest.variants if v.model == model]
    by_quant = {(v.format, v.quant): v for v in own}
    shipped = next((v for v in own + manifest.references if v.model == model and v.as_shipped), None)
    return by_quant.get(("gguf", "F16")) or shipped or max(own, key=lambda v: v.bits_per_weight or 0.0)


def fidelity(recipe: Recipe, manifest: Manifest, corpus: Path, progress: Progress = quiet,
             executor: Executor = LOCAL) -> list[Quality]:
    """Every candidate model's reference first (it writes the logits the others are compared with), then every
    other variant of every model; as many at once as the executor runs for these variants. In the staged
    search a variant's scoring stops once it is sure to break the budget's quality limits (status `stopped`)."""
    digest = sha256_file(corpus)
    executor = executor.for_jobs(recipe, manifest.variants + manifest.references)
    note_scorers(recipe, {v.runtime for v in manifest.variants + manifest.references})
    stop_over = quality_limits(recipe) if recipe.search == "staged" else None
    done = [0]

    def one(variant: Variant, reference: Variant, ref_dir: Path) -> Quality:
        progress(f"fidelity {variant.label}", done[0], len(manifest.variants))
        quality = _cached_score(recipe, variant, corpus, digest, reference, ref_dir, executor, stop_over)
        done[0] += 1
        return quality
    references = {}
    for model in dict.fromkeys(v.model for v in manifest.variants):
        reference = reference_variant(manifest, model)
        ref_key = content_hash(digest, recipe.quality.model_dump(), reference.sha256, runtime_versions(reference), FIDELITY_VERSION)
        references[model] = reference, ensure_dir(recipe.workspace_dir() / "fidelity" / f"{reference.id}-{ref_key}")
    scored_refs = fan_out(executor, [functools.partial(one, ref, ref, folder) for ref, folder in references.values()])
    results, calls = list(scored_refs), []
    for (reference, ref_dir), scored in zip(references.values(), scored_refs, strict=True):
        others = [v for v in manifest.variants if v.model == reference.model and v.id != reference.id]
        if scored.status == "ok":
            calls += [functools.partial(one, v, reference, ref_dir) for v in others]
        else:  # nothing to compare with: said once per variant, not found out by each one's child
            results += [_without_reference(recipe, v, digest, reference, scored) for v in others]
    results += fan_out(executor, calls)
    order = {v.id: i for i, v in enumerate(manifest.variants)}  # a reference outside them is no candidate
    return sorted((q for q in results if q.variant_id in order), key=lambda q: order[q.variant_id])


def _cached_score(recipe: Recipe, variant: Variant, corpus: Path, digest: str, reference: Variant, ref_dir: Path,
                  executor: Executor, stop_over: dict[str, float] | None) -> Quality:
    """The stored result when whole, or stopped early and still over the limits scoring may stop at now; else
    scored (fully when `stop_over` is None: the exhaustive sweep)."""
    is_ref = variant.id == reference.id
    logits = jobs.ReferenceLogits(dir=str(ref_dir), write=is_ref)
    path = quality_path(recipe, variant, digest, reference)
    score = functools.partial(_score, recipe, variant, corpus, digest, path.stem, logits, reference.id, executor, stop_over)
    reusable = not is_ref or (ref_dir / "windows.npz").exists()  # the reference's logits must be there too

    def serves(found: Quality) -> bool:
        still_over = bool(stop_over) and bool(quality_breaks(recipe.budget, found.lower_bounds or {}))
        return is_ok(found) or (found.status == "stopped" and still_over)
    return load_or_compute(path, Quality, score, reusable, serves)


def _without_reference(recipe: Recipe, variant: Variant, digest: str, reference: Variant, scored: Quality) -> Quality:
    """`variant` not scored because its reference was not, stored with the reference's failure (the reports say
    why; a failure is recomputed on the next run) or skipped when a runtime is missing here."""
    q, missing = recipe.quality, get_runtime(variant.runtime).available()
    why = missing or f"its reference {reference.label} was not scored ({scored.status}" + (f": {scored.reason})" if scored.reason else ")")
    path = quality_path(recipe, variant, digest, reference)
    return save(path, Quality(key=path.stem, variant_id=variant.id, status="skipped" if missing else scored.status,
                              reason=why, corpus=q.corpus, corpus_sha256=digest, ctx=q.ctx, chunks=q.chunks))


def quality_path(recipe: Recipe, variant: Variant, corpus_sha: str, reference: Variant, scored: dict | None = None) -> Path:
    """Everything a fidelity result depends on: the variant's and the reference's bytes, the corpus, the
    settings, both runtimes' versions (installed here, or as `scored`) and the scoring method."""
    key = content_hash(variant.id, variant.sha256, corpus_sha, recipe.quality.model_dump(), "fidelity", reference.id,
                       reference.sha256, runtime_versions(variant, scored), runtime_versions(reference, scored),
                       FIDELITY_VERSION)
    return recipe.workspace_dir() / "quality" / f"{variant.id}-{key}.json"


def _score(recipe: Recipe, variant: Variant, corpus: Path, digest: str, key: str, reference: jobs.ReferenceLogits,
           ref_id: str, executor: Executor, stop_over: dict[str, float] | None = None) -> Quality:
    q = recipe.quality
    base = dict(key=key, variant_id=variant.id, corpus=q.corpus, corpus_sha256=digest, ctx=q.ctx, chunks=q.chunks)
    if missing := get_runtime(variant.runtime).available():
        return Quality(status="skipped", reason=missing, **base)
    job = jobs.measure_job(recipe, variant, "perplexity", corpus, reference).model_copy(update={"stop_over": stop_over})
    log = recipe.workspace_dir() / "logs" / f"quality-{variant.id}.log"
    returns = Path(reference.dir) if reference.write else None
    child = executor.run(job, recipe.device.timeout_s, recipe.device.memory_cap_mb, log, returns)
    if child.status != "ok":
        return Quality(status=child.status, reason=child.reason, wall_s=child.wall_s, **base)
    d = jobs.FidelityResult.model_validate(child.data)
    base["chunks"] = d.chunks
    own = reference.write  # the reference against itself: KL 0, top-1 agreement 1
    stopped = d.lower_bounds is not None
    return Quality(
        status="stopped" if stopped else "ok",
        reason=f"scored {d.chunks} of {q.chunks} chunks: over the budget's quality limits whatever the rest" if stopped else None,
        lower_bounds=d.lower_bounds, tokens_scored=d.tokens_scored, bytes_scored=d.bytes_scored,
        perplexity=round(d.perplexity, DIGITS["perplexity"]), bits_per_byte=round(d.bits_per_byte, DIGITS["bits_per_byte"]),
        nll_stderr=round(d.nll_stderr, 5), reference_id=ref_id,
        kl_mean=round(d.kl_mean, DIGITS["kl"]) if d.kl_mean is not None else (0.0 if own else None),
        kl_p99=round(d.kl_p99, 6) if d.kl_p99 is not None else None,
        top1_agreement=round(d.top1_agreement, 5) if d.top1_agreement is not None else (1.0 if own else None),
        wall_s=round(child.wall_s, 2), **base,
    )


def load_quality(recipe: Recipe, manifest: Manifest, corpus_sha: str) -> list[Quality]:
    """Stored quality results for the manifest's variants under the recipe's current settings, as scored with the
    versions the workspace records (a device reads what its build machine scored)."""
    scored = scorers(recipe)
    found = (stored(quality_path(recipe, v, corpus_sha, reference_variant(manifest, v.model), scored), Quality)
             for v in manifest.variants)
    return [q for q in found if q is not None]
