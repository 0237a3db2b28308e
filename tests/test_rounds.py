"""Rounds of fresh processes: merging, the two-stage bootstrap, which variants get more rounds, certification."""

from __future__ import annotations

import numpy as np
import pytest

from tests.factories import FP_BARE as FP
from tests.factories import repeats_report as report
from toolkit.pipeline.profile import rounds_standing
from toolkit.profiling.rounds import Rounds, Standing, futile, merge_rounds, run_rounds
from toolkit.recipe import Budget, Costs
from toolkit.recommend.engine import budget_key, contenders, recommend
from toolkit.recommend.noise import process_sigma, resample
from toolkit.records import Certification, CertRun, Profile, PromptTiming, Stat
from toolkit.reports import certification_line, markdown


def _profile(vid: str, ttft: list[float], decode: list[float], mem: float, status: str = "ok", wall: float = 1.0) -> Profile:
    if status != "ok":
        return Profile(key=vid, variant_id=vid, variant_name=vid, format="gguf", runtime="llama.cpp", device=FP,
                       status=status, reason="boom", settings={}, file_size_mb=1, wall_s=wall)
    return Profile(
        key=vid, variant_id=vid, variant_name=vid, format="gguf", runtime="llama.cpp", device=FP, status="ok", settings={},
        file_size_mb=1, load_ms=5, decode_tokens=128, peak_rss_mb=mem, wall_s=wall,
        prompts=[PromptTiming(prompt_tokens=512, ttft_ms=Stat.of(ttft), prefill_tps=Stat.of([512e3 / t for t in ttft]))],
        decode_tps=Stat.of(decode), itl_ms=Stat.of([1000 / d for d in decode], keep_values=False),
    )


def test_merge_keeps_every_repeat_and_each_process():
    a = _profile("v", [100, 101, 102], [50, 51, 52], 300)
    b = _profile("v", [130, 131, 132], [40, 41, 42], 310)
    failed = _profile("v", [], [], 0, status="crash")
    merged = merge_rounds([a, failed, b])
    assert merged.rounds == 2
    assert merged.decode_tps.values == [50, 51, 52, 40, 41, 42] and merged.decode_tps.runs == [3, 3]
    assert merged.decode_tps.groups() == [[50, 51, 52], [40, 41, 42]]
    assert merged.prompt(512).ttft_ms.n == 6 and merged.prompt(512).ttft_ms.p90 > 130
    assert merged.peak_rss_mb == 310 and merged.peak_rss_mb_runs == [300, 310]  # the budget sees the worst process
    assert merged.itl_ms.p90 >= merged.itl_ms.median  # summaries without repeats merge conservatively
    assert merge_rounds([failed]).status == "crash"


def test_two_stage_bootstrap_sees_the_spread_between_processes():
    """Tight repeats in two processes that disagree: resampling processes widens the interval, and a stat
    from one process resamples exactly as a plain bootstrap."""
    two = Stat.of([100, 101, 102, 130, 131, 132], runs=[3, 3])
    flat = Stat.of([100, 101, 102, 130, 131, 132])
    rng = np.random.default_rng(0)
    spread_two = np.ptp(resample(two, rng, 2000)["median"])
    assert spread_two >= 29  # some resamples draw one process twice: its median alone
    single = resample(Stat.of([100, 101, 102]), np.random.default_rng(0), 2000)
    assert min(single["median"]) >= 100 and max(single["median"]) <= 102
    assert set(np.round(resample(flat, np.random.default_rng(1), 50)["median"])) <= set(range(100, 133))


def test_contenders_leave_out_what_cannot_win():
    rep = report(
        {"ttft": [100] * 3, "decode": [50] * 3, "kl": 0.01},                   # the pick
        {"ttft": [105] * 3, "decode": [48] * 3, "kl": 0.005},                  # close behind: a contender
        {"ttft": [100] * 3, "decode": [60] * 3, "kl": 0.5},                    # breaks the KL limit: out
        {"ttft": [400] * 3, "decode": [12] * 3, "kl": 0.001},                  # far behind the noise: out
        {"ttft": [90] * 3, "decode": [55] * 3, "kl": 0.01, "mem": 5000},       # breaks memory: out
    )
    budget = Budget(ttft_prompt_tokens=512, max_kl=0.1, max_memory_mb=1000, priority="speed")
    assert contenders(rep, budget, Costs(), 0.25) == {"v0", "v1"}
    assert contenders(rep, budget, Costs(), 0.0) == {"v0"}


def test_rounds_go_to_contenders_until_the_pick_is_sure():
    """A fake measure: v0 and v1 are close and noisy, v2 is far behind. v2 gets one round; the others get the
    minimum, then more only while the pick's win probability is below the target, never past max_rounds."""
    rng = np.random.default_rng(3)
    levels = {"v0": 50.0, "v1": 49.0, "v2": 10.0}
    calls: list[tuple[str, int]] = []

    def measure(vid: str, index: int) -> Profile:
        calls.append((vid, index))
        level = levels[vid] * rng.uniform(0.85, 1.15)  # run-to-run swing
        return _profile(vid, [100.0] * 3, list(level + rng.normal(0, 0.2, 3)), 300, wall=2.0)

    base = report({"ttft": [100] * 3, "decode": [50] * 3}, {"ttft": [100] * 3, "decode": [49] * 3},
                  {"ttft": [100] * 3, "decode": [10] * 3})
    budget, costs = Budget(ttft_prompt_tokens=512, priority="speed"), Costs()

    standing = lambda rep: rounds_standing(rep, budget, costs)  # noqa: E731 - as the profile stage decides

    rounds = Rounds(["v0", "v1", "v2"], measure)
    rep = run_rounds(rounds, lambda ps: base.model_copy(update={"profiles": ps}), lambda r: contenders(r, budget, costs, 0.25),
                     standing, min_rounds=2, max_rounds=5, target=0.9, extra_time_s=1000)
    counts = {vid: len(done) for vid, done in rounds.done.items()}
    assert counts["v2"] == 1  # cannot win: measured once
    assert 2 <= counts["v0"] <= 5 and 2 <= counts["v1"] <= 5
    assert [p.rounds for p in rep.profiles] == [counts["v0"], counts["v1"], 1]
    now = standing(rep)
    assert now.win >= 0.9 or counts[now.pick] == 5 or futile(now, counts[now.pick], 5, 0.9)  # sure, out of rounds, or futile
    assert rounds.extra_s == pytest.approx(2.0 * (sum(counts.values()) - 3))
    # the time cap stops it: no round after the first once extra_time_s is spent
    capped = Rounds(["v0", "v1", "v2"], measure)
    run_rounds(capped, lambda ps: base.model_copy(update={"profiles": ps}), lambda r: contenders(r, budget, costs, 0.25),
               standing, min_rounds=5, max_rounds=5, target=1.0, extra_time_s=3.0)
    assert sum(len(d) for d in capped.done.values()) - 3 == 2  # 2 s + 2 s passes the 3 s cap


@pytest.mark.parametrize("priority", ["balanced", "speed"])
def test_a_tie_of_equals_is_settled_instead_of_measured_to_max_rounds(priority):
    """Two variants measured alike (round r of each draws the same numbers): neither wins 90% of resamples
    however many rounds run. With the balanced priority their utilities stay within 0.01 of each other in
    nearly every resample, so the tie is settled after the minimum rounds; the speed priority has no such
    rule, and its even split makes more rounds futile (test below): it stops there too."""

    def measure(vid: str, index: int) -> Profile:
        rng = np.random.default_rng(index)
        level = 50.0 * rng.uniform(0.99, 1.01)
        return _profile(vid, list(100 + rng.normal(0, 1.0, 3)), list(level + rng.normal(0, 0.5, 3)), 300, wall=2.0)

    base = report({"ttft": [100] * 3, "decode": [50] * 3}, {"ttft": [100] * 3, "decode": [50] * 3})
    budget, costs = Budget(ttft_prompt_tokens=512, priority=priority, alpha=0.5), Costs()

    standing = lambda rep: rounds_standing(rep, budget, costs)  # noqa: E731 - as the profile stage decides

    rounds = Rounds(["v0", "v1"], measure)
    rep = run_rounds(rounds, lambda ps: base.model_copy(update={"profiles": ps}), lambda r: contenders(r, budget, costs, 0.25),
                     standing, min_rounds=2, max_rounds=5, target=0.9, extra_time_s=1000)
    rec = recommend(rep, budget, costs)
    assert rec.tied_with and max(r.win_probability for r in rec.rows) < 0.9  # a real tie
    counts = [len(done) for done in rounds.done.values()]
    if priority == "balanced":
        assert rec.tie_equivalence >= 0.9 and counts == [2, 2]
    else:
        assert rec.tie_equivalence is None and counts == [2, 2] and futile(standing(rep), 2, 5, 0.9)


@pytest.mark.parametrize(("win", "rival", "rounds"), [
    (0.74, 0.20, 3),  # share 0.787: z 0.797; x sqrt(6/2) = 1.380 (Phi 0.916, go on), x sqrt(6/3) = 1.127 (0.870, stop)
    (0.50, 0.50, 2),  # an even split: no lead to grow
    (0.30, 0.45, 2),  # the pick is not even the most likely winner of the pair
    (0.88, 0.02, 6),  # share 0.978: z 2.01 stays above Phi^-1(0.9) = 1.28 at every k; only max_rounds stops it
])
def test_rounds_stop_once_max_rounds_could_not_make_the_pick_sure(win, rival, rounds):
    """A scripted standing (the pick's win probability stays where it is): rounds go on while the lead,
    projected to max_rounds processes (z grows as sqrt(k)), would reach the target, and stop once it would not."""
    measure = lambda vid, index: _profile(vid, [100.0] * 3, [50.0] * 3, 300, wall=1.0)  # noqa: E731
    base = report({"ttft": [100] * 3, "decode": [50] * 3}, {"ttft": [100] * 3, "decode": [50] * 3})
    runs = Rounds(["v0", "v1"], measure)
    run_rounds(runs, lambda ps: base.model_copy(update={"profiles": ps}), lambda r: {"v0", "v1"},
               lambda r: Standing("v0", win, ["v1"], 0.0, rival), min_rounds=2, max_rounds=6, target=0.9, extra_time_s=1000)
    assert [len(done) for done in runs.done.values()] == [rounds, rounds]
    assert futile(Standing("v0", 0.99, [], 0.0, 0.0), 6, 6, 0.9)  # out of rounds
    assert not futile(Standing("v0", 0.6, [], 0.0, 0.0), 2, 6, 0.9)  # no rival: measuring can still help


def test_equivalence_counts_resamples_with_every_tied_utility_within_the_tolerance():
    from toolkit.recommend.noise import equivalence

    drawn = [{"a": 0.995, "b": 1.0}, {"a": 1.0, "b": 0.985}, {"a": 1.0}, {"a": 0.996, "b": 1.0, "c": 0.5}]
    assert equivalence(drawn, ["a", "b"]) == 0.5  # within 0.01 twice; 0.015 apart once; b out of budget once
    assert equivalence(drawn, ["a", "b"], tolerance=0.02) == 0.75
    assert equivalence([{"a": 0.5, "b": 0.75}], ["a", "b"], tolerance=0.25) == 1.0  # exactly the tolerance apart: within
    assert equivalence(drawn, ["a"]) == 0.0 and equivalence([], ["a", "b"]) == 0.0


def test_a_failed_certification_vetoes_the_pick_and_the_next_is_named():
    rep = report({"ttft": [100] * 3, "decode": [50] * 3, "kl": 0.01}, {"ttft": [110] * 3, "decode": [45] * 3, "kl": 0.02})
    budget, costs = Budget(ttft_prompt_tokens=512, max_ttft_ms=200, priority="speed"), Costs()
    key = budget_key(budget, costs)
    assert recommend(rep, budget, costs).pick == "v0"
    failed = Certification(variant_id="v0", budget_key=key, prompt_tokens=512, output_tokens=128, runs=[
        CertRun(status="ok", ttft_p90_ms=150, decode_p10_tps=50, peak_rss_mb=300),
        CertRun(status="ok", ttft_p90_ms=250, decode_p10_tps=50, peak_rss_mb=300,
                violations=["TTFT p90 250.0 ms > 200 ms (over by 50.0 ms)"]),
        CertRun(status="ok", ttft_p90_ms=150, decode_p10_tps=50, peak_rss_mb=300)])
    passed = Certification(variant_id="v1", budget_key=key, prompt_tokens=512, output_tokens=128,
                           runs=[CertRun(status="ok", ttft_p90_ms=120, decode_p10_tps=44, peak_rss_mb=300)] * 3)
    rec = recommend(rep.model_copy(update={"certifications": [failed, passed]}), budget, costs)
    assert rec.pick == "v1" and rec.certification == passed
    assert "Certified: meets the budget in 3/3 fresh runs" in rec.message
    v0 = next(r for r in rec.rows if r.variant_id == "v0")
    assert "failed certification: met the budget in 2/3 fresh runs (TTFT p90 250.0 ms > 200 ms" in v0.verdict
    assert "meets the budget in 3/3 fresh runs at 512 prompt + 128 output tokens (run 1: TTFT p90 120.0 ms" in markdown(rec)
    # another budget: the certifications do not apply, and the report says so
    other = recommend(rep.model_copy(update={"certifications": [failed, passed]}), budget.model_copy(update={"max_ttft_ms": 300}), costs)
    assert other.pick == "v0" and other.certification is None and "Not certified for this budget" in other.message
    assert "none for this budget" in certification_line(other)


def test_pooled_process_spread_and_the_resample_it_drives():
    """Two variants whose processes disagree by a factor e^0.1 and e^0.2: the pooled log-spread is the root of
    the mean squared deviation (hand computation); resampling with it spreads a variant's median by about
    sigma / sqrt(k), however tight its repeats."""
    a = Stat.of([100, 100, 100, 100 * np.exp(0.1), 100 * np.exp(0.1), 100 * np.exp(0.1)], runs=[3, 3])
    b = Stat.of([50, 50, 50, 50 * np.exp(0.2), 50 * np.exp(0.2), 50 * np.exp(0.2)], runs=[3, 3])
    expected = np.sqrt((2 * 0.05**2 + 2 * 0.1**2) / 2)
    assert process_sigma([a, b, None, Stat.of([1.0, 2.0])]) == pytest.approx(expected, rel=1e-3)
    assert process_sigma([Stat.of([1.0, 2.0])]) == 0.0
    medians = np.log(resample(a, np.random.default_rng(0), 4000, sigma=expected)["median"])
    assert np.std(medians) == pytest.approx(expected / np.sqrt(2), rel=0.15)


def _fake_recipe(tmp_path, monkeypatch, workspace: str = "ws"):
    """Two fake variants 5% apart with noisy timings, certified in one run."""
    from tests import fakes
    from tests.conftest import write_recipe
    from toolkit.recipe import load_recipe

    fakes.install(monkeypatch)
    return load_recipe(write_recipe(tmp_path / f"fake-{workspace}.yaml", f"""
        name: fake
        workspace: {tmp_path / workspace}
        candidates: [{{model: {fakes.fake_source(tmp_path / 'fake-model')}, name: fakelm}}]
        variants: {{gguf: null, fake: {{speeds: [1, 1.05], noise: 0.5}}}}
        device: {{prompt_lengths: [32], decode_tokens: 8, repeats: 3, warmup: 0, rounds: 1, max_rounds: 1, certify_runs: 1,
                  power: {{idle_w: 5, busy_w: 10}}}}
        quality: {{ctx: 64, chunks: 2}}
        cloud: {{enabled: false}}
        """))


@pytest.mark.pypi_data  # the corpus
def test_a_remeasured_device_starts_from_its_previous_certified_pick(tmp_path, monkeypatch):
    """Profile, then measure again from scratch (the cached profiles gone): the new report carries the first
    report's certified pick for the recipe's budget; a report of another device does not count."""
    import shutil

    from toolkit import pipeline
    from toolkit.io import write_json
    from toolkit.recommend.engine import pick_key

    recipe = _fake_recipe(tmp_path, monkeypatch)
    pipeline.compress(recipe)
    first, path = pipeline.profile(recipe)
    assert first.previous_picks == {}
    picked = recommend(first, recipe.budget, recipe.costs)
    assert picked.certification is not None and picked.certification.certified
    # newer, named like this device's, its pick the other variant (certified there, this one vetoed): but
    # another device's report
    other = next(v.id for v in first.variants if v.id != picked.pick)
    passed = picked.certification.model_copy(update={"variant_id": other})
    failed = picked.certification.model_copy(update={"runs": [CertRun(status="ok", violations=["too slow"])]})
    stranger = first.model_copy(update={"device": first.device.model_copy(update={"id": "another"}), "created": "9999",
                                        "certifications": [failed, passed]})
    write_json(path.with_name(f"device-x-{first.device.id}.json"), stranger)
    assert recommend(stranger, recipe.budget, recipe.costs).pick == other
    shutil.rmtree(recipe.workspace_dir() / "profiles")
    second, _ = pipeline.profile(recipe)
    assert second.previous_picks == {pick_key(recipe.budget, recipe.costs): picked.pick}
    assert list((recipe.workspace_dir() / "profiles").iterdir())  # measured again, not read from a cache


@pytest.mark.pypi_data  # the corpus
def test_a_fresh_workspace_on_the_same_machine_starts_from_its_certified_pick(tmp_path, monkeypatch, machine_state):
    """A fresh clone's run (a new, empty workspace) on the machine that certified a pick for the same recipe
    and budget keeps that pick while tied, as a rerun in the first workspace does; another budget, or a machine
    with nothing remembered, starts afresh."""
    import shutil

    from toolkit import pipeline
    from toolkit.recommend.engine import pick_key

    recipe = _fake_recipe(tmp_path, monkeypatch)
    pipeline.compress(recipe)
    first, _ = pipeline.profile(recipe)
    picked = recommend(first, recipe.budget, recipe.costs)
    assert picked.certification is not None and picked.certification.certified
    assert len(list((machine_state / "edgefirst-toolkit" / "picks" / first.device.id).glob("*.json"))) == 1
    fresh = _fake_recipe(tmp_path, monkeypatch, workspace="clone")
    pipeline.compress(fresh)
    again, _ = pipeline.profile(fresh)
    assert again.previous_picks == {pick_key(fresh.budget, fresh.costs): picked.pick}
    rec = recommend(again, fresh.budget, fresh.costs)
    assert rec.pick == picked.pick or picked.pick not in rec.tied_with  # kept while the measurements tie them
    other = fresh.model_copy(update={"budget": fresh.budget.model_copy(update={"max_memory_mb": 10_000})})
    assert pipeline.profile(other, write=False, certify_pick=False)[0].previous_picks == {}  # not certified for it
    shutil.rmtree(machine_state / "edgefirst-toolkit")
    shutil.rmtree(fresh.workspace_dir() / "reports")
    assert pipeline.profile(fresh, write=False)[0].previous_picks == {}  # nothing remembered: decided afresh


def test_rounds_are_decided_on_the_measurements_not_on_the_previous_pick():
    """A device's previous certified pick keeps the answer while tied (select.STICKY_RULE), but how much more to
    measure is decided without it: a rerun on cached rounds, which has the first run's pick as its previous one,
    then makes the first run's decisions (the demo's rerun stopped a round early before)."""
    from toolkit.recommend.engine import pick_key

    budget, costs = Budget(), Costs()
    ttft = [100.0] * 5
    rep = report({"ttft": ttft, "decode": [100, 120, 90, 110, 105], "kl": 0.02},
                 {"ttft": ttft, "decode": [104, 95, 118, 108, 101], "kl": 0.01})
    fresh = rounds_standing(rep, budget, costs)
    first = recommend(rep, budget, costs)
    assert fresh.pick == first.pick and fresh.tied and 0.5 < fresh.win < 0.9
    assert fresh.rival_win == pytest.approx(next(r.win_probability for r in first.rows if r.variant_id != first.pick))
    other = fresh.tied[0]
    sticky = rep.model_copy(update={"previous_picks": {pick_key(budget, costs): other}})
    assert recommend(sticky, budget, costs).pick == other  # the answer keeps the previous pick
    assert rounds_standing(sticky, budget, costs) == fresh  # the measuring does not follow it


def test_decode_is_timed_after_the_longest_prompt_where_certification_measures_it():
    """Decode slows as the context grows (llama-bench here: Gemma 3 270M F16 tg128 20.6 tok/s at depth 128, 19.1
    at 512), so the rounds time it after the deepest prompt a budget can name, as certification does."""
    from toolkit.profiling.meters.sampler import Recorder
    from toolkit.profiling.worker import timed_runs

    class Recording:
        def __init__(self):
            self.calls, self.context = [], 0

        def prefill(self, prompt):
            self.context = len(prompt)
            self.calls.append(("prefill", len(prompt)))
            return 1

        def decode(self, token):
            self.calls.append(("decode", self.context))
            self.context += 1
            return token

        def reset_perf(self):
            pass

        def perf(self):
            return None

    session = Recording()
    job = {"prompt_lengths": [128, 512, 256], "decode_tokens": 4, "warmup": 1, "repeats": 2}
    with Recorder(None) as energy:
        out = timed_runs(session, list(range(600)), job, energy)
    timed = session.calls[1 + 4:]  # after the warm-up's prefill and decodes
    assert out["decode_context"] == 512 and all(n == 2 for n in (len(p["ttft_ms"]) for p in out["prompts"]))
    decodes = [i for i, call in enumerate(timed) if call[0] == "decode"]
    assert [timed[i - 1] for i in decodes if timed[i - 1][0] == "prefill"] == [("prefill", 512)] * 2
    assert timed.count(("prefill", 512)) == 2 and len(out["decode_tps"]) == 2  # no prefill run twice


@pytest.mark.parametrize(("extra_s", "certified"), [(1000, "v3"), (100, None)])
def test_certification_goes_down_the_picks_until_one_passes_or_its_time_runs_out(extra_s, certified):
    """v0-v2 miss the TTFT limit when re-measured (40 s of runs each); v3 meets it. With 1,000 s allowed for
    certifying, the fourth pick is certified; with 100 s, the third attempt is the last, and the pick says its
    turn did not come rather than that `toolkit profile` would certify it."""
    from toolkit.pipeline.certify import certify
    from toolkit.recipe import Device, Recipe

    rep = report(*({"ttft": [100 + 10 * i] * 3, "decode": [50 - i] * 3} for i in range(5)))
    budget = Budget(ttft_prompt_tokens=512, max_ttft_ms=200, priority="speed")
    recipe = Recipe(name="r", candidates=[{"model": "m"}], budget=budget,
                    device=Device(prompt_lengths=[512], certify_runs=2, extra_time_s=extra_s))
    measured: list[str] = []

    def measure_round(at_shape, variant, index):
        measured.append(variant.id)
        ttft = 150 if variant.id == "v3" else 250
        return rep.profiles[0].model_copy(update={
            "variant_id": variant.id, "wall_s": 20.0, "decode_tokens": at_shape.device.decode_tokens,
            "prompts": [PromptTiming(prompt_tokens=512, ttft_ms=Stat.of([ttft] * 3), prefill_tps=Stat.of([2000.0] * 3))]})

    out = certify(recipe, rep, measure_round)
    rec = recommend(out, budget, Costs())
    if certified:
        assert measured == ["v0"] * 2 + ["v1"] * 2 + ["v2"] * 2 + ["v3"] * 2 and rec.pick == "v3"
        assert rec.certification.certified and "Certified: meets the budget in 2/2 fresh runs" in rec.message
    else:
        assert measured == ["v0"] * 2 + ["v1"] * 2 + ["v2"] * 2 and rec.pick == "v3" and rec.certification is None
        assert ("Not certified: the picks before it failed certification (m Q0, m Q1, m Q2), and the time for "
                "certifying (device.extra_time_s) ran out before its turn.") in rec.message
        assert certification_line(rec) == "Certification: none; the time for it ran out after m Q0, m Q1, m Q2 failed it"
