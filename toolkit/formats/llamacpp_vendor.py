"""llama.cpp's HF-to-GGUF converter, taken from the llama-cpp-python source distribution on PyPI.

The converter (`convert_hf_to_gguf.py`, its `conversion/` package and the `gguf-py` it needs) is not in
the installed wheel, and PyPI's `gguf` is older than the converter expects. We fetch the sdist of the
*same* llama-cpp-python release that is installed, check its sha256 against PyPI's index, and extract
only those files into the cache. Set EDGEFIRST_LLAMA_CPP_DIR to a llama.cpp checkout to use that instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import urllib.request
from pathlib import Path

from toolkit.errors import UserError
from toolkit.io import atomic_dir, cache_root

SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"  # PEP 691, the index API pip itself uses
_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def llama_cpp_version() -> str:
    import llama_cpp

    return llama_cpp.__version__


def converter_dir() -> Path:
    """A folder with convert_hf_to_gguf.py, conversion/ and gguf-py/, fetched once per release."""
    override = os.environ.get("EDGEFIRST_LLAMA_CPP_DIR")
    if override:
        folder = Path(override)
        if not (folder / "convert_hf_to_gguf.py").exists():
            raise UserError("no convert_hf_to_gguf.py there", file=folder, field="EDGEFIRST_LLAMA_CPP_DIR")
        return folder
    version = llama_cpp_version()
    folder = cache_root() / f"llama.cpp-{version}"
    if not (folder / "convert_hf_to_gguf.py").exists():
        _fetch(version, folder)
    return folder


def _sdist_url(version: str) -> tuple[str, str]:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    request = urllib.request.Request(f"{index}/llama-cpp-python/", headers={"Accept": SIMPLE_JSON})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            meta = json.load(response)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"cannot read the package index {index} for the llama-cpp-python {version} sdist ({exc}); "
            "set EDGEFIRST_LLAMA_CPP_DIR to a llama.cpp checkout instead"
        ) from exc
    wanted = f"llama_cpp_python-{version}.tar.gz"
    for entry in meta.get("files", []):
        if entry["filename"] == wanted and "sha256" in entry.get("hashes", {}):
            return entry["url"], entry["hashes"]["sha256"]
    raise UserError(f"the package index {index} lists no {wanted}")


def _fetch(version: str, folder: Path) -> None:
    url, expected = _sdist_url(version)
    with atomic_dir(folder) as tmp:
        archive = tmp / "sdist.tar.gz"
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=300) as response, open(archive, "wb") as out:
            while block := response.read(1 << 20):
                digest.update(block)
                out.write(block)
        if digest.hexdigest() != expected:
            raise UserError(f"llama-cpp-python {version} sdist: sha256 mismatch with the package index")
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            wanted = [
                m for m in tar.getmembers()
                if m.name.startswith(prefix) and m.name[len(prefix):].startswith(_MEMBERS)
            ]
            for member in wanted:
                member.name = member.name[len(prefix):]
            tar.extractall(tmp, members=wanted, filter="data")
        archive.unlink()
