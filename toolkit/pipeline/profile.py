"""Stage 3, on the target device: every variant measured in rounds of fresh processes, the pick certified,
one device report written (profiling/rounds.py explains the rounds)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

from toolkit import __version__
from toolkit.errors import UserError
from toolkit.io import content_hash, sha256_file, write_json
from toolkit.pipeline import jobs
from toolkit.pipeline.accuracy import load_accuracy
from toolkit.pipeline.cache import load_or_compute
from toolkit.pipeline.certify import certify, previous_picks, remember_pick
from toolkit.pipeline.fidelity import load_quality
from toolkit.pipeline.gates import quality_gate
from toolkit.pipeline.workspace import (
    Progress,
    corpus,
    device_fingerprint,
    load_manifest,
    quiet,
    runtime_build,
    workspace,
)
from toolkit.profiling.meters.summary import profile_energy
from toolkit.profiling.roofline import Roofline
from toolkit.profiling.roofline import measure as measure_roofline
from toolkit.profiling.rounds import Rounds, Standing, run_rounds
from toolkit.recipe import Budget, Costs, Recipe
from toolkit.recommend.engine import contenders, recommend
from toolkit.recommend.notes import oversubscribed
from toolkit.records import (
    DeviceFingerprint,
    DevicePower,
    DeviceReport,
    LlamaBench,
    Manifest,
    Profile,
    PromptTiming,
    Stat,
    Variant,
)
from toolkit.runtimes import get_runtime

PROFILER_VERSION = 6  # bump when the measurement method changes, so cached profiles are re-measured
# Settings that decide how many rounds run, not what one round measures: left out of a round's cache key.
ROUND_SETTINGS = {"power", "rounds", "max_rounds", "target_win_probability", "extra_time_s", "noise_margin", "certify_runs"}


def profile(
    recipe: Recipe, progress: Progress = quiet, out: Path | None = None, formats: list[str] | None = None,
    ruled_out: dict[str, str] | None = None, certify_pick: bool = True, write: bool = True,
    not_evaluated: dict[str, str] | None = None,
) -> tuple[DeviceReport, Path]:
    """Measure every variant on this device, certify the pick, and write the device report. Variants in
    `ruled_out` are not measured, and those in `not_evaluated` have no accuracy (pipeline/search.py): their
    rows carry the reason."""
    ws = workspace(recipe)
    manifest = load_manifest(recipe)
    if formats:
        manifest = Manifest(recipe=manifest.recipe, variants=[v for v in manifest.variants if v.format in formats],
                            references=manifest.references)  # fidelity's bases, which load_quality looks up
        if not manifest.variants:
            raise UserError(f"no variant of format {', '.join(formats)} in the manifest", field="--format")
    device = device_fingerprint(recipe)
    if warning := oversubscribed(device):
        print(f"warning: {recipe.path}: {warning}", file=sys.stderr)
    check_offload(recipe, manifest)
    text = corpus(recipe)
    quality = load_quality(recipe, manifest, sha256_file(corpus(recipe)))
    if ruled_out is None:  # the staged search profiles nothing whose fidelity already breaks the budget
        ruled_out = quality_gate(recipe, quality) if recipe.search == "staged" else {}
    variants = {v.id: v for v in manifest.variants if v.id not in ruled_out}
    count = {"done": 0}

    def one_round(vid: str, index: int) -> Profile:
        progress(f"profile {variants[vid].label} (round {index + 1})", count["done"], len(variants) * recipe.device.rounds)
        count["done"] += 1
        return measure_round(recipe, variants[vid], device, text, ws, index)

    base = DeviceReport(
        roofline=device_roofline(ws, device), recipe=recipe.name, created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        toolkit_version=__version__, device=device,
        power=DevicePower(**recipe.device.power.model_dump()) if recipe.device.power else None,
        variants=manifest.variants, not_built=manifest.not_built, references=manifest.references, profiles=[], quality=quality,
        accuracy=load_accuracy(recipe, manifest, ruled_out | (not_evaluated or {})),
        previous_picks=previous_picks(recipe, device),
    )
    unmeasured = [_ruled_out(recipe, v, device, ruled_out[v.id]) for v in manifest.variants if v.id in ruled_out]
    dev = recipe.device
    report = run_rounds(
        Rounds(list(variants), one_round), lambda profiles: base.model_copy(update={"profiles": profiles + unmeasured}),
        lambda rep: _contenders(recipe, rep), lambda rep: rounds_standing(rep, recipe.budget, recipe.costs),
        dev.rounds, dev.max_rounds, dev.target_win_probability, dev.extra_time_s,
    )
    if certify_pick:
        report = certify(recipe, report, lambda r, v, i: measure_round(r, v, device, text, ws, i, "certify"), progress)
    progress("done", count["done"], count["done"])
    target = out or ws / "reports" / f"device-{device.label or device.hostname}-{device.id}.json"
    if write:
        write_json(target, report)
        remember_pick(recipe, report)
    return report, target


def _ruled_out(recipe: Recipe, variant: Variant, device: DeviceFingerprint, reason: str) -> Profile:
    """The row of a variant the staged search did not profile: what it is, and why it was not measured."""
    return Profile(status="skipped", reason=reason, **_identity(recipe, variant, device, key=""))


def _identity(recipe: Recipe, variant: Variant, device: DeviceFingerprint, key: str) -> dict:
    """The fields every profile of `variant` carries, measured or not."""
    return dict(
        key=key, variant_id=variant.id, variant_name=variant.label, format=variant.format,
        runtime=profiling_runtime(recipe, variant), device=device,
        settings=_settings(recipe) | {"n_ctx": jobs.profile_context(recipe, variant)},
        file_size_mb=round(variant.size_bytes / 2**20, 2),
    )


def _contenders(recipe: Recipe, report: DeviceReport) -> set[str]:
    if not report.measured:
        return set()
    return contenders(report, recipe.budget, recipe.costs, recipe.device.noise_margin)


def rounds_standing(report: DeviceReport, budget: Budget, costs: Costs) -> Standing:
    """The pick for the budget, its win probability, the variants tied with it, how sure the
    measurements are that they are practically equivalent (noise.equivalence), and its closest rival's win
    probability. Decided on the measurements alone: a previous certified pick (select.STICKY_RULE) may name the
    answer, but not how much to measure, so a rerun on cached rounds makes the first run's decisions."""
    if not report.measured:
        return Standing(None, 0.0, [], 0.0)
    # timing noise alone: more rounds cannot settle what accuracy's items leave open (options.item_draws)
    timings_only = [r.model_copy(update={"items": []}) for r in report.accuracy]
    rec = recommend(report.model_copy(update={"previous_picks": {}, "accuracy": timings_only}), budget, costs)
    win = next((r.win_probability or 0.0 for r in rec.rows if r.variant_id == rec.pick), 0.0)
    rival = max((r.win_probability or 0.0 for r in rec.rows if r.variant_id != rec.pick), default=0.0)
    return Standing(rec.pick, win, rec.tied_with, rec.tie_equivalence or 0.0, rival)


def _settings(recipe: Recipe) -> dict:
    """The device settings a profile records; llama_cpp's only where the native runtime is chosen."""
    settings = recipe.device.model_dump(mode="json", exclude={"prompt_lengths", "power", "llama_cpp", "label"})
    if recipe.device.llama_cpp.runtime == "native":
        settings |= {f"llama_cpp_{k}": v for k, v in recipe.device.llama_cpp.model_dump(mode="json").items()}
    return settings


def profiling_runtime(recipe: Recipe, variant: Variant) -> str:
    """The runtime that profiles `variant`: its own, or llama.cpp's native binaries where the recipe says."""
    native = variant.runtime == "llama.cpp" and recipe.device.llama_cpp.runtime == "native"
    return "llama.cpp-native" if native else variant.runtime


def check_offload(recipe: Recipe, manifest: Manifest) -> None:
    """GPU offload asked of a llama.cpp build without a GPU backend is an error, never silently CPU (auto
    falls back to the CPU, and each profile says so in `offload`)."""
    layers = recipe.device.llama_cpp.n_gpu_layers
    native = get_runtime("llama.cpp-native")
    if not layers or layers == "auto" or native.available() or not any(profiling_runtime(recipe, v) == native.name for v in manifest.variants):
        return
    module = native.load()
    if not module.gpu_devices():
        raise UserError(f"{layers} layers to offload, but the llama.cpp build in {module.bin_dir()} has no GPU backend "
                        "(llama-server --list-devices lists none); set 0, or build one with `toolkit llama-cpp-build "
                        "--backend cuda` (or vulkan, metal)", file=recipe.path, field="device.llama_cpp.n_gpu_layers")


def profile_key(recipe: Recipe, variant: Variant, device: DeviceFingerprint, *extra) -> str:
    settings = recipe.device.model_dump(mode="json", exclude=ROUND_SETTINGS | {"llama_cpp", "label"})  # label: in device.id
    if recipe.device.llama_cpp.runtime == "native":
        settings["llama_cpp"] = recipe.device.llama_cpp.model_dump(mode="json")
    settings["n_ctx"] = jobs.profile_context(recipe, variant)  # follows the budget's response shape
    versions, flags = runtime_build(profiling_runtime(recipe, variant))
    return content_hash(variant.id, variant.sha256, settings, device.id, versions | flags, "profile", PROFILER_VERSION,
                        *extra)


def measure_round(recipe: Recipe, variant: Variant, device: DeviceFingerprint, corpus: Path, ws: Path, index: int,
                  *extra) -> Profile:
    """One fresh-process measurement, cached on its own; a failure is kept with its reason and retried next run."""
    key = profile_key(recipe, variant, device, *extra)
    suffix = "".join(f"-{e}" for e in extra) + (f"-r{index}" if index else "")
    path = ws / "profiles" / f"{variant.id}-{key}{suffix}.json"
    return load_or_compute(path, Profile, lambda: measure(recipe, variant, device, key, corpus, ws, suffix))


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
    """Profile one variant in a child process: load, TTFT per prompt length, decode, memory, energy."""
    base = _identity(recipe, variant, device, key)
    if missing := get_runtime(base["runtime"]).available():
        return Profile(status="skipped", reason=missing, **base)
    dev = recipe.device
    log = ws / "logs" / f"profile-{variant.id}{log_suffix}.log"
    job = jobs.measure_job(recipe, variant, "profile", corpus, runtime=base["runtime"])
    child = jobs.run(job, dev.timeout_s, dev.memory_cap_mb, log)
    if child.status != "ok":
        return Profile(status=child.status, reason=child.reason, peak_rss_mb=child.data.get("peak_rss_mb"), wall_s=child.wall_s, **base)
    d = jobs.ProfileResult.model_validate(child.data)
    prompts = [
        PromptTiming(
            prompt_tokens=p.prompt_tokens, ttft_ms=Stat.of(p.ttft_ms),
            prefill_tps=Stat.of([p.prompt_tokens / (ms / 1000) for ms in p.ttft_ms]),
            runtime_prefill_tps=Stat.of(p.runtime_prefill_tps) if p.runtime_prefill_tps else None,
        )
        for p in d.prompts
    ]
    return Profile(
        status="ok", load_ms=round(d.load_ms, 2), prompts=prompts, decode_tokens=dev.decode_tokens,
        decode_context=d.decode_context,
        decode_tps=Stat.of(d.decode_tps), itl_ms=Stat.of(d.itl_ms, keep_values=False),
        runtime_decode_tps=Stat.of(d.runtime_decode_tps) if d.runtime_decode_tps else None,
        rapl_watts=Stat.of(d.rapl_watts) if d.rapl_watts else None, energy=profile_energy(child.data),
        peak_rss_mb=round(d.peak_rss_mb, 1),
        deploy_rss_mb=round(d.deploy_rss_mb, 1) if d.deploy_rss_mb is not None else None,
        llama_bench=_llama_bench(d.llama_bench) if d.llama_bench else None, gpu_layers=d.gpu_layers, offload=d.offload,
        wall_s=round(child.wall_s, 2), **base,
    )


def _llama_bench(raw: dict) -> LlamaBench:
    """llama-bench's samples (llamacpp_native.llama_bench) as Stats."""
    return LlamaBench(build=raw["build"], depth=raw["depth"], decode_tps=Stat.of(raw["decode_tps"]),
                      prefill_tps={int(k): Stat.of(v) for k, v in raw["prefill_tps"].items()})
