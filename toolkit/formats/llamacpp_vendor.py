"""llama.cpp's HF-to-GGUF converter, taken from the llama-cpp-python source distribution on PyPI.

The converter (`convert_hf_to_gguf.py`, its `conversion/` package and the `gguf-py` it needs) is not in
the installed wheel, and PyPI's `gguf` is older than the converter expects. We fetch the sdist of the
*same* llama-cpp-python release that is installed, check its sha256 against the package index, and
extract only those files into the cache. Set EDGEFIRST_LLAMA_CPP_DIR to a llama.cpp checkout instead.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from toolkit.errors import UserError
from toolkit.io import atomic_dir, cache_root
from toolkit.pypi import fetch_sdist

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
        archive = fetch_sdist("llama-cpp-python", version)
        prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
        with atomic_dir(folder) as tmp, tarfile.open(archive) as tar:
            wanted = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.name[len(prefix):].startswith(_MEMBERS)]
            for member in wanted:
                member.name = member.name[len(prefix):]
            tar.extractall(tmp, members=wanted, filter="data")
        archive.unlink()  # 77 MB; the extracted converter is all we need
    return folder
