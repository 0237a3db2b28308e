"""Stage 1: every candidate model through every format the recipe asks for, into a manifest of variants."""

from __future__ import annotations

import sys

from toolkit.errors import UserError
from toolkit.formats import get_format
from toolkit.io import write_json
from toolkit.pipeline.workspace import Progress, quiet, variant_specs, workspace
from toolkit.recipe import Recipe
from toolkit.records import BuildFailure, Manifest, Variant
from toolkit.sources import resolve


def compress(recipe: Recipe, progress: Progress = quiet) -> Manifest:
    """Build (or find cached) each variant; a format's own cache makes a rerun cheap. A variant that cannot be
    built (an architecture a builder does not support, a precision it lacks) is recorded with its one-line
    reason and the sweep goes on; when nothing could be built, that is the error."""
    ws = workspace(recipe)
    specs = variant_specs(recipe)
    variants: list[Variant] = []
    failed: list[BuildFailure] = []
    total, done = len(recipe.candidates) * len(specs), 0
    for candidate in recipe.candidates:
        source = resolve(candidate, recipe)
        for spec in specs:
            progress(f"{source.model} {spec.format} {spec.quant}", done, total)
            try:
                variant = get_format(spec.format).build(source, spec, ws, recipe.device.threads)
            except UserError as exc:
                failed.append(BuildFailure(model=source.model, format=spec.format, quant=spec.quant, reason=exc.one_line()))
                print(f"warning: {failed[-1].label} not built: {failed[-1].reason}", file=sys.stderr)
                variant = None
            if variant is not None:
                variants.append(variant)
            done += 1
    progress("done", total, total)
    if not variants and failed:
        raise UserError(f"no variant could be built; {failed[0].label}: {failed[0].reason}", file=recipe.path)
    manifest = Manifest(recipe=recipe.name, variants=variants, not_built=failed)
    write_json(ws / "manifest.json", manifest)
    return manifest
