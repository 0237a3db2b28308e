"""Source distributions from the package index (PEP 691 JSON API, the one pip uses), sha256-checked."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import urllib.request
from pathlib import Path

from toolkit.errors import UserError
from toolkit.io import atomic_path, cache_root, sha256_file

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"
SDIST_EXTENSIONS = (".tar.gz", ".zip")


def index_url() -> str:
    return os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")


def sdist_url(package: str, version: str) -> tuple[str, str]:
    name = package.lower().replace("_", "-")
    request = urllib.request.Request(f"{index_url()}/{name}/", headers={"Accept": SIMPLE_JSON})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            meta = json.load(response)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the package index {index_url()} for {package} {version} ({exc})") from exc
    for entry in meta.get("files", []):
        if sdist_version(entry["filename"], package) == version.lower() and "sha256" in entry.get("hashes", {}):
            return entry["url"], entry["hashes"]["sha256"]
    raise UserError(f"the package index {index_url()} lists no sdist for {package} {version}")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sdist_version(filename: str, package: str) -> str | None:
    """The version in an sdist file name of `package` (`NAME-VERSION.tar.gz` or `.zip`), else None: an exact
    match, so that 0.3.3 never matches `package-0.3.36.tar.gz`."""
    lower = filename.lower()
    ext = next((e for e in SDIST_EXTENSIONS if lower.endswith(e)), None)
    if ext is None:
        return None
    name, _, version = lower[: -len(ext)].rpartition("-")
    return version if name and version and _normalise(name) == _normalise(package) else None


def fetch_sdist(package: str, version: str) -> Path:
    """Download (once, into the cache) and return the sdist archive of package==version."""
    url, expected = sdist_url(package, version)
    target = cache_root() / "sdists" / url.rsplit("/", 1)[-1]
    if target.exists():
        if sha256_file(target) == expected:
            return target
        print(f"warning: {target}: sha256 does not match the package index; downloading it again", file=sys.stderr)
        target.unlink()
    with atomic_path(target) as tmp:
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=600) as response, open(tmp, "wb") as out:
                while block := response.read(1 << 20):
                    digest.update(block)
                    out.write(block)
        except OSError as exc:
            raise UserError(f"cannot download {url} ({exc})") from exc
        if digest.hexdigest() != expected:
            raise UserError(f"{package} {version} sdist: sha256 mismatch with the package index "
                            f"(got {digest.hexdigest()[:12]}..., expected {expected[:12]}...)")
    return target
