"""Noise-aware comparison: how often each variant would be the pick again, and when variants are tied.

Win probability: a bootstrap over the timing repeats. In each of RESAMPLES resamples (numpy, fixed SEED, so
a report is reproducible) every measured variant's repeats are redrawn with replacement: TTFT at the
prompt length, decode tok/s and RAPL watts where measured. The figures the budget sees are recomputed
from the redrawn repeats exactly as from the measured ones (TTFT p90, decode p10, energy and cost from the
medians), and the same selection (`select.choose`: feasibility, then utility and priority among the
feasible) names a pick. A variant's win probability is the share of resamples it is that pick. Memory,
fidelity and accuracy have no repeats and stay fixed.

Tie set: the shortest head of the ranking on the measured figures that holds every in-budget variant with
win probability >= TIE_THRESHOLD (a variant that wins at least 1 resample in 20 cannot be told apart from
the best; taking the head keeps every variant that ranks above a tied one in the set). When the set has more
than one member, the pick is its best member by `select.TIE_RULE` (lower KL, then lower perplexity, then
smaller file): none of these is a timing, so the pick does not move with run-to-run timing noise as long
as the tied set holds the same best-fidelity member.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from toolkit.recommend.select import Limit, Option, choose, tiebreak
from toolkit.records import Stat

RESAMPLES = 1000
SEED = 0
TIE_THRESHOLD = 0.05


def resample(stat: Stat | None, rng: np.random.Generator, n: int = RESAMPLES) -> dict[str, list[float]] | None:
    """Median, p10 and p90 of the stat's repeats redrawn with replacement, once per resample.

    A stat stored without its repeats keeps its measured figures in every resample.
    """
    if stat is None:
        return None
    if not stat.values:
        return {"median": [stat.median] * n, "p10": [stat.p10] * n, "p90": [stat.p90] * n}
    draws = rng.choice(np.asarray(stat.values), size=(n, len(stat.values)))
    p10, median, p90 = np.percentile(draws, [10, 50, 90], axis=1)  # linear, as records.percentile
    return {"median": median.tolist(), "p10": p10.tolist(), "p90": p90.tolist()}


def win_probabilities(draws: Iterable[list[Option]], limits: list[Limit], priority: str, alpha: float) -> dict[str, float]:
    """Share of the resampled option sets in which each variant is the pick (resamples without a pick count
    for nobody, so the shares can sum to less than 1)."""
    wins: Counter[str] = Counter()
    total = 0
    for options in draws:
        total += 1
        order = choose(options, limits, priority, alpha)
        if order:
            wins[order[0].id] += 1
    return {vid: count / total for vid, count in wins.items()} if total else {}


def settle(order: list[Option], win: dict[str, float], threshold: float = TIE_THRESHOLD) -> tuple[Option, list[Option]]:
    """The final pick and the tie set (see the module docstring); `order` is the feasible ranking, best first."""
    last = max((i for i, o in enumerate(order) if win.get(o.id, 0.0) >= threshold), default=0)
    tied = order[: last + 1]
    return min(tied, key=tiebreak), tied
