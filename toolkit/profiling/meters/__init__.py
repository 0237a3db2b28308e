"""Energy meters, one module per source, and the registry that picks one.

`auto` prefers the meter that sees the most of the device: the Jetson's input rail (INA3221), the Pi 5's
PMIC, then RAPL's package and DRAM counters (x86 CPU inference), then NVML (the GPU board only); without any
it falls back to the recipe's power model (device.power), and reports say "estimated". A recipe may name
one meter (device.energy_meter); when that one is not readable the power model is used and the reason kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from toolkit.profiling.meters.base import Meter, Unavailable
from toolkit.profiling.meters.ina3221 import Ina3221Meter
from toolkit.profiling.meters.model import PowerModel
from toolkit.profiling.meters.nvml import NvmlMeter
from toolkit.profiling.meters.pi5_pmic import Pi5PmicMeter
from toolkit.profiling.meters.rapl import RaplMeter

MEASURED: dict[str, type[Meter]] = {m.name: m for m in (Ina3221Meter, Pi5PmicMeter, RaplMeter, NvmlMeter)}  # auto's order
NAMES = ("auto", *MEASURED, PowerModel.name)  # what device.energy_meter accepts


@dataclass
class Probe:
    """One meter on this device: open, or why not (and a fix where one exists)."""

    name: str
    meter: Meter | None = None
    why: str = ""
    fix: str = ""


def probe(name: str, power: Mapping[str, Any] | None = None) -> Probe:
    try:
        meter = PowerModel.open(power) if name == PowerModel.name else MEASURED[name].open()
    except Unavailable as exc:
        return Probe(name, why=exc.why, fix=exc.fix)
    return Probe(name, meter)


@dataclass
class Choice:
    """The meter a run uses (None: neither a readable meter nor device.power), and every meter's probe."""

    requested: str
    meter: Meter | None
    probes: list[Probe] = field(default_factory=list)

    @property
    def label(self) -> str:
        return self.meter.label if self.meter else "unknown: " + self.why_not_measured()

    def why_not_measured(self) -> str:
        """Why no measured meter is used: each meter's reason, or that the recipe asked for another."""
        return "; ".join(f"{p.name}: {self.unused()[p.name]}" for p in self.probes if p.name in MEASURED
                         and p.name in self.unused())

    def unused(self) -> dict[str, str]:
        """Every meter not used, and why."""
        used = self.meter.name if self.meter else None
        out = {}
        for p in self.probes:
            if p.name == used:
                continue
            if p.meter is None:
                out[p.name] = p.why
            elif self.requested not in ("auto", p.name):
                out[p.name] = f"readable, but the recipe asks for {self.requested}"
            else:
                out[p.name] = f"readable, but {used} is preferred"
        return out

    def close(self) -> None:
        if self.meter:
            self.meter.close()


def choose(requested: str = "auto", power: Mapping[str, Any] | None = None) -> Choice:
    """Probe every meter, keep the one to use open and close the rest."""
    if requested not in NAMES:
        raise ValueError(f"unknown energy meter {requested!r} (known: {', '.join(NAMES)})")
    probes = [probe(name, power) for name in (*MEASURED, PowerModel.name)]
    ready = {p.name: p.meter for p in probes if p.meter}
    if requested == "auto":
        meter = next(iter(ready.values()), None)
    else:
        meter = ready.get(requested) or ready.get(PowerModel.name)
    for other in ready.values():
        if other is not meter:
            other.close()
    return Choice(requested, meter, probes)


__all__ = ["MEASURED", "NAMES", "Choice", "Meter", "Probe", "Unavailable", "choose", "probe"]
