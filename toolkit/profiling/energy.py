"""Energy from Linux powercap (RAPL) counters, where the device exposes them readable."""

from __future__ import annotations

import os
from pathlib import Path


def rapl_root() -> Path:
    return Path(os.environ.get("EDGEFIRST_RAPL_ROOT", "/sys/class/powercap"))


class RaplMeter:
    """Sum of package-level RAPL energy counters, in joules, with wrap-around handled."""

    def __init__(self, domains: list[Path]):
        self.domains = domains
        self.ranges = [_read_int(d / "max_energy_range_uj") for d in domains]
        self._last = [_read_int(d / "energy_uj") for d in domains]
        self._total_uj = 0

    @classmethod
    def open(cls) -> RaplMeter | None:
        root = rapl_root()
        if not root.is_dir():
            return None
        domains = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
        try:
            return cls(domains) if domains else None
        except (OSError, ValueError):  # unreadable counters (often root-only) mean no RAPL
            return None

    def joules(self) -> float:
        for i, domain in enumerate(self.domains):
            now = _read_int(domain / "energy_uj")
            delta = now - self._last[i]
            if delta < 0:
                delta += self.ranges[i]
            self._total_uj += delta
            self._last[i] = now
        return self._total_uj / 1e6


def _read_int(path: Path) -> int:
    return int(path.read_text().strip())
