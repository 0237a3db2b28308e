"""Hand a workspace to a device: one tar of what `toolkit profile` reads there, to unpack into the recipe's
workspace on the device (`tar xf BUNDLE -C WORKSPACE`).

In it: the manifest with every variant's path relative to the workspace (`workspace.here` resolves them), the
variant files (a file kept outside the workspace, such as a model as shipped in the download cache, under
`variants/outside/`), and the fidelity and accuracy results with the scorer versions that key them
(`scorers.json`), so the device's report carries what the build machine scored. Not in it: the references'
files, logs, intermediate conversions and earlier profiles, which profiling there does not read.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from toolkit.io import atomic_path
from toolkit.pipeline.workspace import SCORERS, load_manifest
from toolkit.recipe import Recipe
from toolkit.records import Variant

RESULTS = ("quality", "evals", SCORERS)  # what the device report takes from the build machine


def pack(recipe: Recipe, out: Path) -> tuple[Path, int]:
    """Write the bundle to `out` (atomically); (its path, how many variant files it holds)."""
    ws = recipe.workspace_dir()
    manifest = load_manifest(recipe)
    files = {v.id: _in_bundle(v, ws) for v in manifest.variants}
    portable = manifest.model_copy(deep=True)
    for variant in portable.variants:
        variant.path = files[variant.id]
    with atomic_path(out) as tmp, tarfile.open(tmp, "w") as tar:
        _add_text(tar, "manifest.json", portable.model_dump_json(indent=2))
        for name in RESULTS:
            if (ws / name).exists():
                tar.add(ws / name, arcname=name)
        for variant in manifest.variants:
            tar.add(variant.path, arcname=files[variant.id])
    return out, len(manifest.variants)


def _in_bundle(variant: Variant, ws: Path) -> str:
    """Where `variant`'s file goes in the bundle, relative to the workspace."""
    path = Path(variant.path).resolve()
    if path.is_relative_to(ws.resolve()):
        return str(path.relative_to(ws.resolve()))
    return f"variants/outside/{variant.sha256[:12]}/{path.name}"


def _add_text(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
