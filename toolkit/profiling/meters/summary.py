"""From the worker's `energy` figures to the records, and the one line every report says about energy.

Energy per response is gross (the paper's energy of a response: everything the meter saw while it ran);
idle power is measured before the runs and reported beside it, and `net_joules` subtracts it.
"""

from __future__ import annotations

import statistics
from typing import Any

from toolkit.records import DeviceReport, EnergyWindow, Profile, ProfileEnergy, Stat

GROSS = "gross energy of a response (idle not subtracted)"


def profile_energy(data: dict[str, Any]) -> ProfileEnergy | None:
    """The worker result's `energy` as a record, with each window's gross watts summarised."""
    energy = data.get("energy")
    if not energy:
        return None
    windows = [EnergyWindow.model_validate(w) for w in energy["windows"]]
    watts = [w.joules / w.seconds for w in windows if w.seconds > 0]
    fields = {k: v for k, v in energy.items() if k in ProfileEnergy.model_fields and k not in ("windows", "samples")}
    return ProfileEnergy(**fields, windows=windows, watts=Stat.of(watts) if watts else None)


def merge_energy(energies: list[ProfileEnergy | None]) -> ProfileEnergy | None:
    """One figure over a variant's rounds (fresh processes): the windows and watts of all, the median idle."""
    present = [e for e in energies if e is not None]
    if not present or len(present) != len(energies) or len({e.source for e in present}) > 1:
        return None  # a round without figures, or rounds from different meters: no one figure
    first = present[0]
    if len(present) == 1:
        return first
    idles = [e.idle_w for e in present if e.idle_w is not None]
    watts = [e.watts for e in present if e.watts]
    parts: dict[str, float] = {}
    for e in present:
        for k, v in e.parts_j.items():
            parts[k] = round(parts.get(k, 0.0) + v, 6)
    return first.model_copy(update={
        "idle_w": round(statistics.median(idles), 4) if idles else None,
        "watts": Stat.merge(watts) if len(watts) == len(present) else None,
        "windows": [w for e in present for w in e.windows],
        "parts_j": parts,
        "read_errors": sum(e.read_errors for e in present),
    })


def measured_watts(prof: Profile) -> Stat | None:
    """The gross watts of a profile's timed windows from a measured meter (RAPL in reports written before
    `energy`); None where energy can only be estimated."""
    if prof.energy is not None:
        return prof.energy.watts if prof.energy.source.startswith("measured") else None
    return prof.rapl_watts


def energy_source(report: DeviceReport) -> str:
    """Where a report's energy figures come from, in one line: the meter, or the estimate and why no meter."""
    ok = [p for p in report.profiles if p.status == "ok"]
    measured = sorted({p.energy.source for p in ok if p.energy and measured_watts(p)})
    if measured:
        idles = [p.energy.idle_w for p in ok if p.energy and p.energy.idle_w is not None]
        idle = f"; idle {statistics.median(idles):.1f} W measured before the runs" if idles else ""
        rate = {p.energy.sample_hz for p in ok if p.energy and p.energy.sample_hz}
        how = f"sampled at {max(rate):g} Hz and integrated over" if rate else "counters read around"
        return (f"{' / '.join(measured)}, {how} each timed window{idle}; J/response is the {GROSS}; "
                "the device report's windows also hold it net of idle")
    if any(p.rapl_watts for p in ok):
        return "measured: RAPL package energy during the timed runs"
    why = next((p.energy.unused for p in ok if p.energy), None)
    why_text = "; ".join(f"{k}: {v}" for k, v in why.items() if k != "power-model") if why else ""
    no_meter = f"no readable meter here ({why_text})" if why_text else "no readable meter"
    if report.power:
        return (f"estimated: busy power {report.power.busy_w:g} W x measured response time ({report.power.note}); "
                f"{no_meter}; J/response is the {GROSS}")
    return f"unknown: {no_meter} and no device.power figures in the recipe"
