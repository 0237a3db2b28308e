"""Noise-aware comparison: how often each variant would be the pick again, and when variants are tied.

Win probability: a bootstrap over the timing repeats and the accuracy items. In each of RESAMPLES resamples (numpy, fixed SEED, so
a report is reproducible) the repeats of every variant within reach of the budget (`within_reach`: it meets
every limit with its timings `device.noise_margin` better) are redrawn with replacement: TTFT at the
prompt length, decode tok/s and RAPL watts where measured. The figures the budget sees are recomputed
from the redrawn repeats exactly as from the measured ones (TTFT p90, decode p10, energy and cost from the
medians), and the same selection (`select.choose`: feasibility, then utility and priority among the
feasible) names a pick. A variant's win probability is the share of resamples it is that pick. Accuracy is
redrawn too, from each task's items, the same items for every variant in a resample (options.item_draws: a
paired bootstrap, so a lead of a few items among 50 is no lead); memory and fidelity (deterministic figures on
a fixed text) stay fixed. The rounds (profiling/rounds.py) read timing noise alone: more fresh processes
cannot settle what the items leave open.

Tie set: the shortest head of the ranking on the measured figures that holds every in-budget variant with
win probability >= TIE_THRESHOLD (a variant that wins at least 1 resample in 20 cannot be told apart from
the best; taking the head keeps every variant that ranks above a tied one in the set). The pick is the
tie set's most likely winner (`select.TIE_RULE`: higher win probability, then lower KL, lower perplexity or,
across models, bits per byte, smaller file). A rule by fidelity first was tried and measured
(bench/bench_stability.py): a variant that wins 5-25% of resamples enters the tie set in some runs and not in
others, and with it the pick flipped between runs; the most likely winner is in every run's tie set.

Equivalence: with the balanced priority, the share of resamples in which the tie set's utilities all lie
within EQUIVALENT_UTILITY of each other (`Recommendation.tie_equivalence`). Once it reaches
`device.target_win_probability` the tie is settled (profiling/rounds.py adds no more rounds for it): the
variants are the same answer to the user within the noise, and more processes could only reorder equals.

Between runs the most likely winner of two near-equal variants can still swap (the demo's SmolLM2 Q8_0 and
Q6_K won 0.74/0.20 in one run and the other way round in the next): each run's win probabilities come
from its own repeats, and a slow minute moves a whole run. So a device's previous certified pick for the
same budget (`DeviceReport.previous_picks`, filled by the profile stage from what this machine remembers, in
any workspace, or from this device's latest earlier report: pipeline/certify.py) stays the pick for as long
as it is in the tie set: re-measuring, or a fresh clone's first run, does not flip the answer between variants
the measurements cannot tell apart, and the report says which rule picked.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from toolkit.recommend.select import Limit, Option, check, choose, likelihood_measure, tiebreak
from toolkit.records import Profile, Stat

RESAMPLES = 1000
SEED = 0
TIE_THRESHOLD = 0.05
# Utilities (select.utilities: 1 is the best in-budget variant) this close are the same answer for a user: a
# tie whose utilities stay within it in most resamples is settled; more rounds could only reorder equals.
EQUIVALENT_UTILITY = 0.01


SINGLE_TIMINGS = ("Noise: not assessed: every variant within reach of the budget was timed once (device.repeats 1 "
                  "in one process), so nothing measured how far a rerun moves it, and a rerun may pick another; give "
                  "device.repeats or device.rounds at least 2 for win probabilities and ties")


def spread_measured(profiles: Iterable[Profile], prompt_tokens: int) -> bool:
    """Whether any timing the budget reads was repeated. Resamples of single values all agree, so a win
    probability drawn from them would claim a certainty that nothing measured."""
    timed = [(p.decode_tps, p.prompt(prompt_tokens)) for p in profiles]
    stats = [s for decode, prompt in timed for s in (decode, prompt.ttft_ms if prompt else None)]
    return any(s is not None and len(s.values) > 1 for s in stats)


def process_sigma(stats: Iterable[Stat | None]) -> float:
    """The spread between fresh processes of one variant, pooled over every variant measured in several: the
    standard deviation of log(process median) around each variant's mean (pooled variance, k - 1 degrees of
    freedom each). Machine-level noise (a slow minute, a different memory layout) hits every variant alike,
    so nine variants with two processes each estimate it far better than any one variant's two; 0 when no
    variant has more than one process."""
    squares, dof = 0.0, 0
    for stat in stats:
        if stat is None or len(stat.runs) < 2:
            continue
        logs = np.log([float(np.median(g)) for g in stat.groups()])
        squares += float(((logs - logs.mean()) ** 2).sum())
        dof += len(logs) - 1
    return float(np.sqrt(squares / dof)) if dof else 0.0


def resample(stat: Stat | None, rng: np.random.Generator, n: int = RESAMPLES, sigma: float = 0.0) -> dict[str, list[float]] | None:
    """Median, p10 and p90 of the stat's repeats redrawn, once per resample.

    With a pooled process spread `sigma` (process_sigma), every process's repeats are redrawn within that
    process and the whole draw is scaled by one factor exp(N(0, sigma^2 / k)) for its k processes: how far the
    variant's mean may sit from where k processes put it. Without one, repeats from several processes are
    redrawn in two stages, processes first and then repeats within each drawn process. A stat stored
    without its repeats keeps its measured figures in every resample.
    """
    if stat is None:
        return None
    if not stat.values:
        return {"median": [stat.median] * n, "p10": [stat.p10] * n, "p90": [stat.p90] * n}
    groups = [np.asarray(g) for g in stat.groups()]
    sizes = np.array([len(g) for g in groups])
    padded = np.zeros((len(groups), sizes.max()))
    for i, g in enumerate(groups):
        padded[i, : len(g)] = g
    if sigma > 0:  # keep every process, redraw within each
        picked = np.broadcast_to(np.arange(len(groups)), (n, len(groups)))
    else:
        picked = rng.integers(0, len(groups), size=(n, len(groups)))  # which process each slot redraws
    width = sizes.max()
    within = (rng.random((n, len(groups), width)) * sizes[picked][..., None]).astype(int)
    draws = padded[picked[..., None], within]
    keep = np.arange(width)[None, None, :] < sizes[picked][..., None]  # a process gives as many repeats as it had
    if sigma > 0:
        draws = draws * np.exp(rng.normal(0.0, sigma / np.sqrt(len(groups)), n))[:, None, None]
    if keep.all():
        p10, median, p90 = np.percentile(draws.reshape(n, -1), [10, 50, 90], axis=1)  # linear, as records.percentile
    else:  # processes with unequal repeat counts (nanpercentile is slower, so only here)
        p10, median, p90 = np.nanpercentile(np.where(keep, draws, np.nan).reshape(n, -1), [10, 50, 90], axis=1)
    return {"median": median.tolist(), "p10": p10.tolist(), "p90": p90.tolist()}


def win_probabilities(draws: Iterable[list[Option]], limits: list[Limit], priority: str, alpha: float,
                      vetoes: dict[str, str] | None = None, utilities: list[dict[str, float]] | None = None) -> dict[str, float]:
    """Share of the resampled option sets in which each variant is the pick (resamples without a pick count
    for nobody, so the shares can sum to less than 1). `utilities`, when given, receives each resample's
    utility of every in-budget variant."""
    wins: Counter[str] = Counter()
    total = 0
    for options in draws:
        total += 1
        order = choose(options, limits, priority, alpha, vetoes)
        if utilities is not None:
            utilities.append({o.id: o.utility for o in order if o.utility is not None})
        if order:
            wins[order[0].id] += 1
    return {vid: count / total for vid, count in wins.items()} if total else {}


def equivalence(utilities: list[dict[str, float]], ids: list[str], tolerance: float = EQUIVALENT_UTILITY) -> float:
    """Share of resamples in which every one of `ids` is in budget, their utilities within `tolerance` of each
    other: how sure the measurements are that the tied variants are practically the same answer."""
    if len(ids) < 2 or not utilities:
        return 0.0
    hits = 0
    for drawn in utilities:
        values = [drawn.get(vid) for vid in ids]
        hits += all(v is not None for v in values) and max(values) - min(values) <= tolerance
    return hits / len(utilities)


def settle(order: list[Option], win: dict[str, float], threshold: float = TIE_THRESHOLD,
           previous: str | None = None) -> tuple[Option, list[Option]]:
    """The final pick and the tie set (see the module docstring); `order` is the feasible ranking, best first.
    `previous`, this device's previous certified pick for the same budget, stays the pick while it is in the
    tie set (select.STICKY_RULE)."""
    last = max((i for i, o in enumerate(order) if win.get(o.id, 0.0) >= threshold), default=0)
    tied = order[: last + 1]
    if kept := next((o for o in tied if o.id == previous), None):
        return kept, tied
    likelihood = likelihood_measure(order)
    return min(tied, key=lambda o: (-win.get(o.id, 0.0), *tiebreak(o, likelihood))), tied


TIMED = {"ttft_ms": "min", "decode_tps": "max", "energy_j": "min", "cost_per_1k_usd": "min"}  # figures timings move


def shifted(o: Option, factor: float) -> Option:
    """A copy of `o` with every timing-derived figure better by `factor` (> 1) or worse (< 1)."""
    metrics = dict(o.metrics)
    for metric, direction in TIMED.items():
        if metrics.get(metric) is not None:
            metrics[metric] = metrics[metric] * factor if direction == "max" else metrics[metric] / factor
    return Option(id=o.id, label=o.label, metrics=metrics, status=o.status, reason=o.reason, size_mb=o.size_mb,
                  model=o.model)


def within_reach(options: list[Option], limits: list[Limit], margin: float, vetoes: dict[str, str] | None = None) -> set[str]:
    """Measured variants that would meet every limit with their timings `margin` better: the only ones a
    resample could make the pick. The bootstrap leaves the rest out, and they do not pool into the process
    spread, so a variant far over budget changes nobody's win probability, whether it was measured
    (`search: exhaustive`) or ruled out before measuring (pipeline/search.py)."""
    vetoes = vetoes or {}
    return {o.id for o in options if o.status == "ok" and o.id not in vetoes and not check(shifted(o, 1 + margin), limits)}


def can_still_win(options: list[Option], limits: list[Limit], priority: str, alpha: float, margin: float,
                  vetoes: dict[str, str] | None = None) -> set[str]:
    """Variants that would be the pick if their timings were `margin` better and everyone else's `margin`
    worse (a run-to-run swing on a shared machine). The others cannot win whatever more repeats show, so
    they get no more measuring: a limit they break on memory or fidelity, or a gap wider than the noise."""
    out = set()
    for o in options:
        if o.status != "ok":
            continue
        trial = [shifted(p, 1 + margin if p is o else 1 / (1 + margin)) for p in options]
        order = choose(trial, limits, priority, alpha, vetoes)
        if order and order[0].id == o.id:
            out.add(o.id)
    return out
