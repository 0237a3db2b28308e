"""Child processes that die with the toolkit, so that a killed run leaves no worker or tool behind."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from toolkit.errors import UserError

PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # resolved here, not in the forked child


def die_with_parent(waited: bool = False) -> Callable[[], None] | None:
    """A `preexec_fn` that has Linux SIGKILL the child when this process dies; None where it cannot.

    Linux signals the child when the *thread* that forked it exits, so this applies to children started from
    the main thread, or from a worker thread that waits for the child before it ends (`waited`: a
    `subprocess.run`, or a `Popen` watched to its end, as in compress's and evaluation's thread pools);
    elsewhere it returns None rather than kill the child early.
    """
    if _PRCTL is None or (not waited and threading.current_thread() is not threading.main_thread()):
        return None
    prctl, parent, sigkill = _PRCTL, os.getpid(), int(signal.SIGKILL)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, sigkill)
        if os.getppid() != parent:  # the parent died before the request took effect
            os._exit(1)

    return preexec


def run_tool(cmd: list[str], env: dict | None, log: Path, what: str, cwd: Path | None = None) -> None:
    """Run a tool in a child process (a crash there cannot take the sweep down) and keep its log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if env is None and cwd is not None:  # the child must still import this package from its new folder
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    with open(log, "w", encoding="utf-8") as handle:
        done = subprocess.run(
            cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, text=True, preexec_fn=die_with_parent(waited=True)
        )
    if done.returncode != 0:
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "Error" in ln or "error" in ln), lines[-1] if lines else "")
        raise UserError(f"cannot {what}: {reason.strip()[:300]} (full log: {log})")
