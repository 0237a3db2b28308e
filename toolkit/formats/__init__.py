"""Formats turn a source model into variants. Each registers itself; add one by adding a module."""

from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from toolkit.errors import UserError
from toolkit.io import ensure_dir, sha256_file
from toolkit.procs import die_with_parent
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
_BUILTIN = ("gguf", "onnx", "gptq")


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


def make_variant_id(source, spec: VariantSpec, tools: dict[str, str]) -> str:
    """Readable and content-addressed: model, format, quant, then a hash of source, spec and tool versions."""
    from toolkit.io import content_hash

    return f"{source.model}-{spec.format}-{spec.quant.lower()}-{content_hash(source.sha256, spec, tools, length=8)}"


def variant_dir(workspace: Path, variant_id: str) -> Path:
    return workspace / "variants" / variant_id


def path_size(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def path_sha256(path: Path) -> str:
    """sha256 of a file, or of the sorted (name, sha256) list of a folder's files."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def cached_variant(folder: Path) -> Variant | None:
    """The variant already built in `folder`, if its record and its complete files are there."""
    record = folder / "variant.json"
    if not record.exists():
        return None
    variant = Variant.load(record)
    target = Path(variant.path)
    if target.exists() and path_size(target) == variant.size_bytes:
        return variant
    return None


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the packages a format depends on ("missing" where not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def record_folder_variant(
    *, vid: str, label: str, fmt: str, runtime: str, quant: str, target: Path, ref: Path, source, seconds: float,
    tools: dict[str, str], notes: list[str], details: dict | None = None,
) -> Variant:
    """The manifest entry of a variant built as a folder from an HF reference, written beside it."""
    from toolkit.io import write_json
    from toolkit.reference import count_parameters

    n_params = count_parameters(ref)
    size = path_size(target)
    variant = Variant(
        id=vid, label=label, model=source.model, format=fmt, runtime=runtime, quant=quant,
        path=str(target.resolve()), size_bytes=size, sha256=path_sha256(target), n_params=n_params,
        bits_per_weight=round(size * 8 / n_params, 3) if n_params else None, source=source.origin,
        source_sha256=source.sha256, seconds=round(seconds, 2), tools=tools, notes=notes, details=details or {},
    )
    write_json(target.parent / "variant.json", variant)
    return variant


def dequantized_note(source, what: str) -> list[str]:
    if source.kind == "gguf":
        return [f"{what} from an HF reference that transformers dequantized from {source.path.name}"]
    return []


def run_tool(cmd: list[str], env: dict | None, log: Path, what: str, cwd: Path | None = None) -> None:
    """Run a tool in a child process (a crash there cannot take the sweep down) and keep its log."""
    ensure_dir(log.parent)
    if env is None and cwd is not None:  # the child must still import this package from its new folder
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")]))
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(
            cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, text=True, preexec_fn=die_with_parent()
        )
    if done.returncode != 0:
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        raise UserError(f"cannot {what}: {reason.strip()[:300]} (full log: {log})")
