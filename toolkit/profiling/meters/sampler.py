"""Energy over exactly the measured windows of a run (prefill and decode of each repeat), from any meter.

- Energy counters (RAPL, NVML's energy counter) are read at each window's edges: joules = the difference.
- Power sources (INA3221, Pi 5 PMIC, NVML power) are sampled by a background thread at `hz` (capped at the
  meter's own rate); each sample is stamped at the middle of its read. A window's joules are the trapezoidal
  integral over exactly [start, end]: the power at the two edges is interpolated from the neighbouring
  samples, so a window shorter than the sampling period gets the interpolated power times its length.
- The power model multiplies the recipe's busy power by each window's length.
Idle power is taken over a quiet period before the timed runs (model loaded, nothing running) and reported
beside the busy figure: `joules` is the gross energy of the window, what a response costs and what the
budget and cost use (as the paper reports energy per response); `net_joules` subtracts idle power x time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.profiling.meters.base import Meter
from toolkit.profiling.meters.model import PowerModel

DEFAULT_HZ = 20.0
IDLE_S = 1.0


def integrate(times: Sequence[float], watts: Sequence[float], t0: float, t1: float) -> float:
    """Joules over [t0, t1] from power samples (times ascending): trapezoids through the samples inside the
    window and the power interpolated at both edges (held flat before the first and after the last sample)."""
    if not len(times) or t1 <= t0:
        return 0.0
    t, p = np.asarray(times, dtype=float), np.asarray(watts, dtype=float)
    inside = (t > t0) & (t < t1)
    ts = np.concatenate(([t0], t[inside], [t1]))
    ps = np.interp(ts, t, p)
    return float(np.sum((ps[1:] + ps[:-1]) / 2 * np.diff(ts)))


@dataclass(frozen=True)
class Mark:
    t: float
    counters: dict[str, float] | None = None  # energy counters read at t; None for power sources and the model


@dataclass(frozen=True)
class _Window:
    phase: str
    tokens: int
    start: Mark
    end: Mark


class Recorder:
    """Marks windows during a run and gives their energy afterwards (see the module docstring)."""

    def __init__(self, meter: Meter | None, hz: float = DEFAULT_HZ, clock: Callable[[], float] = time.perf_counter):
        if hz <= 0:
            raise ValueError(f"sampling rate {hz} Hz must be positive")
        self.meter, self.clock = meter, clock
        self.hz = min(hz, meter.max_hz) if meter and meter.kind == "power" else None
        self.times: list[float] = []
        self.samples: list[dict[str, float]] = []
        self.read_errors = 0
        self.windows: list[_Window] = []
        self.idle_window: _Window | None = None
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def __enter__(self) -> Recorder:
        if self.hz:
            self._thread = threading.Thread(target=self._run, name="energy-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _sample(self) -> None:
        assert self.meter is not None
        t0 = self.clock()
        try:
            parts = self.meter.read()
        except Exception:  # noqa: BLE001 - a failed read loses one sample, never the run
            self.read_errors += 1
            return
        self.times.append((t0 + self.clock()) / 2)
        self.samples.append(parts)

    def _run(self) -> None:
        assert self.hz is not None
        period, due = 1 / self.hz, self.clock()
        while not self._halt.wait(max(0.0, due - self.clock())):
            self._sample()
            due = max(due + period, self.clock())  # behind schedule: carry on from now, never in a burst

    def stop(self) -> None:
        """Stop sampling (one last sample, so the last window has a sample after its end) and release the meter."""
        if self._thread is not None:
            self._halt.set()
            self._thread.join()
            self._thread = None
            self._sample()
        if self.meter is not None and not self._closed:
            self._closed = True
            self.meter.close()

    def mark(self) -> Mark:
        if self.meter is None or self.meter.kind != "energy":
            return Mark(self.clock())
        try:
            counters = self.meter.read()
        except Exception:  # noqa: BLE001 - the window goes unmeasured, the run goes on
            self.read_errors += 1
            counters = None
        return Mark(self.clock(), counters)

    def window(self, phase: str, tokens: int, start: Mark, end: Mark) -> None:
        self.windows.append(_Window(phase, tokens, start, end))

    def idle(self, seconds: float = IDLE_S, sleep: Callable[[float], None] = time.sleep) -> None:
        """Measure idle power over `seconds` of doing nothing (measured meters only)."""
        if self.meter is None or not self.meter.measured or seconds <= 0:
            return
        start = self.mark()
        sleep(seconds)
        self.idle_window = _Window("idle", 0, start, self.mark())

    def parts_j(self, w: _Window) -> dict[str, float] | None:
        """Joules per domain or rail over one window; None when it could not be measured."""
        meter, seconds = self.meter, w.end.t - w.start.t
        if meter is None:
            return None
        if meter.kind == "model":
            return {k: v * seconds for k, v in meter.read().items()}
        if meter.kind == "energy":
            a, b = w.start.counters, w.end.counters
            return {k: b[k] - a[k] for k in b} if a is not None and b is not None else None
        if not self.samples:
            return None
        return {k: integrate(self.times, [s[k] for s in self.samples], w.start.t, w.end.t) for k in self.samples[0]}

    def idle_w(self) -> float | None:
        if isinstance(self.meter, PowerModel):
            return self.meter.idle_w
        w = self.idle_window
        parts = self.parts_j(w) if w else None
        return sum(parts.values()) / (w.end.t - w.start.t) if w and parts else None

    def result(self, unused: dict[str, str] | None = None, source: str | None = None) -> dict:
        """The worker's `energy` figures: the source, idle power and every window (call after the run)."""
        self.stop()
        idle = self.idle_w()
        windows, totals = [], {}
        for w in self.windows:
            parts = self.parts_j(w)
            if parts is None:
                continue
            seconds, joules = w.end.t - w.start.t, sum(parts.values())
            windows.append({"phase": w.phase, "tokens": w.tokens, "seconds": round(seconds, 9), "joules": round(joules, 9),
                            "net_joules": round(joules - idle * seconds, 9) if idle is not None else None})
            for k, v in parts.items():
                totals[k] = totals.get(k, 0.0) + v
        return {
            "meter": self.meter.name if self.meter else None,
            "source": source or (self.meter.label if self.meter else "unknown: no readable meter and no device.power"),
            "sample_hz": self.hz,
            "samples": len(self.samples),
            "read_errors": self.read_errors,
            "idle_w": round(idle, 4) if idle is not None else None,
            "windows": windows,
            "parts_j": {k: round(v, 9) for k, v in totals.items()},
            "unused": unused or {},
        }

