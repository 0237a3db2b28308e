"""NVIDIA GPUs through NVML (`pip install nvidia-ml-py`, imported as pynvml, only when probed).

Each GPU's total energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ since the driver loaded; Volta and
newer) is read at the edges of every window; where a GPU lacks it, its power draw (nvmlDeviceGetPowerUsage,
mW, which the driver itself averages) is sampled instead. Every GPU in the machine is summed. NVML sees the
GPU board only, not the CPU or the rest of the host.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from toolkit.profiling.meters.base import Meter, Unavailable


class NvmlMeter(Meter):
    name = "nvml"
    max_hz = 20.0

    def __init__(self, nvml: ModuleType, handles: list, counter: bool):
        self.nvml, self.handles = nvml, handles
        self.kind = "energy" if counter else "power"
        gpus = f"{len(handles)} GPU{'s' if len(handles) > 1 else ''}"
        self.label = f"measured: NVML {'energy counter' if counter else 'power draw'}, {gpus}"
        self.detail = f"{gpus}, " + ("nvmlDeviceGetTotalEnergyConsumption" if counter else "nvmlDeviceGetPowerUsage sampled")

    @classmethod
    def open(cls) -> NvmlMeter:
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            driver = Path("/proc/driver/nvidia/version").exists()
            raise Unavailable("nvidia-ml-py is not installed" + ("" if driver else " (and no NVIDIA driver)"),
                              ".venv/bin/pip install nvidia-ml-py" if driver else "") from None
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            raise Unavailable(f"NVML did not start ({exc}): no NVIDIA driver") from None
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            if not handles:
                raise Unavailable("NVML finds no NVIDIA GPU")
            for counter, probe in ((True, nvml.nvmlDeviceGetTotalEnergyConsumption), (False, nvml.nvmlDeviceGetPowerUsage)):
                try:
                    for h in handles:
                        probe(h)
                except nvml.NVMLError:
                    continue
                return cls(nvml, handles, counter)
            raise Unavailable("the GPUs report neither energy nor power through NVML")
        except BaseException:
            nvml.nvmlShutdown()
            raise

    def read(self) -> dict[str, float]:
        """Joules per GPU since the driver loaded (energy counter), or watts per GPU now."""
        if self.kind == "energy":
            return {f"gpu{i}": self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) / 1e3 for i, h in enumerate(self.handles)}
        return {f"gpu{i}": self.nvml.nvmlDeviceGetPowerUsage(h) / 1e3 for i, h in enumerate(self.handles)}

    def close(self) -> None:
        if self.handles:
            self.handles = []
            self.nvml.nvmlShutdown()
