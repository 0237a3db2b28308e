"""Profile a fleet on Ray: every device is a node of one Ray cluster with a custom resource naming it
(`ray start --address HEAD:6379 --resources '{"device:pi5-a": 1}'`), and `toolkit profile --devices pi5-a,...`
runs the profile stage on each of those nodes, as `toolkit profile` would run there: rounds of fresh
processes, certification, the device's own fingerprint, labelled with the device's name.

The variants reach a node through Ray's object store (the workspace's manifest, variants and quality results,
unpacked once into a node-local folder keyed by their content, so a rerun reuses what the node measured), or,
with `shared=True`, from the recipe's own workspace path on a filesystem every node mounts. Each device report
comes back to `<workspace>/reports/` as usual, where fleet recommendation, simulation and deploy read it.
A device whose node dies, or that fails, is reported with its reason; the others complete.

Security: Ray's own ports are unauthenticated; keep the cluster on a private network (Ray's docs, "Security").
Nothing is started here: the driver connects to the address given, 127.0.0.1 unless the user says otherwise.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from toolkit.errors import UserError
from toolkit.io import cache_root, write_json
from toolkit.pipeline.executor import connect, put, ray_reason, tar_bytes
from toolkit.pipeline.executor import unpack as untar
from toolkit.pipeline.workspace import load_manifest
from toolkit.recipe import Recipe
from toolkit.records import DeviceReport

SKIP = ("intermediate", "reference", "logs", "profiles", "reports", "gptq-work")  # not needed to profile
RESOURCE = "device:{}"


def pack(ws: Path, variant_paths: list[str]) -> bytes:
    """The workspace a device needs as one tar: the manifest, quality and accuracy results, and the files of the
    manifest's variants (not the stale ones an older recipe left in `variants/`)."""
    entries = [(path, path.name) for path in sorted(ws.iterdir())
               if path.name not in (*SKIP, "variants") and not path.name.startswith(".")]
    variants = [Path(raw).resolve() for raw in sorted(set(variant_paths))]
    return tar_bytes(entries + [(path, str(path.relative_to(ws.resolve()))) for path in variants if path.exists()])


def unpack(blob: bytes, old_ws: str, label: str, name: str) -> Path:
    """The packed workspace in a node-local folder (once per content), variant paths pointed at it."""
    target = cache_root() / "fleet" / label / f"{name}-{hashlib.sha256(blob).hexdigest()[:12]}"
    if not (target / "manifest.json").exists():
        untar(blob, target)
        manifest = target / "manifest.json"
        manifest.write_text(manifest.read_text(encoding="utf-8").replace(old_ws, str(target)), encoding="utf-8")
    return target


def profile_here(recipe_json: str, recipe_path: str, label: str, blob: bytes | None) -> str:
    """On the device's node: the profile stage, as `toolkit profile --device-label LABEL` runs it; the report JSON."""
    from toolkit import pipeline

    recipe = Recipe.model_validate_json(recipe_json)
    if blob is not None:
        recipe = recipe.model_copy(update={"workspace": str(unpack(blob, recipe.workspace, label, recipe.name))})
    recipe = recipe.model_copy(update={"device": recipe.device.model_copy(update={"label": label})})
    recipe.path = Path(recipe_path) if recipe_path else None
    report, _ = pipeline.profile(recipe, write=False)
    return report.model_dump_json()


def profile_on_devices(recipe: Recipe, devices: list[str], address: str, shared: bool = False,
                       say=print) -> tuple[list[Path], dict[str, str]]:
    """Profile on every named device's node; (the reports written, {device: why not} for the others)."""
    ws = recipe.workspace_dir()
    manifest = load_manifest(recipe)
    outside = [v.path for v in manifest.variants if not shared and not Path(v.path).resolve().is_relative_to(ws.resolve())]
    if outside:
        raise UserError(f"variant files outside the workspace ({outside[0]}); give --shared-workspace", field="--devices")
    connect(address)
    import ray

    offered = ray.cluster_resources()
    if missing := [d for d in devices if RESOURCE.format(d) not in offered]:
        raise UserError(f"no Ray node offers {', '.join(RESOURCE.format(d) for d in missing)}; start each device with "
                        f"`ray start --address {address} --resources '{{\"device:NAME\": 1}}'`", field="--devices")
    task = ray.remote(profile_here)
    blob = None if shared else put(pack(ws, [v.path for v in manifest.variants]), "--devices")
    absolute = recipe.model_copy(update={"workspace": str(ws)}).model_dump_json()  # a node's cwd is not ours
    pending = {d: task.options(resources={RESOURCE.format(d): 1}, num_cpus=1, max_retries=0).remote(
        absolute, str(recipe.path or ""), d, blob) for d in devices}
    written, failed = [], {}
    for device, ref in pending.items():
        try:
            report = DeviceReport.model_validate_json(ray.get(ref))
        except ray.exceptions.RayError as exc:
            failed[device] = ray_reason(exc)
            say(f"{device}: failed: {failed[device]}")
            continue
        target = ws / "reports" / f"device-{device}-{report.device.id}.json"
        write_json(target, report)
        written.append(target)
        say(f"{device}: {target}")
    return written, failed
