"""What every energy meter offers the registry and the sampler."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Literal

Kind = Literal["energy", "power", "model"]  # cumulative joules counters / watts now / the recipe's power model


class Unavailable(Exception):  # noqa: N818 - reads as `raise Unavailable(why)`
    """A meter this device does not offer: why, and how to enable it where something can be done."""

    def __init__(self, why: str, fix: str = ""):
        super().__init__(why)
        self.why, self.fix = why, fix


class Meter(ABC):
    """One source of energy figures. `open()` either returns a meter that has been read once, or raises
    Unavailable; `read()` gives one figure per domain or rail: cumulative joules for kind "energy" (read at
    the edges of each measured window), watts now for kind "power" (sampled in the background)."""

    name: ClassVar[str]  # the registry's (and the recipe's device.energy_meter) name
    max_hz: ClassVar[float] = 50.0  # the fastest this source is sampled
    kind: Kind
    label: str  # e.g. "measured: RAPL package+DRAM", what every report names
    detail: str  # where the figures come from, for `toolkit doctor`

    @classmethod
    @abstractmethod
    def open(cls) -> Meter: ...

    @abstractmethod
    def read(self) -> dict[str, float]: ...

    def close(self) -> None:  # noqa: B027 - most meters hold nothing to release
        pass

    @property
    def measured(self) -> bool:
        return self.kind != "model"


def read_number(path: Path) -> float:
    """One sysfs value; an unreadable file (often root-only) raises PermissionError, an OSError."""
    return float(path.read_text().strip())
