"""Load-or-compute for every cached result: one place that decides what a stored record is worth.

A stored record is reused only when it reads back whole and says `ok` (or serves the caller otherwise: a
fidelity score stopped early that still breaks the budget, pipeline/fidelity.py); a failure is kept with its reason
(for the reports) and recomputed on the next run, a corrupt or foreign file is recomputed, and a
`skipped` result (runtime not installed here) is never written, and takes the place of a failure stored before.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from toolkit.errors import UserError
from toolkit.io import write_json
from toolkit.records import Record

R = TypeVar("R", bound=Record)


def stored(path: Path, record: type[R]) -> R | None:
    """The record at `path` when it exists and reads back whole, else None."""
    if not path.exists():
        return None
    try:
        return record.load(path)
    except UserError as exc:  # a torn or older file: measure again rather than abort the run, and say so
        print(f"warning: ignoring a cached result that does not read back ({exc.one_line()}); computing it again",
              file=sys.stderr)
        return None


def is_ok(found: Record) -> bool:
    return getattr(found, "status", "ok") == "ok"


def load_or_compute(path: Path, record: type[R], compute: Callable[[], R], reusable: bool = True,
                    serves: Callable[[R], bool] = is_ok) -> R:
    """The stored record at `path` when `reusable` and it `serves` (by default: it says ok), else `compute()`,
    written atomically unless skipped."""
    if reusable and (found := stored(path, record)) is not None and serves(found):
        return found
    return save(path, compute())


def save(path: Path, result: R) -> R:
    """Write `result` atomically unless it is `skipped` (that depends on this machine, not on the inputs); a
    skip removes an earlier failure stored there, which no longer says what happened."""
    if getattr(result, "status", "ok") != "skipped":
        write_json(path, result)
    else:
        path.unlink(missing_ok=True)
    return result
