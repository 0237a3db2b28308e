"""One candidate model's variants: what compress runs per candidate, here or on a Ray node (executor.py)."""

from __future__ import annotations

from pathlib import Path

from toolkit.catalogue import find_card
from toolkit.errors import UserError
from toolkit.formats import VariantSpec, get_format
from toolkit.formats.gguf import SOURCE_QUANT
from toolkit.pipeline.workspace import variant_specs
from toolkit.recipe import Candidate, Recipe
from toolkit.records import BuildFailure, Variant
from toolkit.reference import hf_variant
from toolkit.sources import SourceModel, local_path, nowhere, resolve, source_kind, unfetchable

Built = tuple[list[Variant], list[BuildFailure]]  # a candidate's variants, and those not built with why
REFERENCE = "fidelity_reference"  # Variant.details key of a candidate's source_reference


def build_candidate(recipe: Recipe, index: int, ws: Path, step=lambda label: None) -> Built:
    """Every variant of the recipe's `index`-th candidate, built in `ws` (or found in its cache)."""
    try:
        source = resolve(recipe.candidates[index], recipe)
    except UserError as exc:
        if exc.field != "candidates.model":  # a problem inside the model's own files, which the error names
            raise
        raise UserError(exc.message, file=recipe.path, field=f"candidates.{index}.model") from exc
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
    if variants and all(v.unquantized is False and not v.as_shipped for v in variants):
        variants.append(source_reference(source, ws))
    return variants, failed


def source_reference(source: SourceModel, ws: Path) -> Variant:
    """The fidelity base of a candidate none of whose variants is unquantized or its source: the source as
    shipped (a GGUF file through llama.cpp, an HF checkpoint through transformers in fp32), so a GPTQ-only or
    int4-only recipe measures KL from the model, not from one of its own quants. Marked, not a candidate:
    compress moves it to the manifest's references."""
    if source.kind == "gguf":
        variant = get_format("gguf").build(source, VariantSpec("gguf", SOURCE_QUANT), ws)
    else:
        variant = hf_variant(source)
    variant.details[REFERENCE] = True
    return variant


def check_candidates(recipe: Recipe, here: bool = True) -> None:
    """Stop before any work on a candidate that is neither in the catalogue, a hub reference nor a local path,
    or (`here`: built on this machine) on the hub with this machine unable to fetch it, rather than after
    building the ones before it."""
    for index, candidate in enumerate(recipe.candidates):
        if source_kind(candidate, recipe) is None:
            raise nowhere(candidate, recipe, field=f"candidates.{index}.model")
        if here and (error := unfetchable(candidate, recipe, index)):
            raise error


def not_built(recipe: Recipe, candidate: Candidate, reason: str) -> list[BuildFailure]:
    """Every variant `candidate` would have had marked not built, for one reason (its build job was lost)."""
    model, kind = candidate.name or candidate.model, source_kind(candidate, recipe)
    specs = [s for s in variant_specs(recipe) if kind is None or get_format(s.format).applies_to(kind, s)]
    return [BuildFailure(model=model, format=s.format, quant=s.quant, reason=reason) for s in specs]


def candidate_params(candidate: Candidate, recipe: Recipe) -> int | None:
    """The candidate's parameter count, told without fetching anything: its catalogue card, or the headers of a
    local GGUF file or safetensors folder; None when unknown (a hub reference not yet fetched)."""
    from toolkit.formats.gguf_header import read_header
    from toolkit.reference import count_parameters

    if (card := find_card(candidate.model)) is not None:
        return int(card.params_m * 1e6)
    path = local_path(candidate, recipe)
    try:
        return read_header(path).n_params if path.is_file() else count_parameters(path) if path.is_dir() else None
    except Exception:  # noqa: BLE001 - a file its build will reject, with that build's own message
        return None

