"""One candidate model's variants: what compress runs per candidate, here or on a Ray node (executor.py)."""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import UserError
from toolkit.formats import get_format
from toolkit.pipeline.workspace import variant_specs
from toolkit.recipe import Candidate, Recipe
from toolkit.records import BuildFailure, Variant
from toolkit.sources import resolve, source_kind

Built = tuple[list[Variant], list[BuildFailure]]  # a candidate's variants, and those not built with why


def build_candidate(recipe: Recipe, index: int, ws: Path, step=lambda label: None) -> Built:
    """Every variant of the recipe's `index`-th candidate, built in `ws` (or found in its cache)."""
    source = resolve(recipe.candidates[index], recipe)
    variants, failed = [], []
    for spec in variant_specs(recipe):
        step(f"{source.model} {spec.format} {spec.quant}")
        try:
            variant = get_format(spec.format).build(source, spec, ws, recipe.device.threads)
        except UserError as exc:
            failed.append(BuildFailure(model=source.model, format=spec.format, quant=spec.quant, reason=exc.one_line()))
            variant = None
        if variant is not None:
            variants.append(variant)
    return variants, failed


def not_built(recipe: Recipe, candidate: Candidate, reason: str) -> list[BuildFailure]:
    """Every variant `candidate` would have had marked not built, for one reason (its build job was lost)."""
    model, kind = candidate.name or candidate.model, source_kind(candidate, recipe)
    specs = [s for s in variant_specs(recipe) if kind is None or get_format(s.format).applies_to(kind, s)]
    return [BuildFailure(model=model, format=s.format, quant=s.quant, reason=reason) for s in specs]
