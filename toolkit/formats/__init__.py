"""Formats turn a source model into variants (GGUF, ONNX, GPTQ, ...), behind a lazy registry.

Adding a format is one file plus one registry line:
1. `toolkit/formats/<name>.py` with a `Format` subclass: `name`, the `runtime` that runs its files, a pydantic
   `Spec` (what `variants.<name>` in a recipe may say), `specs()` (the variants a spec asks for), `make()`
   (build one variant into its folder; `build()` finds it there first), and `packages` or `tool_versions()`
   (what its results depend on).
2. `"<name>": "toolkit.formats.<name>:<Class>"` in `REGISTRY` below, or `register("<name>", Class)` at run time
   (tests/fakes.py registers a fake format this way).
The recipe validates `variants:` through the registry, so the new format is usable from YAML at once.
"""

from __future__ import annotations

import functools
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field, create_model

from toolkit.config import Strict
from toolkit.errors import UserError
from toolkit.formats.files import cached_variant, package_versions, variant_dir
from toolkit.io import content_hash
from toolkit.records import Variant


@dataclass(frozen=True)
class VariantSpec:
    """One variant to build: which format, which quant, and format-specific settings."""

    format: str
    quant: str
    options: tuple[tuple[str, object], ...] = ()


class Format(ABC):
    """A way to compress a source model into variant files that one runtime can run."""

    name: ClassVar[str]
    runtime: ClassVar[str]  # a name in toolkit.runtimes.REGISTRY
    Spec: ClassVar[type[BaseModel]]  # the recipe's `variants.<name>` section
    enabled_by_default: ClassVar[bool] = False  # built for a recipe without a `variants:` section
    packages: ClassVar[tuple[str, ...]] = ()  # Python packages whose versions the variants depend on

    @abstractmethod
    def specs(self, spec: BaseModel) -> list[VariantSpec]:
        """The variants a recipe's section asks for."""

    def applies_to(self, kind: str, spec: VariantSpec) -> bool:
        """Whether `spec` makes a variant from a source of this kind ("gguf" file or "hf" checkpoint)."""
        return True

    def build(self, source, spec: VariantSpec, workspace: Path, threads: int | None = None) -> Variant | None:
        """The variant as built before (its folder is named by its content-addressed id), else made now; None
        when the spec does not apply to this source."""
        vid = self.variant_id(source, spec)
        folder = variant_dir(workspace, vid)
        return cached_variant(folder) or self.make(source, spec, vid, folder, workspace, threads)

    @abstractmethod
    def make(self, source, spec: VariantSpec, vid: str, folder: Path, workspace: Path,
             threads: int | None) -> Variant | None:
        """Build variant `vid` into `folder` (intermediates under `workspace`)."""

    def tool_versions(self) -> dict[str, str]:
        return package_versions(*self.packages)

    def spec_tool_versions(self, spec: VariantSpec) -> dict[str, str]:
        """The tool versions this spec's variant depends on (a format with several builders may differ per spec)."""
        return self.tool_versions()

    def runtime_of(self, spec: VariantSpec) -> str:
        """The runtime that runs this spec's variant (a format with several builders may differ per spec)."""
        return self.runtime

    def check_available(self, packages: tuple[str, ...] | None = None) -> str | None:
        """None when every tool the format (or `packages` of it) needs is installed, else what is missing."""
        versions = package_versions(*packages) if packages else self.tool_versions()
        missing = [name for name, ver in versions.items() if ver == "missing"]
        return f"{self.name} variants need {', '.join(missing)}; ./scripts/setup.sh installs them" if missing else None

    def variant_id(self, source, spec: VariantSpec) -> str:
        """Readable and content-addressed: model, format, quant, then a hash of source, spec and tool versions."""
        return f"{source.model}-{spec.format}-{spec.quant.lower()}-{content_hash(source.sha256, spec, self.spec_tool_versions(spec), length=8)}"


REGISTRY: dict[str, str | type[Format]] = {
    "gguf": "toolkit.formats.gguf:GGUF",
    "onnx": "toolkit.formats.onnx:ONNX",
    "gptq": "toolkit.formats.gptq:GPTQ",
}


def register(name: str, target: str | type[Format]) -> None:
    """Add a format by class or by "module:Class" (imported on first use)."""
    REGISTRY[name] = target
    _instances.pop(name, None)


_instances: dict[str, Format] = {}


def get_format(name: str) -> Format:
    if name not in _instances:
        target = REGISTRY.get(name)
        if target is None:
            raise UserError(f"unknown format {name!r} (known: {', '.join(REGISTRY)})")
        if isinstance(target, str):
            module, _, cls = target.partition(":")
            target = getattr(importlib.import_module(module), cls)
        _instances[name] = target()
    return _instances[name]


def variants_model() -> type[BaseModel]:
    """The recipe's `variants:` section: one optional field per registered format, typed by its Spec."""
    return _variants_model(tuple((name, str(target)) for name, target in REGISTRY.items()))


@functools.cache
def _variants_model(key: tuple[tuple[str, str], ...]) -> type[BaseModel]:
    fields = {}
    for name, _ in key:
        fmt = get_format(name)
        default = {"default_factory": fmt.Spec} if fmt.enabled_by_default else {"default": None}
        fields[name] = (fmt.Spec | None, Field(**default))
    return create_model("Variants", __base__=Strict, **fields)

