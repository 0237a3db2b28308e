"""Run one measurement job in a child process with a timeout and an optional memory cap."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from toolkit.io import sweep_stale, temp_prefix
from toolkit.procs import die_with_parent

JOB_PREFIX = "edgefirst-job"
POLL_S = 0.05


@dataclass
class ChildResult:
    status: str  # ok / oom / crash / timeout
    data: dict
    reason: str | None
    wall_s: float


def run_child(job: dict, timeout_s: float, memory_cap_mb: float | None, log_path: Path) -> ChildResult:
    sweep_stale(Path(tempfile.gettempdir()), prefix=f"{JOB_PREFIX}.")  # job folders of killed runs
    with tempfile.TemporaryDirectory(prefix=temp_prefix(JOB_PREFIX), suffix=".part") as tmp:
        job_file, out_file = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_file.write_text(json.dumps(job), encoding="utf-8")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log_path, "w", encoding="utf-8") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "toolkit.profiling.worker", str(job_file), str(out_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(waited=True),
            )
            verdict = _watch(child, timeout_s, memory_cap_mb)
        wall = time.perf_counter() - start
        data = json.loads(out_file.read_text(encoding="utf-8")) if out_file.exists() else {}
    if verdict:
        return ChildResult(verdict[0], data, verdict[1], wall)
    if child.returncode == 0 and data.get("ok"):
        return ChildResult("ok", data, None, wall)
    if data.get("status"):
        return ChildResult(data["status"], data, data.get("reason"), wall)
    if child.returncode == -signal.SIGKILL:
        return ChildResult("oom", data, "killed by SIGKILL (likely the kernel's out-of-memory killer)", wall)
    return ChildResult("crash", data, f"exit code {child.returncode}: {_last_line(log_path)}", wall)


def _watch(child: subprocess.Popen, timeout_s: float, memory_cap_mb: float | None) -> tuple[str, str] | None:
    deadline = time.monotonic() + timeout_s
    proc = psutil.Process(child.pid)
    while child.poll() is None:
        if time.monotonic() > deadline:
            _kill(child)
            return "timeout", f"no result within {timeout_s:g} s"
        if memory_cap_mb is not None:
            try:
                rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                rss = 0.0
            if rss > memory_cap_mb:
                _kill(child)
                return "oom", f"resident memory {rss:.0f} MB passed the cap of {memory_cap_mb:g} MB"
        time.sleep(POLL_S)
    return None


def _kill(child: subprocess.Popen) -> None:
    child.kill()
    child.wait()


def _last_line(log_path: Path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return "no log"
    lines = [ln for ln in lines if ln]
    return lines[-1][:300] if lines else "no output"
