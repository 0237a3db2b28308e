"""Intel/AMD RAPL through Linux powercap: package and DRAM energy counters, wrap-around handled.

Each zone `intel-rapl:N` is a package (its `name` reads package-N; `psys`, the whole platform, overlaps the
packages and is left out); a sub-zone `intel-rapl:N:M` named `dram` is that package's memory. `energy_uj`
counts microjoules and wraps to 0 after `max_energy_range_uj`, so a reading lower than the last adds the
range. Since Linux 5.10 `energy_uj` is root-only (CVE-2020-8694, Platypus); see the README to open it.
"""

from __future__ import annotations

import os
from pathlib import Path

from toolkit.profiling.meters.base import Meter, Unavailable, read_number

FIX = ("sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj /sys/class/powercap/intel-rapl:*:*/energy_uj "
       "(lasts until reboot; a udev rule keeps it, see the README's Energy section), then profile again")


def rapl_root() -> Path:
    return Path(os.environ.get("EDGEFIRST_RAPL_ROOT", "/sys/class/powercap"))


def _zone_name(zone: Path) -> str | None:
    try:
        return (zone / "name").read_text().strip()
    except OSError:
        return None


class RaplMeter(Meter):
    name = "rapl"
    kind = "energy"

    def __init__(self, domains: dict[str, Path]):
        self.domains = domains
        self.ranges = {k: read_number(d / "max_energy_range_uj") for k, d in domains.items()}
        self._last = {k: read_number(d / "energy_uj") for k, d in domains.items()}
        self._total_uj = dict.fromkeys(domains, 0.0)
        dram = any(k.startswith("dram") for k in domains)
        self.label = "measured: RAPL package+DRAM" if dram else "measured: RAPL package"
        self.detail = f"{', '.join(domains)} under {rapl_root()}"

    @classmethod
    def open(cls) -> RaplMeter:
        root = rapl_root()
        if not root.is_dir():
            raise Unavailable(f"no {root} (a VM, or no powercap driver)")
        domains: dict[str, Path] = {}
        for zone in sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1):
            index = zone.name.split(":")[1]
            name = _zone_name(zone) or f"package-{index}"
            if not name.startswith("package"):
                continue  # psys: the platform, which already holds the packages
            domains[name] = zone
            for sub in sorted(zone.glob(f"{zone.name}:*")):
                if _zone_name(sub) == "dram":
                    domains[f"dram-{index}"] = sub
        if not domains:
            raise Unavailable(f"no RAPL package zones under {root} (a VM, or not x86)")
        try:
            return cls(domains)
        except PermissionError as exc:
            raise Unavailable(f"{exc.filename} is not readable (root-only since Linux 5.10)", FIX) from None
        except (OSError, ValueError) as exc:
            raise Unavailable(f"RAPL counters under {root} cannot be read: {exc}") from None

    def read(self) -> dict[str, float]:
        """Joules per domain since the meter opened."""
        for key, domain in self.domains.items():
            now = read_number(domain / "energy_uj")
            delta = now - self._last[key]
            if delta < 0:  # the counter wrapped around
                delta += self.ranges[key]
            self._total_uj[key] += delta
            self._last[key] = now
        return {k: v / 1e6 for k, v in self._total_uj.items()}

    def joules(self) -> float:
        return sum(self.read().values())
