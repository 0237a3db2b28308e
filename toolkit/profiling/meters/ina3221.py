"""NVIDIA Jetson power rails from the on-board INA3221 monitors (what tegrastats and jtop read).

Two kernel layouts:
- hwmon (JetPack 5 and 6: Orin, Xavier): `/sys/class/hwmon/hwmonN` whose `name` is ina3221, channel k with
  `in{k}_label` (the rail, e.g. VDD_IN), `in{k}_input` (bus voltage, mV), `curr{k}_input` (mA) and, where
  the driver has it, `power{k}_input` (uW);
- iio (JetPack 4: Nano, TX2, Xavier): `/sys/bus/iio/devices/iio:deviceN` named ina3221x, `rail_name_{k}`,
  `in_power{k}_input` (mW), else `in_current{k}_input` (mA) x `in_voltage{k}_input` (mV).
The board's input rail (VDD_IN, or POM_5V_IN on a Nano/TX2) is the whole module's power and is used alone;
boards without one (AGX Xavier, AGX Orin) sum every rail.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from toolkit.profiling.meters.base import Meter, Unavailable, read_number

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


def hwmon_root() -> Path:
    return Path(os.environ.get("EDGEFIRST_HWMON_ROOT", "/sys/class/hwmon"))


def iio_root() -> Path:
    return Path(os.environ.get("EDGEFIRST_IIO_ROOT", "/sys/bus/iio/devices"))


@dataclass(frozen=True)
class Rail:
    label: str
    power: Path | None  # direct power reading, `power_scale` watts per unit
    current: Path  # mA
    voltage: Path  # mV
    power_scale: float = 1e-6

    def watts(self) -> float:
        if self.power is not None:
            return read_number(self.power) * self.power_scale
        return read_number(self.current) * read_number(self.voltage) / 1e6


def _text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _hwmon_rails(root: Path) -> list[Rail]:
    rails = []
    for dev in sorted(root.glob("hwmon*")):
        if _text(dev / "name") != "ina3221":
            continue
        for label_file in sorted(dev.glob("in*_label")):
            k = re.fullmatch(r"in(\d+)_label", label_file.name)
            label = _text(label_file)
            if not k or not (dev / f"curr{k[1]}_input").exists() or label in ("", "NC"):
                continue  # the sum-of-shunts channel has no current; NC: not connected
            power = dev / f"power{k[1]}_input"
            rails.append(Rail(label, power if power.exists() else None, dev / f"curr{k[1]}_input", dev / f"in{k[1]}_input"))
    return rails


def _iio_rails(root: Path) -> list[Rail]:
    rails = []
    for dev in sorted(root.glob("iio:device*")):
        if "ina3221" not in _text(dev / "name"):
            continue
        for name_file in sorted(dev.glob("rail_name_*")):
            k = name_file.name.rsplit("_", 1)[1]
            label = _text(name_file)
            if label in ("", "NC") or not (dev / f"in_current{k}_input").exists():
                continue
            power = dev / f"in_power{k}_input"
            rails.append(Rail(label, power if power.exists() else None, dev / f"in_current{k}_input",
                              dev / f"in_voltage{k}_input", power_scale=1e-3))
    return rails


class Ina3221Meter(Meter):
    name = "ina3221"
    kind = "power"
    max_hz = 50.0

    def __init__(self, rails: list[Rail], where: Path):
        self.rails = rails
        self.label = "measured: INA3221 " + "+".join(r.label for r in rails)
        self.detail = f"{', '.join(r.label for r in rails)} under {where}"

    @classmethod
    def open(cls) -> Ina3221Meter:
        for root, find in ((hwmon_root(), _hwmon_rails), (iio_root(), _iio_rails)):
            rails = find(root)
            if not rails:
                continue
            rails = [r for r in rails if r.label in INPUT_RAILS][:1] or rails
            meter = cls(rails, root)
            try:
                meter.read()
            except PermissionError as exc:
                raise Unavailable(f"{exc.filename} is not readable",
                                  "run as a user who can read the INA3221 files (sudo, or a udev rule)") from None
            except (OSError, ValueError) as exc:
                raise Unavailable(f"INA3221 rails under {root} cannot be read: {exc}") from None
            return meter
        raise Unavailable(f"no INA3221 rails under {hwmon_root()} or {iio_root()} (not a Jetson)")

    def read(self) -> dict[str, float]:
        """Watts per rail now."""
        return {r.label: r.watts() for r in self.rails}
