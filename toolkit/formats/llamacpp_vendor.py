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

PYPI_JSON = "https://pypi.org/pypi/llama-cpp-python/{version}/json"
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
    try:
        with urllib.request.urlopen(PYPI_JSON.format(version=version), timeout=60) as response:
            meta = json.load(response)
    except OSError as exc:
        raise UserError(
            f"cannot reach PyPI for the llama-cpp-python {version} sdist ({exc}); "
            "set EDGEFIRST_LLAMA_CPP_DIR to a llama.cpp checkout instead"
        ) from exc
    for entry in meta["urls"]:
        if entry["packagetype"] == "sdist":
            return entry["url"], entry["digests"]["sha256"]
    raise UserError(f"PyPI lists no sdist for llama-cpp-python {version}")


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
            raise UserError(f"llama-cpp-python {version} sdist: sha256 mismatch with PyPI's index")
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
