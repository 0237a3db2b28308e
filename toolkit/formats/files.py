"""File helpers shared by the formats: where variants live, their size and hash, cached records."""

from __future__ import annotations

import json
import math
from pathlib import Path

from toolkit.errors import UserError
from toolkit.io import files_sha256, sha256_file, write_json
from toolkit.records import Variant


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
    return files_sha256(path, (p for p in path.rglob("*") if p.is_file()))


def model_shape(path: Path) -> dict[str, int]:
    """What the variant's own files say of the model's shape, read once: `context_length` (trained context) and
    `embedding_params` (token embedding plus output projection, once when tied), from the GGUF header and tensor
    table or the configs beside the weights; a figure the files do not give is left out."""
    from toolkit.formats.gguf_header import read_header

    try:
        if path.is_file():
            files: dict = {"gguf": read_header(path)}
        else:
            files = {name: json.loads((path / name).read_text(encoding="utf-8"))
                     for name in ("genai_config.json", "config.json") if (path / name).exists()}
    except (OSError, ValueError, UserError):
        return {}
    shape = {}
    for key, read in (("context_length", _context_length), ("embedding_params", _embedding_params)):
        try:
            shape[key] = int(read(files))
        except (KeyError, ValueError, TypeError):
            continue
    return shape


def _context_length(files: dict) -> int:
    if header := files.get("gguf"):
        return header.fields[f"{header.fields['general.architecture']}.context_length"]
    if genai := files.get("genai_config.json"):
        return genai["model"]["context_length"]
    config = files["config.json"]
    config = config.get("text_config", config)  # multimodal checkpoints keep the text model's apart
    return config.get("max_position_embeddings") or config["n_positions"]


def _embedding_params(files: dict) -> int:
    if header := files.get("gguf"):
        sizes = {t.name: t.n_elements for t in header.tensors}
        return sizes["token_embd.weight"] + sizes.get("output.weight", 0)
    if config := files.get("config.json"):
        config = config.get("text_config", config)
        return config["vocab_size"] * config["hidden_size"] * (1 if config.get("tie_word_embeddings", True) else 2)
    model = files["genai_config.json"]["model"]
    return model["vocab_size"] * model["decoder"]["hidden_size"]  # tied or not, genai's config does not say


def trained_context(path: Path) -> int | None:
    """The context length the model was trained for, from the variant's own files; None when they do not say."""
    return model_shape(path).get("context_length")


def serving_context(prompt_tokens: int, output_tokens: int, trained: int | None) -> int:
    """The context a server gets for a response shape: a power of two, at least 2048, within the model's
    trained context. Every hand-off (export, deploy) serves at it, and profiles open the runtime at it
    (pipeline/jobs.py), so the memory measured holds the KV cache a deployed server allocates."""
    ctx = max(2048, 2 ** math.ceil(math.log2(prompt_tokens + output_tokens)))
    return min(ctx, trained) if trained else ctx


def embedding_params(path: Path) -> int | None:
    """Parameters of the token embedding and the output projection; None when the files do not say."""
    return model_shape(path).get("embedding_params")


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
