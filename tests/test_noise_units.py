"""The noise model's pieces against outcomes enumerated by hand (toolkit/recommend/noise.py, options.draws):
what a bootstrap resample can give, the pooled process spread, win probabilities, the tie set and its pick."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from tests.factories import repeats_report as report
from toolkit.recipe import Costs
from toolkit.recommend.noise import process_sigma, resample, settle, win_probabilities
from toolkit.recommend.options import draws, options_at
from toolkit.recommend.select import Option
from toolkit.records import Stat

N = 4000


def triples(column: dict[str, list[float]]) -> Counter:
    return Counter((round(a, 6), round(b, 6), round(c, 6)) for a, b, c in zip(column["p10"], column["median"], column["p90"], strict=True))


def test_a_stat_without_repeats_keeps_its_figures_in_every_resample():
    stat = Stat.of([1.0, 2.0, 3.0], keep_values=False)  # p10 = 1 + 0.2 x 1 = 1.2, p90 = 2.8
    assert resample(stat, np.random.default_rng(0), 4) == {"median": [2.0] * 4, "p10": [1.2] * 4, "p90": [2.8] * 4}
    assert resample(None, np.random.default_rng(0), 4) is None


def test_one_process_of_two_repeats_gives_three_outcomes():
    """Draws of 2 from {0, 100} with replacement: {0, 0} (1/4), {0, 100} (1/2: p10 10, median 50, p90 90), {100, 100}."""
    seen = triples(resample(Stat.of([0.0, 100.0]), np.random.default_rng(1), N))
    assert set(seen) == {(0, 0, 0), (10, 50, 90), (100, 100, 100)}
    assert seen[(10, 50, 90)] / N == pytest.approx(0.5, abs=0.04) and seen[(0, 0, 0)] / N == pytest.approx(0.25, abs=0.04)


def test_processes_of_unequal_size_are_redrawn_whole():
    """Process A gave 10, 10, 10 and B 20, 20. Two slots, each a process drawn with replacement, each giving as
    many repeats as that process had: AA = six 10s, BB = four 20s, AB or BA = 10, 10, 10, 20, 20 (p90 at 3.6 of 4)."""
    stat = Stat.of([10.0, 10.0, 10.0, 20.0, 20.0], runs=[3, 2])
    seen = triples(resample(stat, np.random.default_rng(2), N))
    assert set(seen) == {(10, 10, 10), (20, 20, 20), (10, 10, 20)}
    assert seen[(10, 10, 20)] / N == pytest.approx(0.5, abs=0.04) and seen[(20, 20, 20)] / N == pytest.approx(0.25, abs=0.04)


def test_with_a_process_spread_every_process_stays_and_the_whole_draw_is_scaled():
    stat = Stat.of([10.0, 10.0, 10.0, 20.0, 20.0], runs=[3, 2])
    sigma = 0.5
    column = resample(stat, np.random.default_rng(3), N, sigma)
    p10, median, p90 = (np.asarray(column[k]) for k in ("p10", "median", "p90"))
    assert np.allclose(p90 / median, 2.0) and np.allclose(p10, median)  # both processes, every time
    factors = np.log(median / 10.0)  # one factor exp(N(0, sigma^2 / k)) per resample, k = 2 processes
    assert abs(factors.mean()) < 0.03 and factors.std() == pytest.approx(sigma / math.sqrt(2), rel=0.08)


def test_pooled_process_spread_skips_single_process_stats():
    # process medians 10 and 20: log spread (ln 20 - ln 10) / 2 either side of the mean, 1 degree of freedom
    two = Stat.of([10.0, 10.0, 20.0, 20.0], runs=[2, 2])
    expected = math.sqrt(2 * (math.log(2) / 2) ** 2)
    assert process_sigma([None, Stat.of([5.0, 6.0]), two]) == pytest.approx(expected)
    assert process_sigma([two, None]) == pytest.approx(expected) and process_sigma([None]) == 0.0


def _opt(vid: str, decode: float, kl: float | None = None) -> Option:
    return Option(id=vid, label=vid, metrics={"decode_tps": decode, "kl": kl})


def test_win_probabilities_count_the_pick_of_each_resample_and_respect_vetoes():
    sets = [[_opt("a", 50.0), _opt("b", 40.0)]] * 3 + [[_opt("a", 30.0), _opt("b", 40.0)]]
    assert win_probabilities(sets, [], "speed", 0.5) == {"a": 0.75, "b": 0.25}
    assert win_probabilities(sets, [], "speed", 0.5, vetoes={"a": "failed certification"}) == {"b": 1.0}
    assert win_probabilities([], [], "speed", 0.5) == {}


def test_settle_takes_the_ranking_head_down_to_the_last_variant_at_five_percent():
    a, b, c, d = _opt("a", 50.0, kl=0.2), _opt("b", 45.0, kl=0.1), _opt("c", 40.0), _opt("d", 35.0)
    order = [a, b, c, d]
    pick, tied = settle(order, {"a": 0.6, "b": 0.3, "c": 0.04, "d": 0.01})
    assert pick is a and tied == [a, b]
    pick, tied = settle(order, {"a": 0.6, "b": 0.3, "c": 0.05})  # exactly the threshold: in
    assert pick is a and tied == [a, b, c]
    pick, tied = settle(order, {"b": 0.7, "c": 0.3})  # a never wins a resample, yet ranks first: in the set, not the pick
    assert pick is b and tied == [a, b, c]
    pick, tied = settle(order, {})  # no resample has a pick: the ranking's head alone
    assert pick is a and tied == [a]
    pick, _ = settle(order, {"a": 0.5, "b": 0.5})  # equal chances: lower KL
    assert pick is b


def test_settle_keeps_the_previous_pick_only_while_it_is_tied():
    a, b, c = _opt("a", 50.0), _opt("b", 45.0), _opt("c", 40.0)
    win = {"a": 0.7, "b": 0.25, "c": 0.05}
    assert settle([a, b, c], win, previous="b") == (b, [a, b, c])  # tied: stays, though a is likelier
    assert settle([a, b, c], win, previous="c") == (c, [a, b, c])  # at the threshold: still tied
    assert settle([a, b, c], {"a": 0.96, "b": 0.04}, previous="b") == (a, [a])  # no longer tied: the evidence wins
    assert settle([a, b, c], win, previous="gone") == (a, [a, b, c])  # a variant no longer built


def test_draws_resample_measured_power_reproducibly():
    """Timings without spread (so response time is fixed at 0.1 + 128 / 50 = 2.66 s) and measured watts of
    50, 60, 70 in one process: each resample's energy is 2.66 s x a median of three draws from {50, 60, 70}."""
    rep = report({"ttft": [100.0] * 3, "decode": [50.0] * 3}, {"ttft": [100.0] * 3, "decode": [50.0] * 3})
    watts = Stat.of([50.0, 60.0, 70.0])
    rep = rep.model_copy(update={"profiles": [p.model_copy(update={"rapl_watts": watts}) for p in rep.profiles]})
    options, _ = options_at(rep, 512, 128, Costs())
    first = [[o.metrics["energy_j"] for o in drawn] for drawn in draws(rep, options, 512, 128, Costs())]
    per_watt = {round(e / 2.66, 3) for row in first for e in row}
    assert per_watt == {50.0, 60.0, 70.0}  # never the recipe's busy power (20 W)
    assert first == [[o.metrics["energy_j"] for o in drawn] for drawn in draws(rep, options, 512, 128, Costs())]


def test_draws_scale_decode_by_the_process_spread_when_there_is_one():
    """Decode 40, 40 | 60, 60 in two processes: the pooled spread is > 0, so every resample keeps both processes
    and scales them: p10 is 40 x a factor, spread out, not the 40s and 60s that redrawing whole processes gives."""
    rep = report({"ttft": [100.0] * 4, "decode": [40.0, 40.0, 60.0, 60.0]}, {"ttft": [100.0] * 4, "decode": [50.0] * 4})
    two = Stat.of([40.0, 40.0, 60.0, 60.0], runs=[2, 2])
    rep = rep.model_copy(update={"profiles": [rep.profiles[0].model_copy(update={"decode_tps": two}), rep.profiles[1]]})
    options, _ = options_at(rep, 512, 128, Costs())
    p10s = [drawn[0].metrics["decode_tps"] for drawn in draws(rep, options, 512, 128, Costs())]
    exact = Counter(p10s)  # redrawing whole processes: 40 in 3/4 of resamples, 60 in 1/4
    assert len(exact) > 200 and exact[40.0] / len(p10s) < 0.05 and exact[60.0] / len(p10s) < 0.01
    assert np.median(p10s) == pytest.approx(40.0, rel=0.05)


def test_draws_scale_ttft_by_its_process_spread_and_keep_each_option_s_identity():
    """TTFT 100, 100 | 150, 150 in two processes: as for decode, every resample keeps both processes and scales
    them, so the p90 is spread out rather than the 100s and 150s of whole processes; each drawn option keeps
    the measured option's label, model and size."""
    rep = report({"ttft": [100.0] * 4, "decode": [50.0] * 4, "model": "a", "mb": 64},
                 {"ttft": [100.0] * 4, "decode": [50.0] * 4, "model": "b"})
    two = Stat.of([100.0, 100.0, 150.0, 150.0], runs=[2, 2])
    first = rep.profiles[0]
    prompt = first.prompts[0].model_copy(update={"ttft_ms": two})
    rep = rep.model_copy(update={"profiles": [first.model_copy(update={"prompts": [prompt]}), rep.profiles[1]]})
    options, _ = options_at(rep, 512, 128, Costs())
    sets = list(draws(rep, options, 512, 128, Costs()))
    p90s = Counter(drawn[0].metrics["ttft_ms"] for drawn in sets)
    assert len(p90s) > 200 and p90s.most_common(1)[0][1] / len(sets) < 0.05
    assert {(o.id, o.label, o.model, o.size_mb) for drawn in sets for o in drawn} == {
        ("v0", "m Q0", "a", 64.0), ("v1", "m Q1", "b", 100.0)}


def test_options_take_deploy_memory_over_peak_sizes_in_mib_and_no_timings_from_a_failed_profile():
    rep = report({"ttft": [100.0] * 3, "decode": [50.0] * 3, "mem": 300, "mb": 100},
                 {"ttft": [100.0] * 3, "decode": [50.0] * 3, "mem": 300, "mb": 50},
                 {"ttft": [100.0] * 3, "decode": [50.0] * 3})
    deployed = rep.profiles[0].model_copy(update={"deploy_rss_mb": 240.0})
    crashed = rep.profiles[2].model_copy(update={"status": "crash", "reason": "boom"})
    rep = rep.model_copy(update={"profiles": [deployed, rep.profiles[1], crashed]})
    options, _ = options_at(rep, 512, 128, Costs())
    assert [o.metrics["memory_mb"] for o in options[:2]] == [240.0, 300.0]  # deploy figure when measured
    assert [o.size_mb for o in options] == [100.0, 50.0, 100.0]  # bytes / 2**20
    assert options[2].status == "crash" and options[2].metrics["ttft_ms"] is None  # its partial timings are not used


def test_noise_margin_comes_from_the_profiles_settings_else_the_recipe_default():
    from toolkit.recipe import Device
    from toolkit.recommend.options import noise_margin

    rep = report({"ttft": [100.0] * 3, "decode": [50.0] * 3})
    assert noise_margin(rep) == Device().noise_margin
    tagged = rep.profiles[0].model_copy(update={"settings": {"noise_margin": 0.4}})
    assert noise_margin(rep.model_copy(update={"profiles": [tagged]})) == 0.4


def test_mean_accuracy_is_over_every_task_and_only_ok_scores_count():
    from toolkit.recommend.options import mean_accuracy
    from toolkit.records import EvalResult

    def acc(vid: str, task: str, value: float | None, status: str = "ok") -> EvalResult:
        return EvalResult(key=vid + task, variant_id=vid, task=task, status=status, value=value, runtime="llama.cpp")
    rep = report({"ttft": [100.0] * 3, "decode": [50.0] * 3})
    rep.accuracy = [acc("v0", "a", 0.4), acc("v0", "b", 0.7),  # (0.4 + 0.7) / 2
                    acc("v1", "a", 0.9),  # missing task b: no mean
                    acc("v2", "a", 0.5), acc("v2", "b", None),  # ok without a value: not a score
                    acc("v3", "a", 0.5), acc("v3", "b", 0.5, "crash")]
    assert mean_accuracy(rep) == pytest.approx({"v0": 0.55})
    rep.accuracy = []
    assert mean_accuracy(rep) == {}


def test_each_option_s_details_are_its_medians_and_spreads_rounded_as_reported():
    """The figures the reports print beside each option, computed here with numpy from the repeats."""
    from toolkit.records import EvalResult

    ttft, decode = [101.23456, 103.98765, 99.87654], [50.123456, 52.98765, 49.55555]
    rep = report({"ttft": ttft, "decode": decode, "mem": 287.5})
    rep.accuracy = [EvalResult(key="a", variant_id="v0", task="a", status="ok", value=0.123456789, runtime="llama.cpp")]
    options, details = options_at(rep, 512, 128, Costs())
    itl = [1000 / d for d in decode]
    response_s = np.median(ttft) / 1000 + 128 / np.median(decode)
    assert details["v0"] == {
        "ttft_ms_median": round(float(np.median(ttft)), 2), "prefill_tps_median": round(float(np.median([512e3 / t for t in ttft])), 1),
        "decode_tps_median": round(float(np.median(decode)), 2), "itl_ms_p50": round(float(np.median(itl)), 3),
        "itl_ms_p90": round(float(np.percentile(itl, 90)), 3), "load_ms": None, "process_peak_mb": 287.5,
        "response_s": round(float(response_s), 3), "watts": 20.0, "top1_agreement": None, "acc_a": 0.123456789,
    }
    assert options[0].metrics["accuracy"] == 0.12346 and options[0].metrics["energy_j"] == round(20.0 * response_s, 3)
