"""Atomic writes and content hashes: a file or folder either exists complete or not at all.

Temporaries are named `.NAME.PID.XXXX.part` after the process writing them, so that when a run is killed
(SIGKILL: its `finally` never runs) the next run can tell them apart from a live writer's and remove them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel

from toolkit.errors import UserError


def ensure_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create folder ({exc.strerror})", file=path) from exc
    if not os.access(path, os.W_OK):
        raise UserError("folder is not writable", file=path)
    return path


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_TEMP = re.compile(r"\.(\d+)\.[a-z0-9_]+\.part$")  # tempfile's random part has no dots


def temp_prefix(name: str) -> str:
    """`NAME.PID.`: with tempfile's random part and a `.part` suffix, a temporary that says who writes it."""
    return f"{name}.{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # exists but cannot be inspected: assume it still writes


def sweep_stale(folder: Path, prefix: str = ".", recursive: bool = False) -> int:
    """Remove the temporaries (files or folders) that dead processes left in `folder`; return how many."""
    try:
        found = sorted((folder.rglob if recursive else folder.glob)(f"{prefix}*.part"))
    except OSError:
        return 0
    removed = 0
    for path in found:
        match = _TEMP.search(path.name)
        if match is None or _alive(int(match[1])) or not os.path.lexists(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    return removed


FULL = (errno.ENOSPC, errno.EDQUOT)  # the disk, or this user's quota on it, is full


@contextlib.contextmanager
def disk_full_is_one_line(target: Path) -> Iterator[None]:
    """Turn "no space left" while writing `target` into a UserError naming it (the rest stays a bug)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in FULL:
            raise
        raise UserError(f"no space left on the device while writing it ({exc.strerror}); "
                        "free some space (or move EDGEFIRST_CACHE / the workspace) and run again", file=target) from exc


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it over `target`, else delete it."""
    ensure_dir(target.parent)
    sweep_stale(target.parent)
    with disk_full_is_one_line(target):
        fd, tmp_name = tempfile.mkstemp(prefix=f".{temp_prefix(target.name)}", suffix=".part", dir=target.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; on success it becomes `target`."""
    ensure_dir(target.parent)
    sweep_stale(target.parent)
    with disk_full_is_one_line(target):
        tmp = Path(tempfile.mkdtemp(prefix=f".{temp_prefix(target.name)}", suffix=".part", dir=target.parent))
        try:
            yield tmp
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


_HELD: dict[Path, int] = {}  # folder -> the descriptor whose lock this process holds until it exits
LOCK_NAME = ".lock"


def hold_lock(folder: Path) -> None:
    """Lock `folder` for this process (flock on `folder/.lock`, released when the process exits, even by
    SIGKILL). Taking it again in the same process is a no-op; a lock held by another process is a UserError."""
    key = folder.resolve()
    path = key / LOCK_NAME
    if key in _HELD:
        with contextlib.suppress(OSError):
            if os.fstat(_HELD[key]).st_ino == os.stat(path).st_ino:
                return
        os.close(_HELD.pop(key))  # the folder was removed and made again: lock the new lock file
    with disk_full_is_one_line(path):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise UserError(f"cannot open the lock file ({exc.strerror})", file=path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"another toolkit run (pid {holder}) is using this workspace; wait for it to finish "
                            "or give this run its own workspace", file=key) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[key] = fd


def write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: Path, data: Any) -> None:
    if isinstance(data, BaseModel):
        text = data.model_dump_json(indent=2)
    else:
        text = json.dumps(data, indent=2, sort_keys=True, default=str)
    write_text(target, text + "\n")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def files_sha256(root: Path, files: Iterable[Path]) -> str:
    """sha256 of the sorted (path under `root`, sha256) list of `files`."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(f"{file.relative_to(root)}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def content_hash(*parts: Any, length: int = 12) -> str:
    """A short, stable hash of JSON-serialisable parts (settings, versions, source digests)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def cache_root() -> Path:
    """Where downloaded packages and tools are kept between runs (EDGEFIRST_CACHE overrides)."""
    base = os.environ.get("EDGEFIRST_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "edgefirst-toolkit"
    )
    return Path(base)


def state_root() -> Path:
    """Small records of what this machine decided, read by every workspace on it (XDG state)."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "edgefirst-toolkit"


def importable(module: str) -> bool:
    """Whether `module` is installed here, without importing it (a parent package is imported for a submodule)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
