"""Noise-aware comparison: bootstrap win probability, the tie set and its tie-break, p90/p10 budgets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.factories import FP_BARE as FP  # noqa: F401
from tests.factories import repeats_report as report
from toolkit.recipe import Budget, Costs
from toolkit.recommend.engine import recommend
from toolkit.recommend.noise import SINGLE_TIMINGS, TIE_THRESHOLD
from toolkit.reports import markdown, noise_line


def row(rec, vid):
    return next(r for r in rec.rows if r.variant_id == vid)


TTFT = [800, 820, 790, 810, 805]


def test_overlapping_repeats_are_a_tie_and_the_most_likely_winner_is_picked():
    a = [100, 120, 90, 110, 105]
    b = [104, 95, 118, 108, 101]
    for first, second in ((a, b), (b, a)):  # two runs: the faster variant swaps; each run's tie set names both
        rec = recommend(report({"ttft": TTFT, "decode": first, "kl": 0.02}, {"ttft": TTFT, "decode": second, "kl": 0.01}),
                        Budget(), Costs(), [])
        w0, w1 = row(rec, "v0").win_probability, row(rec, "v1").win_probability
        assert {rec.pick, *rec.tied_with} == {"v0", "v1"} and len(rec.tied_with) == 1
        assert rec.pick == ("v0" if w0 > w1 else "v1")  # computed here from the win probabilities
        assert rec.tie_rule == ("higher win probability, then lower KL, then lower perplexity (bits per byte across models), "
                                "then smaller file")
        assert w0 >= TIE_THRESHOLD and w1 >= TIE_THRESHOLD and abs(w0 + w1 - 1) < 1e-9
        other = rec.tied_with[0]
        pick_label, other_label = f"m Q{rec.pick[1]}", f"m Q{other[1]}"
        wp, wo = row(rec, rec.pick).win_probability, row(rec, other).win_probability
        line = noise_line(rec)
        assert f"{pick_label} (win probability {wp:.2f}) is tied with {other_label} (win probability {wo:.2f})" in line
        # the decode repeats spread 30%: the two utilities often differ by more than 0.01, so the tie is unsettled
        assert 0 < rec.tie_equivalence < 0.9
        assert line.endswith(f"tie broken by: {rec.tie_rule}; their utilities lie within 0.01 of each other in "
                             f"{rec.tie_equivalence:.0%} of the resamples (practically the same answer when that is most of them)")
        assert line in markdown(rec)
        assert row(rec, rec.pick).verdict.startswith(f"PICK: statistically tied with {other_label}; tie broken by higher win")
        assert row(rec, other).verdict.startswith("statistically tied with the pick (win probability")


def test_a_device_keeps_its_previous_certified_pick_while_tied_and_says_so():
    """The two runs above swap the likelier winner; with the first run's pick as this device's previous pick,
    the second run keeps it, and a clear winner still overrides it."""
    from toolkit.recommend.engine import pick_key
    from toolkit.recommend.select import STICKY_RULE, TIE_RULE

    a = [100, 120, 90, 110, 105]
    b = [104, 95, 118, 108, 101]
    key = pick_key(Budget(), Costs())
    picks = []
    for first, second in ((a, b), (b, a)):
        rep = report({"ttft": TTFT, "decode": first, "kl": 0.02}, {"ttft": TTFT, "decode": second, "kl": 0.01})
        fresh = recommend(rep, Budget(), Costs(), [])
        assert fresh.tie_rule == TIE_RULE
        for previous in ("v0", "v1"):
            rec = recommend(rep.model_copy(update={"previous_picks": {key: previous}}), Budget(), Costs(), [])
            assert rec.pick == previous and set(rec.tied_with) == {"v0", "v1"} - {previous}
            assert rec.tie_rule == (STICKY_RULE if previous != fresh.pick else TIE_RULE)
            assert row(rec, previous).verdict.startswith("PICK: statistically tied with")
        picks.append(fresh.pick)
    assert picks[0] != picks[1]  # without it the two runs disagree: what the rule is for
    clear = report({"ttft": TTFT, "decode": [50, 52, 49, 51, 50], "kl": 0.02}, {"ttft": TTFT, "decode": a, "kl": 0.01})
    other_budget = pick_key(Budget(alpha=0.9), Costs())
    assert recommend(clear.model_copy(update={"previous_picks": {key: "v0"}}), Budget(), Costs(), []).pick == "v1"
    assert recommend(report({"ttft": TTFT, "decode": a, "kl": 0.02}, {"ttft": TTFT, "decode": b, "kl": 0.01})
                     .model_copy(update={"previous_picks": {other_budget: "v1"}}), Budget(), Costs(), []).tie_rule == TIE_RULE


def test_identical_timings_go_to_better_fidelity_then_the_smaller_file_and_results_repeat_exactly():
    same = [100.0] * 5
    rep = report({"ttft": same, "decode": same, "mb": 140}, {"ttft": same, "decode": same, "mb": 90})
    first, second = recommend(rep, Budget(), Costs(), []), recommend(rep, Budget(), Costs(), [])
    assert first.pick == "v1" and row(first, "v1").win_probability == 1.0  # every draw ties exactly: smaller file
    assert first.model_dump() == second.model_dump()  # seeded bootstrap: same report, same record
    better_kl = report({"ttft": same, "decode": same, "kl": 0.001, "mb": 140}, {"ttft": same, "decode": same, "mb": 90})
    assert recommend(better_kl, Budget(), Costs(), []).pick == "v0"


def test_clearly_separated_repeats_win_with_probability_one_and_no_tie():
    rec = recommend(report({"ttft": TTFT, "decode": [100, 105, 110], "kl": 0.0},
                           {"ttft": TTFT, "decode": [200, 205, 210], "kl": 0.05}), Budget(), Costs(), [])
    assert rec.pick == "v1" and rec.tied_with == [] and rec.tie_rule is None
    assert row(rec, "v1").win_probability >= 0.99 and row(rec, "v0").win_probability <= 0.01
    assert row(rec, "v1").verdict.startswith("PICK: highest utility") and "(win probability 1.00)" in row(rec, "v1").verdict
    assert "no statistical tie" in noise_line(rec) and "of 1000 bootstrap resamples" in noise_line(rec)


def _with_items(rep, *per_variant: list[float]):
    from toolkit.records import EvalResult

    results = [EvalResult(key=f"e{i}", variant_id=f"v{i}", task="t", status="ok", runtime="llama.cpp", metric="acc",
                          value=sum(items) / len(items), n=len(items), items=items) for i, items in enumerate(per_variant)]
    return rep.model_copy(update={"accuracy": results})


def test_accuracy_is_redrawn_from_its_items_the_same_items_for_every_variant():
    """Priority quality ranks by accuracy: a lead of one item in 50 is no lead (a tie, most resamples still v0's),
    fifteen items is; with the items left out, the one-item lead claimed certainty."""
    timings = ({"ttft": TTFT, "decode": [100, 110, 90, 105, 95]}, {"ttft": TTFT, "decode": [98, 112, 92, 104, 96]})
    v0 = [1.0] * 20 + [0.0] * 30
    one_item = [0.0] + v0[1:]  # v1 misses one item v0 gets right; every other answer alike
    rec = recommend(_with_items(report(*timings), v0, one_item), Budget(priority="quality"), Costs(), [])
    assert rec.pick == "v0" and rec.tied_with == ["v1"]
    assert 0.1 < row(rec, "v1").win_probability < 0.3  # the item is left out of ~36% of resamples: then decode decides
    fixed = _with_items(report(*timings), v0, one_item)
    fixed = fixed.model_copy(update={"accuracy": [r.model_copy(update={"items": []}) for r in fixed.accuracy]})
    rec = recommend(fixed, Budget(priority="quality"), Costs(), [])
    assert rec.pick == "v0" and rec.tied_with == [] and row(rec, "v0").win_probability == 1.0
    fifteen = [0.0] * 15 + v0[15:]
    rec = recommend(_with_items(report(*timings), v0, fifteen), Budget(priority="quality"), Costs(), [])
    assert rec.pick == "v0" and rec.tied_with == [] and row(rec, "v0").win_probability == 1.0


def test_budgets_are_checked_on_p90_ttft_and_p10_decode_not_medians():
    # v0: median TTFT 100 ms but p90 580 ms; v1: median decode 50 tok/s but p10 23 tok/s; v2 is steady and slower
    rec = recommend(report({"ttft": [100, 100, 100, 100, 900], "decode": [60] * 5},
                           {"ttft": [300] * 5, "decode": [50, 50, 50, 50, 5]},
                           {"ttft": [450] * 5, "decode": [45] * 5}),
                    Budget(max_ttft_ms=500, min_decode_tps=40), Costs(), [])
    assert row(rec, "v0").detail["ttft_ms_median"] == 100 and row(rec, "v1").detail["decode_tps_median"] == 50
    assert "TTFT p90 580.0 ms > 500 ms" in row(rec, "v0").verdict
    assert "decode (p10) 23.0 tok/s < 40 tok/s" in row(rec, "v1").verdict
    assert rec.pick == "v2"
    # the pick meets the budget on the measured figures even when others win some resamples
    assert rec.tied_with == [] and row(rec, "v2").win_probability < 1
    assert "over the budget on the measured figures but the pick in some resamples: m Q0 (0." in noise_line(rec)


def test_single_timings_claim_no_win_probability_and_say_why():
    """One repeat in one process per variant: every resample would redraw the same value, so a bootstrap would
    report the pick as certain (1.00, no tie) on nothing but two single timings."""
    rec = recommend(report({"ttft": [800], "decode": [100]}, {"ttft": [790], "decode": [101]}), Budget(), Costs(), [])
    assert rec.pick == "v1" and rec.resamples == 0 and rec.tied_with == []
    assert all(r.win_probability is None for r in rec.rows) and "win probability" not in row(rec, "v1").verdict
    assert SINGLE_TIMINGS in rec.notes and noise_line(rec) is None and "Noise: not assessed" in markdown(rec)
    repeated = recommend(report({"ttft": [800], "decode": [100]}, {"ttft": [790, 900], "decode": [101, 90]}),
                         Budget(), Costs(), [])  # one variant measured twice: its spread is measured
    assert repeated.resamples == 1000 and SINGLE_TIMINGS not in repeated.notes


def test_no_edge_pick_has_no_noise_line():
    rec = recommend(report({"ttft": TTFT, "decode": [10, 11, 12]}), Budget(min_decode_tps=100), Costs(), [])
    assert rec.pick is None and rec.resamples == 0 and noise_line(rec) is None
    assert all(r.win_probability is None for r in rec.rows)


repeats = st.lists(st.sampled_from([80.0, 90.0, 100.0, 110.0]), min_size=1, max_size=5)
variant = st.fixed_dictionaries({"ttft": st.lists(st.sampled_from([400.0, 500.0, 600.0]), min_size=1, max_size=5),
                                 "decode": repeats, "kl": st.sampled_from([0.0, 0.01, 0.2]),
                                 "mb": st.sampled_from([90, 140]), "mem": st.sampled_from([200, 400])})


@settings(max_examples=40, deadline=None)
@given(st.lists(variant, min_size=1, max_size=4), st.sampled_from(["balanced", "speed", "memory", "pcr"]),
       st.sampled_from([None, 500.0]), st.sampled_from([None, 0.1]))
def test_final_pick_meets_the_budget_and_wins_its_tie_by_the_stated_rule(variants, priority, max_ttft, max_kl):
    budget = Budget(priority=priority, max_ttft_ms=max_ttft, max_kl=max_kl)
    rec = recommend(report(*variants), budget, Costs(), [])
    feasible = [r for r in rec.rows if not r.violations]
    assert (rec.pick is not None) == bool(feasible)
    if rec.pick is None:
        return
    pick = row(rec, rec.pick)
    assert not pick.violations and all(not row(rec, v).violations for v in rec.tied_with)
    if rec.resamples == 0:  # every variant in reach timed once: no win probability claimed
        assert SINGLE_TIMINGS in rec.notes and rec.tied_with == [] and all(r.win_probability is None for r in rec.rows)
        return
    assert abs(sum(r.win_probability for r in rec.rows) - 1) < 1e-9 or any(r.violations for r in rec.rows)
    tied = [pick, *(row(rec, v) for v in rec.tied_with)]
    if len(tied) > 1:
        def rule(r):
            return -r.win_probability, r.metrics["kl"], r.metrics["perplexity"], r.size_mb, r.variant_id
        assert min(tied, key=rule) is pick and rec.tie_rule
    # every in-budget variant that wins at least TIE_THRESHOLD of the resamples is in the tie set
    assert {r.variant_id for r in feasible if r.win_probability >= TIE_THRESHOLD} <= {r.variant_id for r in tied}
    assert recommend(report(*variants), budget, Costs(), []).model_dump() == rec.model_dump()
