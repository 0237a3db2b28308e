"""Raspberry Pi 5 power from its PMIC's ADC: `vcgencmd pmic_read_adc` prints each rail's current and voltage,

    VDD_CORE_A current(7)=2.26455600A
    VDD_CORE_V volt(15)=0.88107430V

and the power is the sum of V x I over the rails that report both. The PMIC rails leave out the 5 V input's
own losses and USB/PCIe devices, so this reads somewhat under a wall meter. `vcgencmd` needs /dev/vcio, i.e.
the video group; EDGEFIRST_VCGENCMD names another command (tests script it). Each reading starts a process,
so it is sampled at 10 Hz at most.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess

from toolkit.profiling.meters.base import Meter, Unavailable

LINE = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([-+0-9.eE]+)[AV]\s*$")
FIX = "add the user to the video group (sudo usermod -aG video $USER, then log in again)"


def command() -> list[str]:
    return [*shlex.split(os.environ.get("EDGEFIRST_VCGENCMD", "vcgencmd")), "pmic_read_adc"]


def rail_watts(text: str) -> dict[str, float]:
    """Watts per rail that reports both its current and its voltage."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        if m := LINE.match(line):
            (amps if m[2] == "A" else volts)[m[1]] = float(m[3])
    return {rail: amps[rail] * volts[rail] for rail in amps if rail in volts}


def _run(cmd: list[str]) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
    if out.returncode != 0:
        raise OSError(f"{shlex.join(cmd)} exited {out.returncode}: {(out.stderr or out.stdout).strip()[:200]}")
    return out.stdout


class Pi5PmicMeter(Meter):
    name = "pi5-pmic"
    kind = "power"
    max_hz = 10.0

    def __init__(self, cmd: list[str], rails: list[str]):
        self.cmd, self.rails = cmd, rails
        self.label = f"measured: Pi 5 PMIC, {len(rails)} rails"
        self.detail = f"`{shlex.join(cmd)}`: {', '.join(rails)}"

    @classmethod
    def open(cls) -> Pi5PmicMeter:
        cmd = command()
        if shutil.which(cmd[0]) is None:
            raise Unavailable(f"no {cmd[0]} command (not a Raspberry Pi)")
        try:
            rails = rail_watts(_run(cmd))
        except (OSError, subprocess.SubprocessError) as exc:
            raise Unavailable(f"{cmd[0]} failed: {exc}", FIX) from None
        if not rails:
            raise Unavailable(f"`{shlex.join(cmd)}` reported no rails (a Pi 4 or older has no PMIC ADC)")
        return cls(cmd, sorted(rails))

    def read(self) -> dict[str, float]:
        """Watts per rail now."""
        watts = rail_watts(_run(self.cmd))
        return {rail: watts[rail] for rail in self.rails}
