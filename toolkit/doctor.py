"""`toolkit doctor`: is this machine ready for a run? One line per check, with a fix for each problem."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import psutil

from toolkit.doctor_recipe import Check, check_candidates, check_cloud, check_offline_data, check_tasks
from toolkit.io import cache_root, importable
from toolkit.preflight import BUILD_TOOLS, energy_budget_error, native_bin, native_runtime_error
from toolkit.profiling import meters
from toolkit.profiling.meters.model import FIX as POWER_FIX
from toolkit.recipe import Recipe
from toolkit.runtimes import RUNTIMES

GIB = 2**30
# runtime -> the distributions whose pinned requirement fixes it
RUNTIME_PACKAGES = {"llama.cpp": ["llama-cpp-python"], "onnxruntime": ["onnxruntime", "tokenizers"],
                    "onnxruntime-genai": ["onnxruntime-genai"], "torch": ["torch", "transformers"]}
OPTIONAL_RUNTIMES = {"llama.cpp-native": "toolkit llama-cpp-build (or set device.llama_cpp.bin_dir to a llama.cpp build)"}
# module -> distribution, for the other packages a run imports
PACKAGES = {"lm_eval": "lm-eval", "optimum": "optimum", "optimum.onnxruntime": "optimum-onnx", "gguf": "gguf",
            "litellm": "litellm", "simpy": "simpy", "plotly": "plotly", "sentencepiece": "sentencepiece",
            "accelerate": "accelerate"}
# ... of which the build tools' (the `build` extra: compress and evaluate), which a device install leaves out
BUILD_PACKAGES = ("lm_eval", "optimum", "optimum.onnxruntime", "sentencepiece", "accelerate")
ONNX_RUNTIMES = ("onnxruntime", "onnxruntime-genai")  # the `onnx` extra
NOT_ON_A_DEVICE = (*ONNX_RUNTIMES, "torch")  # the runtimes a device install (`pip install -e .`) leaves out
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "asimd", "asimddp", "i8mm", "sve")


def pin(dist: str) -> str:
    """This toolkit's requirement for a distribution (e.g. onnxruntime==1.32.0), else its bare name."""
    try:
        reqs = metadata.requires("edgefirst-toolkit") or []
    except metadata.PackageNotFoundError:
        reqs = []
    norm = dist.lower().replace("_", "-")
    for req in reqs:
        name = re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower().replace("_", "-")
        if name == norm:  # in the core or in an extra (`build`, `onnx`): the pin is the same
            return req.split(";")[0].strip()
    return dist


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


BUILD_FIX = ".venv/bin/pip install -e '.[build]' (or ./scripts/setup.sh)"


def _install(*dists: str) -> str:
    return ".venv/bin/pip install " + " ".join(f"'{pin(d)}'" for d in dists) + " (or ./scripts/setup.sh)"


def check_python() -> Check:
    v = sys.version_info
    ok = (v.major, v.minor) == (3, 11)
    return Check("python", "ok" if ok else "FAIL", f"{sys.version.split()[0]} at {sys.executable}",
                 "use Python 3.11 (PYTHON=python3.11 ./scripts/setup.sh)")


def check_runtime(name: str, recipe: Recipe | None = None) -> Check:
    """A runtime, as a run of `recipe` would load it (the native llama.cpp from its device.llama_cpp.bin_dir)."""
    with native_bin(recipe):
        return _check_runtime(name, recipe)


def device_install() -> bool:
    """No build tool here: `pip install -e .` (DEVICE=1 ./scripts/setup.sh), which profiles, recommends and deploys
    while compress and evaluate run on a build machine. Some of them but not all is a broken install instead."""
    return not any(importable(module) for module in BUILD_TOOLS)


def _device_check(name: str, why: str, recipe: Recipe | None) -> Check:
    """A runtime a device install leaves out: ONNX Runtime is needed where the recipe has ONNX variants."""
    if name in ONNX_RUNTIMES:
        fix = ".venv/bin/pip install -e '.[onnx]' (or DEVICE=1 EXTRAS=onnx ./scripts/setup.sh)"
        if recipe is not None and getattr(recipe.variants, "onnx", None) is not None:
            return Check(name, "FAIL", f"the recipe has ONNX variants, and {why}", fix)
        return Check(name, "warn", f"{why}: this device install cannot profile ONNX variants", fix)
    return Check(name, "warn", f"{why}: a device install, which profiles GGUF (and with [onnx], ONNX) variants; "
                 "compress, evaluate and HF or GPTQ variants need the build tools", BUILD_FIX)


def _check_runtime(name: str, recipe: Recipe | None) -> Check:
    runtime = RUNTIMES[name]
    why = runtime.available()
    if why and name in NOT_ON_A_DEVICE and device_install():
        return _device_check(name, why, recipe)
    if why and name in OPTIONAL_RUNTIMES:  # only recipes that choose it need it
        if recipe is None:
            return Check(name, "warn", why, OPTIONAL_RUNTIMES[name])
        if error := native_runtime_error(recipe):  # the words `toolkit run` stops with
            return Check(name, "FAIL", error.one_line(), OPTIONAL_RUNTIMES[name])
        return Check(name, "ok", "not installed; only recipes with device.llama_cpp.runtime: native need it")
    if why:
        dists = RUNTIME_PACKAGES[name]
        return Check(name, "FAIL", why, _install(*([d for d in dists if not _installed(d)] or dists)))
    module = runtime.load()
    versions = ", ".join(f"{k} {v}" for k, v in module.versions().items())
    flags = module.build_flags()
    if name == "llama.cpp":
        on = [k for k, v in flags.items() if v == "1"]
        extra = "CPU features in the build: " + (" ".join(on) or "none")
    elif name == "llama.cpp-native":
        extra = "built with " + " ".join(v for k, v in flags.items() if k.endswith(("built with", "devices")))
    elif name == "onnxruntime":
        extra = "providers: " + flags.get("onnxruntime_providers", "?")
    elif name == "onnxruntime-genai":
        extra = "devices: " + flags.get("onnxruntime_genai_devices", "?")
    else:
        extra = "CPU capability: " + flags.get("torch_cpu_capability", "?")
    return Check(name, "ok", f"{versions}; {extra}")


def check_gptq() -> Check:
    """GPTQModel is optional (./scripts/setup.sh installs it unless SKIP_GPTQ=1); its CPU kernel is torch_fused."""
    try:
        version = metadata.version("gptqmodel")
    except metadata.PackageNotFoundError:
        return Check("gptqmodel", "warn", "not installed: GPTQ variants will be skipped",
                     "./scripts/setup.sh (without SKIP_GPTQ=1) builds GPTQModel 5.7.0 for the CPU")
    from toolkit.formats.gptq_tools import pack_kernel_library

    library = pack_kernel_library()
    built = library is not None and library.exists()
    compiler = shutil.which("c++") or shutil.which("g++")
    kernels = "CPU kernel: torch_fused; pack_block extension " + (
        f"compiled ({library})" if built else "not compiled yet: once, on the first quantization")
    if not built and not compiler:
        return Check("gptqmodel", "warn", f"{version}; {kernels}, and no C++ compiler to build it on first use",
                     "apt-get install g++ (GPTQModel compiles its CPU extension on first quantization)")
    return Check("gptqmodel", "ok", f"{version}; {kernels}")


def check_packages() -> Check:
    missing = {module: dist for module, dist in PACKAGES.items() if not importable(module)}
    build_only = device_install()  # then the build tools are missing by design
    needed = [dist for module, dist in missing.items() if not (build_only and module in BUILD_PACKAGES)]
    if needed:
        return Check("packages", "FAIL", "missing: " + ", ".join(needed), _install(*needed))
    if missing:
        return Check("packages", "warn", f"a device install, without the build tools ({', '.join(missing.values())}): toolkit "
                     "profile, recommend and deploy run here, compress and evaluate do not", BUILD_FIX)
    return Check("packages", "ok", f"{len(PACKAGES)} more packages importable ({', '.join(dict.fromkeys(PACKAGES.values()))})")


def check_cpu() -> Check:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return Check("cpu", "warn", "cannot read /proc/cpuinfo (not Linux?)", "run on Linux for the CPU checks")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.lower().startswith(("flags", "features"))), []))
    found = [f for f in CPU_FLAGS if f in flags]
    cores = psutil.cpu_count(logical=False)
    detail = f"{cores} cores, {psutil.cpu_count()} threads; " + (" ".join(found) or "no SIMD features listed")
    if not {"avx2", "asimd"} & flags:
        return Check("cpu", "warn", detail + " (no AVX2 or NEON: llama.cpp runs its slow paths)",
                     "expect low tok/s; profile on the device you will deploy to")
    return Check("cpu", "ok", detail)


def check_energy(recipe: Recipe | None) -> list[Check]:
    """The meter a profile would use ("energy"), then every meter: readable, or why not (energy/<meter>)."""
    power = recipe.device.power.model_dump() if recipe and recipe.device.power else None
    requested = recipe.device.energy_meter if recipe else "auto"
    choice = meters.choose(requested, power)
    choice.close()
    used = choice.meter.name if choice.meter else None
    lines = []
    for p in choice.probes:
        name = f"energy/{p.name}"
        if p.meter:
            lines.append(Check(name, "ok", ("used: " if p.name == used else "readable: ") + f"{p.meter.detail}"))
        elif p.fix and p.name in meters.MEASURED:  # the source is there, but not usable yet
            lines.append(Check(name, "warn", "not usable: " + p.why, p.fix))
        else:  # this device has none (the "energy" line says what that means)
            lines.append(Check(name, "ok", "none: " + p.why))
    asked = "" if requested == "auto" else f"device.energy_meter {requested}: "
    fixes = [p.fix for p in choice.probes if p.fix and p.name in meters.MEASURED and requested in ("auto", p.name)]
    if choice.meter and choice.meter.measured:
        head = Check("energy", "ok", asked + choice.meter.label)
    elif choice.meter:
        head = Check("energy", "warn", f"{asked}{choice.meter.label}; no readable meter here: {choice.why_not_measured()}",
                     fixes[0] if fixes else "profile on the device itself, where one of the meters below is readable")
    elif error := energy_budget_error(recipe, choice):
        head = Check("energy", "FAIL", error.one_line(), POWER_FIX)
    else:
        head = Check("energy", "warn", f"{asked}energy and cost unknown: no readable meter here "
                     f"({choice.why_not_measured()}) and no device.power", POWER_FIX)
    return [head, *lines]


def check_disk(workspace: Path) -> Check:
    probe = workspace
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free / GIB
    detail = f"{free:.1f} GiB free for the workspace {workspace}"
    fix = "free space or point the recipe's `workspace:` at a larger disk (the demo writes about 4 GB)"
    if free < 2:
        return Check("disk", "FAIL", detail, fix)
    return Check("disk", "warn" if free < 6 else "ok", detail, fix)


def check_memory() -> Check:
    mem = psutil.virtual_memory()
    detail = f"{mem.total / GIB:.1f} GiB, {mem.available / GIB:.1f} GiB available"
    fix = "close other programs; the ONNX fp32 and GPTQ variants peak at 1-1.5 GB for a 135M model"
    if mem.available < 1 * GIB:
        return Check("memory", "FAIL", detail, fix)
    return Check("memory", "warn" if mem.available < 2 * GIB else "ok", detail, fix)


def check_cache() -> Check:
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        writable = os.access(root, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        return Check("cache", "FAIL", f"{root} is not writable", "set EDGEFIRST_CACHE to a writable folder")
    used = sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 2**20
    return Check("cache", "ok", f"{root} ({used:,.0f} MB; EDGEFIRST_CACHE moves it)")


def check_browser() -> Check:
    found = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    kaleido = importable("kaleido")
    if found and kaleido:
        return Check("browser", "ok", f"{found}: the HTML report test runs, and kaleido draws PNG plots for the Markdown reports")
    if found:
        return Check("browser", "warn", f"{found}, but kaleido is not installed: the Markdown reports have no plots",
                     _install("kaleido"))
    return Check("browser", "warn", "no Chromium: the HTML report test is skipped and the Markdown reports have no plots",
                 "apt-get install chromium (Debian/Ubuntu)")


def run_checks(recipe: Recipe | None = None) -> list[Check]:
    workspace = recipe.workspace_dir() if recipe else Path.cwd() / ".edgefirst"
    checks: list[tuple[str, Callable[[], Check | list[Check]]]] = [
        ("python", check_python), *((name, lambda name=name: check_runtime(name, recipe)) for name in RUNTIMES),
        ("gptqmodel", check_gptq), ("packages", check_packages), ("cpu", check_cpu), ("energy", lambda: check_energy(recipe)),
        ("disk", lambda: check_disk(workspace)), ("memory", check_memory), ("cache", check_cache),
        ("candidates", lambda: check_candidates(recipe)), ("tasks", lambda: check_tasks(recipe)),
        ("cloud", lambda: check_cloud(recipe)),
        ("offline packages", lambda: check_offline_data(recipe)),
        ("browser", check_browser),
    ]
    out = []
    for name, check in checks:
        try:
            found = check()
            out.extend(found if isinstance(found, list) else [found])
        except Exception as exc:  # noqa: BLE001 - a broken check is a finding, not a crash
            out.append(Check(name, "FAIL", f"{type(exc).__name__}: {exc}", "reinstall with ./scripts/setup.sh"))
    return out
