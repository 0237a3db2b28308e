"""Measuring in rounds: every variant in fresh processes, more rounds only where the pick is still in doubt.

1. Round 0 measures every variant once (one child process, `device.repeats` repeats).
2. Variants that could still be the pick under a run-to-run swing of `device.noise_margin` get fresh
   processes up to `device.rounds`; the rest cannot win and are not measured again. Rounds are
   interleaved (round r of every variant before round r + 1 of any), so a slow minute hits all alike.
3. While the pick's bootstrap win probability (noise.py, which resamples processes and repeats) is below
   `device.target_win_probability`, the pick and the variants tied with it get one more round each, up to
   `device.max_rounds`, within `device.extra_time_s` of measuring (rounds after the first count, cached
   or not, so a rerun makes the same decisions). A tie shown practically equivalent in that share of
   resamples (noise.equivalence: utilities within 0.01 of each other) is settled and gets no more rounds.
   So is a tie that `device.max_rounds` could not decide (`futile`): the pick's lead over its closest rival,
   projected to max_rounds processes, would still leave it short of the target.
4. Certification: the pick is re-measured in `device.certify_runs` fresh processes at the budget's
   response shape; if any run misses the budget it is vetoed and the next pick is certified, until one is,
   none is left, or the certification runs (cached or not, by their recorded time) have taken
   `device.extra_time_s`; then the pick says that its turn did not come.

Every round and certification run is cached on its own (by variant, settings, device and index), so a
killed run loses at most the process in flight.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import NamedTuple

from toolkit.profiling.meters.summary import merge_energy
from toolkit.records import Certification, CertRun, DeviceReport, LlamaBench, Profile, PromptTiming, Stat

Measure = Callable[[str, int], Profile]  # (variant id, round index) -> that round's profile, cached or measured


class Standing(NamedTuple):
    """Where the pick stands after a round: what the next round is decided on."""

    pick: str | None
    win: float  # its win probability
    tied: list[str]  # the variants tied with it
    equivalence: float  # share of resamples in which the tie's utilities are practically equal
    rival_win: float = 0.0  # the highest win probability among the others


def futile(standing: Standing, measured: int, max_rounds: int, target: float) -> bool:
    """Whether `max_rounds` processes would likely still leave the pick's win probability below `target`.

    The pick's share of the resamples it and its closest rival win, p, is read as a normal test of their
    difference: z = Phi^-1(p). That difference's standard error shrinks as 1/sqrt(k) with k processes per
    variant (noise.resample scales by sigma / sqrt(k)), so at max_rounds z grows by sqrt(max_rounds / k) if
    the lead holds: the conditional-power rule of sequential trials. An even tie (p <= 1/2) is futile at once.
    """
    if measured >= max_rounds:
        return True
    total = standing.win + standing.rival_win
    share = standing.win / total if total > 0 else 0.0
    if share <= 0.5:
        return True
    if share >= 1.0:
        return False
    normal = statistics.NormalDist()
    return normal.cdf(normal.inv_cdf(share) * math.sqrt(max_rounds / measured)) < target


def merge_rounds(rounds: list[Profile]) -> Profile:
    """One profile over the successful rounds of a variant; a variant with none keeps its first failure."""
    ok = [p for p in rounds if p.status == "ok"]
    if not ok:
        return rounds[0]
    if len(ok) == 1:
        one = ok[0]
        return one.model_copy(update={"peak_rss_mb_runs": [one.peak_rss_mb] if one.peak_rss_mb else [],
                                      "deploy_rss_mb_runs": [one.deploy_rss_mb] if one.deploy_rss_mb else []})
    first = ok[0]
    prompts = [
        PromptTiming(
            prompt_tokens=p.prompt_tokens,
            ttft_ms=Stat.merge([r.prompt(p.prompt_tokens).ttft_ms for r in ok]),
            prefill_tps=Stat.merge([r.prompt(p.prompt_tokens).prefill_tps for r in ok]),
            runtime_prefill_tps=_merge_optional([r.prompt(p.prompt_tokens).runtime_prefill_tps for r in ok]),
        )
        for p in first.prompts
    ]
    peaks = [r.peak_rss_mb for r in ok if r.peak_rss_mb is not None]
    deploys = [r.deploy_rss_mb for r in ok if r.deploy_rss_mb is not None]
    return first.model_copy(update={
        "prompts": prompts,
        "load_ms": round(statistics.median(r.load_ms for r in ok if r.load_ms is not None), 2),
        "decode_tps": _merge_optional([r.decode_tps for r in ok]),
        "itl_ms": _merge_optional([r.itl_ms for r in ok]),
        "runtime_decode_tps": _merge_optional([r.runtime_decode_tps for r in ok]),
        "rapl_watts": _merge_optional([r.rapl_watts for r in ok]),
        "energy": merge_energy([r.energy for r in ok]),
        "llama_bench": _merge_bench([r.llama_bench for r in ok if r.llama_bench]),
        "peak_rss_mb": max(peaks) if peaks else None,  # the budget sees the worst process
        "peak_rss_mb_runs": peaks,
        "deploy_rss_mb": max(deploys) if len(deploys) == len(ok) else None,
        "deploy_rss_mb_runs": deploys,
        "rounds": len(ok),
        "wall_s": round(sum(r.wall_s for r in ok), 2),
    })


def _merge_bench(runs: list[LlamaBench]) -> LlamaBench | None:
    if not runs:
        return None
    return runs[0].model_copy(update={
        "decode_tps": Stat.merge([r.decode_tps for r in runs]),
        "prefill_tps": {n: Stat.merge([r.prefill_tps[n] for r in runs]) for n in runs[0].prefill_tps},
    })


def _merge_optional(stats: list[Stat | None]) -> Stat | None:
    present = [s for s in stats if s is not None]
    return Stat.merge(present) if len(present) == len(stats) and present else None


class Rounds:
    """The rounds measured so far for each variant, and the decisions about which to measure next."""

    def __init__(self, variant_ids: list[str], measure: Measure):
        self.ids, self.measure = variant_ids, measure
        self.done: dict[str, list[Profile]] = {vid: [] for vid in variant_ids}
        self.extra_s = 0.0  # measuring time spent on rounds after the first

    def add_round(self, vid: str) -> None:
        index = len(self.done[vid])
        result = self.measure(vid, index)
        self.done[vid].append(result)
        if index > 0:
            self.extra_s += result.wall_s

    def profiles(self) -> list[Profile]:
        return [merge_rounds(self.done[vid]) for vid in self.ids if self.done[vid]]

    def measured_ok(self, vid: str) -> bool:
        return bool(self.done[vid]) and self.done[vid][0].status == "ok"


def run_rounds(rounds: Rounds, report_of: Callable[[list[Profile]], DeviceReport],
               contenders: Callable[[DeviceReport], set[str]], standing: Callable[[DeviceReport], Standing],
               min_rounds: int, max_rounds: int, target: float, extra_time_s: float,
               progress: Callable[[str], None] = lambda _: None) -> DeviceReport:
    """Steps 1-3 of the module docstring; returns the device report over all rounds measured."""
    for vid in rounds.ids:
        progress(f"round 1: {vid}")
        rounds.add_round(vid)
    report = report_of(rounds.profiles())
    hopeful = {vid for vid in contenders(report) if rounds.measured_ok(vid)}
    for r in range(1, min_rounds):
        for vid in rounds.ids:
            if vid in hopeful and len(rounds.done[vid]) <= r and rounds.extra_s < extra_time_s:
                progress(f"round {r + 1}: {vid}")
                rounds.add_round(vid)
    report = report_of(rounds.profiles())
    while rounds.extra_s < extra_time_s:
        now = standing(report)
        if now.pick is None or now.win >= target or (now.tied and now.equivalence >= target):
            break
        todo = [vid for vid in [now.pick, *now.tied] if len(rounds.done[vid]) < max_rounds]
        if not todo or futile(now, min(len(rounds.done[vid]) for vid in todo), max_rounds, target):
            break
        for vid in todo:
            progress(f"round {len(rounds.done[vid]) + 1}: {vid} (win probability {now.win:.2f} < {target:g})")
            rounds.add_round(vid)
        report = report_of(rounds.profiles())
    return report


def certify_runs(runs: list[Profile], check: Callable[[Profile], tuple[list[str], dict]], variant_id: str,
                 key: str, prompt_tokens: int, output_tokens: int) -> Certification:
    """A certification record from fresh-process runs; `check` gives a run's violations and its figures."""
    out = []
    for run in runs:
        if run.status != "ok":
            out.append(CertRun(status=run.status, violations=[f"{run.status}: {run.reason}"]))
            continue
        violations, figures = check(run)
        out.append(CertRun(status="ok", violations=violations, **figures))
    return Certification(variant_id=variant_id, budget_key=key, prompt_tokens=prompt_tokens, output_tokens=output_tokens,
                         runs=out)
