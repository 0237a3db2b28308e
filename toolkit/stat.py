"""Repeated measurements of one figure: every repeat kept, with median, p10 and p90."""

from __future__ import annotations

import statistics

from pydantic import BaseModel, Field


class Stat(BaseModel):
    """A summary of repeated measurements; latency constraints are checked against p90.

    `values` keeps every repeat; `runs` says how many of them each fresh process gave, in order (empty: one
    process), so the noise model can resample processes as well as repeats.
    """

    n: int
    median: float
    p10: float
    p90: float
    mean: float
    values: list[float] = Field(default_factory=list)
    runs: list[int] = Field(default_factory=list)

    @classmethod
    def of(cls, values: list[float], keep_values: bool = True, runs: list[int] | None = None) -> Stat:
        if not values:
            raise ValueError("no values to summarise")
        ordered = sorted(values)
        return cls(
            n=len(ordered),
            median=statistics.median(ordered),
            p10=percentile(ordered, 10),
            p90=percentile(ordered, 90),
            mean=statistics.fmean(ordered),
            values=[round(v, 4) for v in values] if keep_values else [],
            runs=runs if runs and len(runs) > 1 and keep_values else [],
        )

    @classmethod
    def merge(cls, stats: list[Stat]) -> Stat:
        """One stat over the repeats of several fresh processes, each process remembered in `runs`."""
        if len(stats) == 1:
            return stats[0]
        if not all(s.values for s in stats):  # summaries without repeats: the median of medians is all we have
            return cls.of([s.median for s in stats], keep_values=False)
        runs = [n for s in stats for n in (s.runs or [len(s.values)])]
        return cls.of([v for s in stats for v in s.values], runs=runs)

    def groups(self) -> list[list[float]]:
        """The repeats of each process, in order (one group when the stat came from one process)."""
        if not self.runs:
            return [self.values]
        out, start = [], 0
        for n in self.runs:
            out.append(self.values[start:start + n])
            start += n
        return out


def percentile(ordered: list[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values (numpy's default method)."""
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
