"""Formats turn a source model into variants. Each registers itself; add one by adding a module."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import UserError
from toolkit.records import Variant


@dataclass(frozen=True)
class VariantSpec:
    """One variant to build: which format, which quant, and format-specific settings."""

    format: str
    quant: str
    options: tuple[tuple[str, object], ...] = ()


@dataclass(frozen=True)
class Format:
    name: str
    runtime: str
    specs: Callable[[object], list[VariantSpec]]  # recipe.variants.<name> -> specs
    build: Callable[..., Variant]  # (source, spec, workspace, progress) -> Variant


FORMATS: dict[str, Format] = {}
_BUILTIN = ("gguf",)


def register(fmt: Format) -> Format:
    FORMATS[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    for module in _BUILTIN:
        importlib.import_module(f"toolkit.formats.{module}")
    try:
        return FORMATS[name]
    except KeyError as exc:
        raise UserError(f"unknown format {name!r} (known: {', '.join(sorted(FORMATS))})") from exc


def variant_dir(workspace: Path, variant_id: str) -> Path:
    return workspace / "variants" / variant_id
