"""What device a measurement was taken on: enough to tell two reports' machines apart."""

from __future__ import annotations

import os
import platform
import socket

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


def fingerprint(threads: int, runtimes: dict[str, str], build_flags: dict[str, str]) -> DeviceFingerprint:
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
    )
    return DeviceFingerprint(id=content_hash(fields, length=10), **fields)
