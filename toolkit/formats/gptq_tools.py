"""Child process: GPTQ-quantize an HF folder with GPTQModel on the CPU.

    python -m toolkit.formats.gptq_tools HF_DIR OUT_DIR BITS GROUP_SIZE DESC_ACT CALIBRATION_FILE

Run with the working directory inside the workspace: GPTQModel writes its offload folder and logs there.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
from pathlib import Path

KERNEL = "gptqmodel_pack_block_cpu"
FLAGS = ["-O3", "-std=c++17"]  # GPTQModel's own


def _kernel_source() -> Path | None:
    """The kernel's C++ source where GPTQModel itself looks for it, found without importing GPTQModel (16 s)."""
    from importlib import util

    found = util.find_spec("gptqmodel")
    if found is None or found.origin is None:
        return None
    site = Path(found.origin).resolve().parents[1]
    return next((p for p in (site / "pack_block_cpu.cpp", site / "gptqmodel_ext" / "pack_block_cpu.cpp")
                 if p.exists()), None)


def pack_kernel_library() -> Path | None:
    """Where the compiled packing kernel is kept; None without GPTQModel or its kernel source."""
    return _kernel()[1]


def _kernel() -> tuple[Path, Path] | tuple[None, None]:
    """The kernel's source, and its library in the cache keyed by torch, GPTQModel, that source and the machine."""
    from importlib import metadata

    from toolkit.io import cache_root, content_hash, sha256_file

    if (source := _kernel_source()) is None:
        return None, None
    key = content_hash(metadata.version("torch"), metadata.version("gptqmodel"), sha256_file(source),
                       platform.machine(), FLAGS)
    return source, cache_root() / "kernels" / f"{KERNEL}-{key}.so"


def load_pack_kernel() -> None:
    """Load GPTQModel's C++ packing kernel, compiled once into the cache (`pack_kernel_library`).

    GPTQModel compiles it in every quantizing process, after deleting its build folder, because torch names that
    folder by version alone (about 50 s on 2 cores). Once the op is registered, GPTQModel skips its own build.
    Without a compiler nothing is loaded here, and GPTQModel falls back as it would have.
    """
    import torch
    from torch.utils.cpp_extension import load

    from toolkit.io import atomic_path

    source, library = _kernel()
    if source is None or library is None:
        return
    if library.exists():
        torch.ops.load_library(str(library))
        print(f"toolkit: GPTQModel's packing kernel loaded from {library}", flush=True)
        return
    try:
        with tempfile.TemporaryDirectory() as build, atomic_path(library) as tmp:
            load(name=KERNEL, sources=[str(source)], extra_cflags=FLAGS, build_directory=build,
                 is_python_module=False, verbose=False)  # also registers the op in this process
            os.replace(Path(build) / f"{KERNEL}.so", tmp)
    except Exception as exc:  # noqa: BLE001 - no compiler or headers: GPTQModel's fallback applies
        print(f"toolkit: GPTQModel's packing kernel could not be compiled ({type(exc).__name__})", flush=True)
        return
    print(f"toolkit: GPTQModel's packing kernel compiled into {library}", flush=True)


def quantize(hf_dir: str, out_dir: str, bits: int, group_size: int, desc_act: bool, calibration: str) -> None:
    from gptqmodel import GPTQModel, QuantizeConfig

    load_pack_kernel()
    lines = [ln for ln in Path(calibration).read_text(encoding="utf-8").splitlines() if ln.strip()]
    config = QuantizeConfig(
        bits=bits,
        group_size=group_size,
        desc_act=desc_act,
        offload_to_disk_path=str(Path(os.getcwd()) / "gptqmodel_offload"),
    )
    model = GPTQModel.load(hf_dir, config, device="cpu")
    model.quantize(lines, batch_size=1)
    model.save(out_dir)


if __name__ == "__main__":
    src, dst, bits, group, desc, calib = sys.argv[1:]
    quantize(src, dst, int(bits), int(group), desc == "1", calib)
