"""What device a measurement was taken on: enough to tell two reports' machines apart."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path

import psutil

from toolkit.io import content_hash
from toolkit.records import DeviceFingerprint


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")


def machine_id(files: tuple[str, ...] = MACHINE_ID_FILES) -> str | None:
    """This installation's id (systemd's machine-id), hashed so that the report does not carry it."""
    for path in files:
        try:
            raw = Path(path).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        if raw:
            return content_hash(raw, length=12)
    return None


def fingerprint(threads: int, runtimes: dict[str, str], build_flags: dict[str, str], label: str | None = None
                ) -> DeviceFingerprint:
    """Enough to tell two devices apart: hardware, OS, Python, the machine-id and the user's label (boards
    flashed from one image share everything but the last two), with the recipe's runtimes beside. The runtimes
    are not in the id: a device stays itself when a recipe adds a format, and each profile's cache key names
    the versions and build of the runtime it ran in (pipeline/profile.py)."""
    fields = dict(
        hostname=socket.gethostname(),
        cpu_model=cpu_model(),
        physical_cores=psutil.cpu_count(logical=False),
        logical_cpus=usable_cpus(),
        threads_used=threads,
        ram_mb=int(psutil.virtual_memory().total / 2**20),
        os=f"{platform.system()} {platform.release()} ({platform.machine()})",
        python=platform.python_version(),
        runtimes=runtimes,
        build_flags=build_flags,
        machine_id=machine_id(),
        label=label,
    )
    device = {k: v for k, v in fields.items() if k not in ("runtimes", "build_flags")}
    return DeviceFingerprint(id=content_hash(device, length=10), **fields)
