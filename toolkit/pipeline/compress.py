"""Stage 1: every candidate model through every format the recipe asks for, into a manifest of variants."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from toolkit.errors import UserError
from toolkit.formats.files import model_shape
from toolkit.io import write_json
from toolkit.pipeline.build import REFERENCE, check_candidates
from toolkit.pipeline.executor import LOCAL, Executor, fan_out
from toolkit.pipeline.workspace import Progress, quiet, variant_specs, workspace
from toolkit.recipe import Recipe
from toolkit.records import BuildFailure, Manifest, Variant


def compress(recipe: Recipe, progress: Progress = quiet, executor: Executor = LOCAL) -> Manifest:
    """Build (or find cached) each variant; a format's own cache makes a rerun cheap. A variant that cannot be
    built (an architecture a builder does not support, a precision it lacks) is recorded with its one-line
    reason and the sweep goes on; when nothing could be built, that is the error. The executor builds as many
    candidate models at once as it can (one model's variants share its conversion, so they stay together);
    the variants keep the recipe's order whatever finishes first."""
    check_candidates(recipe, here=executor is LOCAL)  # a Ray node may reach the hub where this machine cannot
    ws = workspace(recipe)
    total, done = len(recipe.candidates) * len(variant_specs(recipe)), [0]

    def step(label: str) -> None:
        progress(label, done[0], total)
        done[0] += 1
    calls = [functools.partial(executor.build, recipe, i, ws, step) for i in range(len(recipe.candidates))]
    variants, failed = [], []
    for built, not_built in fan_out(executor, calls, executor.build_width(recipe)):
        variants += built
        failed += not_built
    references = [v for v in variants if v.details.get(REFERENCE)]
    variants, same = _distinct([v for v in variants if not v.details.get(REFERENCE)])
    failed += same
    for failure in failed:
        print(f"warning: {failure.label} not built: {failure.reason}", file=sys.stderr)
    progress("done", total, total)
    if not variants and failed:
        raise UserError(f"no variant could be built; {failed[0].label}: {failed[0].reason}", file=recipe.path)
    for variant in variants + references:  # read by the reports (context) and the roofline (prefill work per token)
        variant.details = model_shape(Path(variant.path)) | variant.details
    manifest = Manifest(recipe=recipe.name, variants=variants, not_built=failed, references=references)
    write_json(ws / "manifest.json", manifest)
    return manifest


def _distinct(variants: list[Variant]) -> tuple[list[Variant], list[BuildFailure]]:
    """The variants without byte-identical repeats (a quant the source file already is, requantized to itself),
    which would only be measured twice and tie with themselves; each repeat is noted with the one it repeats."""
    first: dict[tuple[str, str], Variant] = {}
    kept, repeats = [], []
    for v in variants:
        if (seen := first.setdefault((v.model, v.sha256), v)) is v:
            kept.append(v)
        else:
            repeats.append(BuildFailure(model=v.model, format=v.format, quant=v.quant,
                                        reason=f"the same file as {seen.label} (sha256 {v.sha256[:12]})"))
    return kept, repeats
