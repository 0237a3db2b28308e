"""Stage 1: every candidate model through every format the recipe asks for, into a manifest of variants."""

from __future__ import annotations

from toolkit.formats import get_format
from toolkit.io import write_json
from toolkit.pipeline.workspace import Progress, quiet, variant_specs, workspace
from toolkit.recipe import Recipe
from toolkit.records import Manifest, Variant
from toolkit.sources import resolve


def compress(recipe: Recipe, progress: Progress = quiet) -> Manifest:
    """Build (or find cached) each variant; a format's own cache makes a rerun cheap."""
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
