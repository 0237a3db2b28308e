"""Small pieces of the recommendation, each against figures worked out by hand: the noise margin (`shifted`,
`can_still_win`, `contenders`), one certification run checked against a budget (`check_run`), and the cheapest
edge variant a cloud fallback is priced against."""

from __future__ import annotations

import pytest

from tests.factories import FP_BARE as FP
from tests.factories import ladder_report
from tests.factories import repeats_report as report
from toolkit.io import content_hash
from toolkit.recipe import Budget, Costs
from toolkit.recommend.engine import budget_key, check_run, contenders, recommend
from toolkit.recommend.keys import budget_limits, certification_vetoes, pick_key
from toolkit.recommend.noise import can_still_win, shifted, within_reach
from toolkit.recommend.select import Limit, Option
from toolkit.records import Certification, CertRun, Profile, PromptTiming, Stat


def test_shifted_moves_every_timing_figure_the_better_way_and_nothing_else():
    o = Option(id="a", label="A", metrics={"ttft_ms": 100.0, "decode_tps": 50.0, "energy_j": 10.0, "cost_per_1k_usd": 0.02,
                                           "memory_mb": 300.0, "kl": 0.1, "perplexity": None},
               status="ok", reason="why", size_mb=42.0)
    better = shifted(o, 1.25)
    assert better.metrics == {"ttft_ms": 80.0, "decode_tps": 62.5, "energy_j": 8.0, "cost_per_1k_usd": 0.016,
                              "memory_mb": 300.0, "kl": 0.1, "perplexity": None}
    worse = shifted(o, 0.8)
    assert worse.metrics["ttft_ms"] == pytest.approx(125.0) and worse.metrics["decode_tps"] == pytest.approx(40.0)
    assert (better.id, better.label, better.status, better.reason, better.size_mb) == ("a", "A", "ok", "why", 42.0)
    assert o.metrics["ttft_ms"] == 100.0  # the original is left as it was
    crashed = shifted(Option(id="c", label="C", metrics={}, status="crash", reason="boom"), 2.0)
    assert (crashed.status, crashed.reason) == ("crash", "boom")


def _opt(vid: str, decode: float, status: str = "ok") -> Option:
    return Option(id=vid, label=vid, metrics={"ttft_ms": 100.0, "decode_tps": decode}, status=status)


def test_within_reach_keeps_measured_unvetoed_variants_that_meet_the_limits_with_timings_margin_better():
    limits = [Limit("decode_tps", 30.0, "min")]
    options = [_opt("meets", 40.0), _opt("near", 25.0), _opt("far", 14.0), _opt("vetoed", 50.0),
               _opt("crashed", 50.0, "crash"), _opt("incomplete", 50.0, "incomplete")]
    # near: 25 x 1.25 = 31.25 >= 30; far: 14 x 1.25 = 17.5 (it would take 14 x 2.25 = 31.5, a margin of 1.25)
    assert within_reach(options, limits, 0.25, {"vetoed": "failed certification"}) == {"meets", "near"}
    assert within_reach(options, limits, 0.25) == {"meets", "near", "vetoed"}
    assert within_reach(options, limits, 0.0) == {"meets", "vetoed"}
    assert within_reach(options, [], 0.0, {"meets": "x"}) == {"near", "far", "vetoed"}


def test_can_still_win_within_the_margin_past_a_failed_variant():
    # by hand, priority speed: b (45) beats a (50) when b is 25% faster (56.25) and a 25% slower (40); c (20) cannot
    options = [_opt("x", 0.0, status="crash"), _opt("a", 50.0), _opt("b", 45.0), _opt("c", 20.0)]
    assert can_still_win(options, [], "speed", 0.5, 0.25) == {"a", "b"}
    assert can_still_win(options, [], "speed", 0.5, 0.0) == {"a"}
    assert can_still_win(options, [], "speed", 0.5, 0.25, vetoes={"a": "failed certification"}) == {"b"}
    assert can_still_win(options, [Limit("decode_tps", 30.0, "min")], "speed", 0.5, 2.0) == {"a", "b", "c"}  # c: 20 x 3 = 60


def test_contenders_at_the_longest_prompt_and_without_vetoed_variants():
    rep = report({"ttft": [100] * 3, "decode": [50] * 3}, {"ttft": [105] * 3, "decode": [48] * 3},
                 {"ttft": [400] * 3, "decode": [12] * 3})
    budget, costs = Budget(priority="speed"), Costs()  # no ttft_prompt_tokens: the longest profiled prompt (512)
    assert contenders(rep, budget, costs, 0.25) == {"v0", "v1"}
    failed = Certification(variant_id="v0", budget_key=budget_key(budget, costs), prompt_tokens=512, output_tokens=128,
                           runs=[CertRun(status="crash", violations=[])])
    assert contenders(rep.model_copy(update={"certifications": [failed]}), budget, costs, 0.25) == {"v1"}
    other = Certification(variant_id="v0", budget_key="another budget", prompt_tokens=512, output_tokens=128,
                          runs=[CertRun(status="crash", violations=[])])
    assert contenders(rep.model_copy(update={"certifications": [other]}), budget, costs, 0.25) == {"v0", "v1"}
    assert contenders(rep.model_copy(update={"profiles": []}), budget, costs, 0.25) == set()


def _run(ttft: list[float], decode: list[float], mem: float, status: str = "ok") -> Profile:
    base = dict(key="v1", variant_id="v1", variant_name="m Q1", format="gguf", runtime="llama.cpp", device=FP,
                settings={}, file_size_mb=1)
    if status != "ok":
        return Profile(status=status, reason="killed", **base)
    return Profile(status="ok", load_ms=5, decode_tokens=128, peak_rss_mb=mem, **base,
                   prompts=[PromptTiming(prompt_tokens=512, ttft_ms=Stat.of(ttft), prefill_tps=Stat.of([512e3 / t for t in ttft]))],
                   decode_tps=Stat.of(decode), itl_ms=Stat.of([1000 / d for d in decode]))


def test_check_run_measures_one_fresh_run_against_the_budget():
    rep = report({"ttft": [100] * 3, "decode": [50] * 3, "kl": 0.01, "ppl": 12.0},
                 {"ttft": [110] * 3, "decode": [45] * 3, "kl": 0.02, "ppl": 13.0})
    budget = Budget(max_ttft_ms=200, min_decode_tps=40, max_memory_mb=400, max_kl=0.05)
    ok = check_run(rep, _run([150, 160, 170], [44, 46, 48], 350), budget, Costs(), 512)
    assert (ok.id, ok.status, ok.violations) == ("v1", "ok", [])
    # by hand: TTFT p90 of 150/160/270 is 160 + 0.8 x 110 = 248; decode p10 of 30/46/48 is 30 + 0.2 x 16 = 33.2
    bad = check_run(rep, _run([150, 160, 270], [30, 46, 48], 450), budget, Costs(), 512)
    assert bad.metrics["ttft_ms"] == pytest.approx(248.0) and bad.metrics["decode_tps"] == pytest.approx(33.2)
    assert bad.metrics["kl"] == 0.02 and bad.metrics["perplexity"] == 13.0  # the variant's fidelity comes along
    assert [" ".join(v.split()) for v in bad.violations] == [
        "TTFT p90 248.0 ms > 200 ms (over by 48.0 ms)", "decode (p10) 33.2 tok/s < 40 tok/s (under by 6.8 tok/s)",
        "deploy memory 450.0 MB > 400 MB (over by 50.0 MB)"]
    crashed = check_run(rep, _run([], [], 0, status="timeout"), budget, Costs(), 512)
    assert (crashed.status, crashed.violations) == ("timeout", [])


def test_the_fallback_is_priced_against_the_cheapest_measured_edge_variant():
    from toolkit.recommend.cloud import CloudModel

    rep = report({"ttft": [100] * 3, "decode": [50] * 3}, {"ttft": [100] * 3, "decode": [100] * 3})
    crashed = rep.profiles[1].model_copy(update={"status": "crash", "reason": "boom", "prompts": [], "decode_tps": None})
    rep = rep.model_copy(update={"profiles": [rep.profiles[0], crashed]})
    cloud = CloudModel(id="c", provider="P", model="m", usd_per_1m_input=0.1, usd_per_1m_output=0.4, ttft_ms=100, tokens_per_s=500)
    rec = recommend(rep, Budget(min_decode_tps=400), Costs(), [cloud])
    # by hand: v0 answers in 0.1 + 128 / 50 = 2.66 s at 20 W: 53.2 J, x 1000 / 3.6e6 x $0.25 = $0.0037 per 1,000
    assert rec.answer == "cloud" and "the cheapest edge variant, m Q0, would cost $0.0037" in rec.message
    unpowered = report({"ttft": [100] * 3, "decode": [50] * 3}, {"ttft": [90] * 3, "decode": [60] * 3})
    rec = recommend(unpowered.model_copy(update={"power": None}), Budget(min_decode_tps=400), Costs(), [cloud])
    assert rec.answer == "cloud" and "cheapest edge variant" not in rec.message  # no energy, no edge price


def test_select_takes_vetoes_and_says_why_the_pick_won():
    from toolkit.recommend.select import select

    options = [_opt("a", 50.0), _opt("b", 45.0)]
    pick = select(options, [], "speed", 0.5, vetoes={"a": "failed certification: met the budget in 2/3 fresh runs"})
    assert pick is options[1] and options[1].verdict == "PICK: best speed in budget"
    assert options[0].verdict == "breaks the budget: failed certification: met the budget in 2/3 fresh runs"
    again = [_opt("a", 50.0), _opt("b", 45.0)]
    assert select(again, [], "memory", 0.5) is again[0]  # no memory figures: then the faster decode
    assert again[0].verdict == "PICK: best memory in budget" and again[1].verdict == "dominated by a (faster decode)"


def test_table_cells():
    from toolkit.recommend.metrics import cell, fmt

    assert (fmt(None), fmt(1234.567), fmt(1234.567, 0), fmt(0.5, 3)) == ("-", "1,234.6", "1,235", "0.500")
    assert (cell("memory_mb", 1401.84), cell("kl", 0.012345), cell("cost_per_1k_usd", None)) == ("1,402", "0.0123", "-")


def test_cloud_rows_price_a_response_and_check_the_clouds_limits():
    from toolkit.recommend.cloud import CloudModel

    rep = report({"ttft": [100] * 3, "decode": [50] * 3})
    cheap = CloudModel(id="cheap", provider="A", model="small", usd_per_1m_input=0.1, usd_per_1m_output=0.4, ttft_ms=300,
                       tokens_per_s=100, rtt_ms=50)
    dear = cheap.model_copy(update={"id": "dear", "usd_per_1m_input": 10.0, "usd_per_1m_output": 40.0})
    rec = recommend(rep, Budget(max_cost_per_1k_usd=0.5, max_memory_mb=1), Costs(), [cheap, dear])
    rows = {r.id: r for r in rec.cloud_rows}
    # by hand, 512 prompt + 128 output tokens: (512 x 0.1 + 128 x 0.4) / 1e6 = $0.0001024 per response
    assert rows["cheap"].cost_per_1k_usd == pytest.approx(0.1024) and rows["dear"].cost_per_1k_usd == pytest.approx(10.24)
    assert rows["cheap"].response_s == 1.63 and rows["cheap"].ttft_ms == 350  # 0.35 s + 128 / 100
    assert rows["cheap"].violations == []  # memory is the device's: not a cloud limit
    assert [" ".join(v.split()) for v in rows["dear"].violations] == [
        "cost per 1,000 responses 10.2400 USD > 0.5 USD (over by 9.7400 USD)"]
    assert rec.answer == "cloud" and rec.cloud_pick == "cheap" and "Cloud fallback: A small at $0.1024" in rec.message
    odd = cheap.model_copy(update={"id": "odd", "usd_per_1m_input": 0.123456, "tokens_per_s": 70})
    (row,) = recommend(rep, Budget(), Costs(), [odd]).cloud_rows
    # by hand: (512 x 0.123456 + 128 x 0.4) / 1e6 x 1000 = 0.114409472; 0.35 s + 128 / 70 s = 2.178571
    assert (row.cost_per_1k_usd, row.response_s) == (0.114409, 2.179)


def test_messages_of_each_answer():
    from toolkit.errors import UserError
    from toolkit.recommend.cloud import CloudModel
    from toolkit.recommend.engine import certified_line

    rep = report({"ttft": [100] * 3, "decode": [50] * 3}, {"ttft": [200] * 3, "decode": [40] * 3})
    rec = recommend(rep, Budget(), Costs())
    # by hand: 0.1 + 128 / 50 = 2.66 s at 20 W = 53.2 J; x 1000 / 3.6e6 x $0.25 = $0.0037 per 1,000
    assert rec.message.startswith("Run m Q0 on cpu (2 threads): 53.2 J and $0.0037 per 1,000 responses. Not certified")
    rec = recommend(rep.model_copy(update={"power": None}), Budget(), Costs())
    assert "Run m Q0 on cpu (2 threads): energy and cost unknown (no RAPL, no device.power in the recipe)." in rec.message
    assert certified_line(None) == "Not certified for this budget (`toolkit profile` re-measures the pick for the recipe's budget)."
    with pytest.raises(UserError) as caught:
        recommend(rep.model_copy(update={"profiles": []}), Budget(), Costs())
    assert caught.value.one_line() == "the device report holds no successful profile; nothing to recommend from"
    none = recommend(rep, Budget(max_ttft_ms=50, min_decode_tps=45), Costs(), [])
    assert none.answer == "none" and none.mixed is None  # no cloud at all: nothing mixed either
    assert " ".join(none.message.split()) == (
        "No variant meets the budget on this device (closest is m Q0: TTFT p90 100.0 ms > 50 ms (over by 50.0 ms)), "
        "and no cloud option does either.")
    both = recommend(rep, Budget(max_ttft_ms=50, min_decode_tps=60), Costs(), [])
    assert "(closest is m Q0: TTFT p90 100.0 ms > 50 ms (over by 50.0 ms); decode (p10) 50.0 tok/s < 60" in " ".join(both.message.split())
    crashed = rep.model_copy(update={"profiles": [p.model_copy(update={"status": "crash", "reason": "boom"}) for p in rep.profiles]})
    cloud = CloudModel(id="c", provider="P", model="m", usd_per_1m_input=0.1, usd_per_1m_output=0.4, ttft_ms=100, tokens_per_s=500)
    gone = recommend(crashed, Budget(), Costs(), [cloud])
    assert gone.answer == "cloud" and gone.message.startswith(
        "No edge variant meets the budget (no variant was measured successfully). Cloud fallback: P m at $")
    untimed = crashed.model_copy(update={"profiles": [p.model_copy(update={"prompts": []}) for p in crashed.profiles]})
    with pytest.raises(UserError):  # nothing timed and no prompt length to price the cloud at
        recommend(untimed, Budget(), Costs(), [cloud])
    gone = recommend(untimed, Budget(), Costs(), [cloud], recipe_prompt=512)  # the recipe's (toolkit run, recommend)
    assert gone.answer == "cloud" and gone.prompt_tokens == 512 and "(no variant was measured successfully)" in gone.message
    why = "not measured further: KL divergence 0.0826 nats > 0.05 nats (over by 0.0326 nats) at least"
    ruled = untimed.model_copy(update={"profiles": [p.model_copy(update={"status": "skipped", "reason": why})
                                                    for p in untimed.profiles]})
    gone = recommend(ruled, Budget(), Costs(), [cloud], recipe_prompt=512)  # every variant broke the budget's KL
    assert gone.answer == "cloud" and f"No edge variant meets the budget (none was timed; m Q0: {why})" in gone.message
    assert all(r.verdict.startswith(why) for r in gone.rows)


def test_the_mixed_answer_takes_the_longest_prompt_the_edge_can_serve():
    from toolkit.recommend.cloud import CloudModel

    rep = report({"ttft": [100] * 3, "decode": [50] * 3})
    timings = {64: 50.0, 256: 200.0, 512: 800.0}
    prof = rep.profiles[0]
    prompts = [prof.prompts[0].model_copy(update={"prompt_tokens": n, "ttft_ms": Stat.of([t] * 3)}) for n, t in timings.items()]
    rep = rep.model_copy(update={"profiles": [prof.model_copy(update={"prompts": prompts})]})
    cloud = CloudModel(id="c", provider="P", model="small", usd_per_1m_input=0.1, usd_per_1m_output=0.4, ttft_ms=100,
                       tokens_per_s=500)
    rec = recommend(rep, Budget(max_ttft_ms=300, ttft_prompt_tokens=512), Costs(), [cloud])
    assert rec.answer == "mixed" and rec.mixed.max_prompt_tokens == 256
    assert rec.mixed.rule == "prompts up to 256 tokens on m Q0 (edge), longer prompts to P small"
    assert rec.message.startswith("No edge variant meets the budget (closest is m Q0: TTFT p90 800.0 ms > 300 ms")
    assert rec.message.endswith("Mixed: prompts up to 256 tokens on m Q0 (edge), longer prompts to P small.")
    assert rec.cloud_pick == "c" and rec.ruled_out_by == ["TTFT p90 800.0 ms > 300 ms (over by 500.0 ms)"]
    alone = recommend(rep, Budget(max_ttft_ms=300, ttft_prompt_tokens=512), Costs(), [])
    assert alone.answer == "none" and alone.mixed is None  # no cloud for the longer prompts: nothing mixed


def test_usd_has_four_decimals_below_a_dollar_and_cents_above():
    from toolkit.recommend.engine import _usd

    assert [_usd(v) for v in (0.0036, 0.99999, 1.0, 1.5, 1234.5)] == ["$0.0036", "$1.0000", "$1.00", "$1.50", "$1,234.50"]


def test_the_named_dominator_is_the_best_on_the_front_and_its_edges_are_listed():
    from toolkit.recommend.select import select

    # a1 and z9 are both on the front (a1 lower TTFT, z9 faster decode) and both dominate o; U by hand, alpha 0.5:
    # a1: 0.5 + 0.5 x (10/30 + 10/10) / 2 = 0.8333; z9: 0.5 + 0.5 x (30/30 + 10/20) / 2 = 0.875: o names z9
    a1 = Option(id="a1", label="a1", metrics={"ttft_ms": 10.0, "decode_tps": 10.0})
    z9 = Option(id="z9", label="z9", metrics={"ttft_ms": 20.0, "decode_tps": 30.0})
    o = Option(id="o", label="o", metrics={"ttft_ms": 30.0, "decode_tps": 5.0})
    select([a1, z9, o], [], "speed", 0.5)
    assert (round(a1.utility, 4), round(z9.utility, 4)) == (0.8333, 0.875)
    assert o.dominated_by == "z9" and o.verdict == "dominated by z9 (lower TTFT, faster decode)"
    a1.utility, z9.utility = 0.9, 0.875  # the higher utility wins the name, whatever the ids
    from toolkit.recommend.select import _dominator, shared_objectives

    assert _dominator(o, [a1, z9, o], shared_objectives([a1, z9, o])) == "a1"
    same = Option(id="p", label="p", metrics={"ttft_ms": 40.0, "decode_tps": 30.0})  # equal decode: not an edge
    select([z9, same], [], "speed", 0.5)
    assert same.verdict == "dominated by z9 (lower TTFT)"


def test_the_recommendation_record_carries_every_row_figure():
    from toolkit.errors import UserError

    rep = report({"ttft": [100] * 3, "decode": [50] * 3, "kl": 0.01, "mb": 2.0},
                 {"ttft": [300] * 3, "decode": [20] * 3, "kl": 0.02, "mb": 1.0})
    note = "ONNX int8 from an HF reference that transformers dequantized from m.gguf"
    v0 = rep.variants[0].model_copy(update={"bits_per_weight": 4.5, "notes": [note, "another note"]})
    crashed = rep.profiles[1].model_copy(update={"status": "crash", "reason": "boom", "rounds": 3})
    rep = rep.model_copy(update={"variants": [v0, rep.variants[1]], "profiles": [rep.profiles[0].model_copy(update={"rounds": 2}),
                                                                               crashed]})
    rec = recommend(rep, Budget(priority="pcr"), Costs(electricity_usd_per_kwh=0.25, device_usd_per_hour=0.0))
    first, second = rec.rows
    assert (first.model, first.format, first.quant, first.size_mb, first.bits_per_weight) == ("m", "gguf", "Q0", 2.0, 4.5)
    assert (first.rounds, second.rounds) == (2, 0)  # a failed profile's rounds are not the variant's measurements
    assert (second.status, second.utility, second.win_probability) == ("crash", None, None)
    assert first.utility == 1.0 and first.win_probability == 1.0
    # PCR = U / cost per 1,000: 53.2 J (0.1 + 128/50 s at 20 W) x 1000 / 3.6e6 x $0.25 = $0.0036944 -> 270.677
    assert first.pcr == pytest.approx(1.0 / (53.2 * 1000 / 3.6e6 * 0.25), abs=1e-3)
    assert rec.notes == [f"Reference weights: {note}."] and rec.device == "h-dev1: cpu, 2 threads"
    assert rec.objectives == ["ttft_ms", "decode_tps", "memory_mb", "perplexity", "energy_j", "cost_per_1k_usd"]
    dominated = recommend(report({"ttft": [100] * 3, "decode": [50] * 3}, {"ttft": [300] * 3, "decode": [20] * 3}), Budget(), Costs())
    assert dominated.rows[1].dominated_by == "v0" and dominated.rows[0].dominated_by is None
    with pytest.raises(UserError) as caught:
        recommend(rep, Budget(ttft_prompt_tokens=128), Costs())
    assert (caught.value.field, caught.value.message) == ("budget.ttft_prompt_tokens", "no TTFT measured at 128 tokens (measured: [512])")


def test_a_certification_is_for_the_limits_shape_and_prices_not_the_priority():
    b, c = Budget(max_ttft_ms=200, ttft_prompt_tokens=512), Costs()
    key = budget_key(b, c)
    assert key == budget_key(b.model_copy(update={"priority": "speed", "alpha": 0.9}), c)
    assert key != budget_key(b.model_copy(update={"max_ttft_ms": 300}), c)
    assert key != budget_key(b.model_copy(update={"output_tokens": 64}), c)
    assert key != budget_key(b, c.model_copy(update={"electricity_usd_per_kwh": 0.3}))


def test_a_pick_is_kept_for_the_whole_budget_and_the_prices():
    b, c = Budget(max_ttft_ms=200, ttft_prompt_tokens=512), Costs()
    key = pick_key(b, c)
    assert key == pick_key(Budget(max_ttft_ms=200, ttft_prompt_tokens=512), Costs())  # the same inputs: the same key
    assert key != budget_key(b, c)  # the pick's key holds the priority too
    for change in ({"priority": "speed"}, {"alpha": 0.9}, {"max_ttft_ms": 300}, {"output_tokens": 64}):
        assert key != pick_key(b.model_copy(update=change), c), change
    assert key != pick_key(b, c.model_copy(update={"device_usd_per_hour": 0.1}))
    # the keys stored in earlier device reports stay valid: the same hash as the JSON form of the budget and prices
    assert key == content_hash(b.model_dump(mode="json"), c.model_dump(mode="json"))


def test_only_a_failed_certification_for_this_budget_vetoes_and_it_names_the_first_failed_run():
    rep = report({"ttft": [100] * 3, "decode": [50] * 3}, {"ttft": [105] * 3, "decode": [48] * 3})
    ok, slow = CertRun(status="ok"), CertRun(status="ok", violations=["TTFT p90 250 ms > 200 ms", "decode p10 9 < 10"])
    certs = [Certification(variant_id="v0", budget_key="k", prompt_tokens=512, output_tokens=128, runs=[ok, slow, CertRun(status="crash")]),
             Certification(variant_id="v1", budget_key="k", prompt_tokens=512, output_tokens=128, runs=[ok, ok]),
             Certification(variant_id="v1", budget_key="other", prompt_tokens=512, output_tokens=128, runs=[CertRun(status="oom")])]
    vetoes = certification_vetoes(rep.model_copy(update={"certifications": certs}), "k")
    assert vetoes == {"v0": "failed certification: met the budget in 1/3 fresh runs (TTFT p90 250 ms > 200 ms; decode p10 9 < 10)"}
    crashed = certs[2].model_copy(update={"budget_key": "k"})
    assert certification_vetoes(rep.model_copy(update={"certifications": [crashed]}), "k") == {
        "v1": "failed certification: met the budget in 0/1 fresh runs (oom)"}


def test_budget_limits_are_the_budgets_set_fields_each_with_its_metric_and_direction():
    budget = Budget(max_ttft_ms=200, min_decode_tps=10, max_memory_mb=512, min_accuracy=0.3, output_tokens=64)
    got = {(lim.metric, lim.bound, lim.kind) for lim in budget_limits(budget)}
    assert got == {("ttft_ms", 200, "max"), ("decode_tps", 10, "min"), ("memory_mb", 512, "max"),
                   ("accuracy", 0.3, "min")}
    assert [lim.metric for lim in budget_limits(budget, {"memory_mb", "accuracy"})] == ["memory_mb", "accuracy"]
    assert budget_limits(Budget()) == [] and budget_limits(budget, set()) == []


def test_an_edge_pick_names_the_cheapest_cloud_that_also_meets_the_budget_and_vetoes_reach_the_bootstrap():
    from toolkit.recommend.cloud import CloudModel

    rep = report({"ttft": [100] * 3, "decode": [50] * 3, "kl": 0.01}, {"ttft": [100, 101, 102], "decode": [49, 50, 51], "kl": 0.02})
    cloud = CloudModel(id="c", provider="P", model="small", usd_per_1m_input=0.1, usd_per_1m_output=0.4, ttft_ms=100,
                       tokens_per_s=500)
    rec = recommend(rep, Budget(), Costs(), [cloud])
    assert rec.answer == "edge" and rec.cloud_pick is None and rec.message.endswith(" Cheapest cloud meeting the budget: P small.")
    assert " Cheapest cloud" not in recommend(rep, Budget(), Costs(), []).message
    budget, costs = Budget(priority="speed"), Costs()
    failed = Certification(variant_id="v0", budget_key=budget_key(budget, costs), prompt_tokens=512, output_tokens=128,
                           runs=[CertRun(status="crash", violations=[])])
    vetoed = recommend(rep.model_copy(update={"certifications": [failed]}), budget, costs)
    assert vetoed.pick == "v1" and {r.variant_id: r.win_probability for r in vetoed.rows} == {"v0": 0.0, "v1": 1.0}


def test_a_variant_missing_a_quality_figure_is_set_aside_with_each_reason_spelled_out():
    """Four variants, one with every figure; the others each lack some, for a different reason. Every reason
    text below is written by hand from the records."""
    from toolkit.recommend.options import options_at
    from toolkit.recommend.select import RULED_OUT
    from toolkit.records import EvalResult, Quality

    rep = report(*({"ttft": [100, 110, 120], "decode": [50, 52, 54]} for _ in range(5)))
    base = dict(corpus="c", corpus_sha256="0", ctx=512, chunks=1)
    rep.quality = [Quality(key="q0", variant_id="v0", status="ok", perplexity=30, kl_mean=0.01, **base),
                   Quality(key="q1", variant_id="v1", status="ok", perplexity=31, **base),  # scored, no KL
                   Quality(key="q2", variant_id="v2", status="crash", reason="boom", **base),  # v3: never scored
                   Quality(key="q4", variant_id="v4", status="oom", **base)]  # failed without a reason

    def acc(vid: str, task: str, status: str = "ok", reason: str | None = None) -> EvalResult:
        return EvalResult(key=f"{vid}{task}", variant_id=vid, task=task, status=status, reason=reason,
                          value=0.5 if status == "ok" else None, runtime="llama.cpp")
    skip = RULED_OUT + "decode (p10) 9 tok/s < 10"
    rep.accuracy = [acc("v0", "a"), acc("v0", "b"),
                    acc("v1", "a", "skipped", skip), acc("v1", "b", "skipped", skip),
                    acc("v2", "a", "crash", "exit code 1"), acc("v2", "b", "timeout"),
                    acc("v3", "a", "timeout"), acc("v4", "a"), acc("v4", "b")]
    options, _ = options_at(rep, 512, 128, Costs())
    assert [(o.status, o.reason) for o in options] == [
        ("ok", None),
        ("incomplete", "KL divergence not measured (no reference to compare with); " + skip),
        ("incomplete", "perplexity and KL divergence not measured (fidelity crash: boom); "
                       "mean accuracy not measured (a: crash - exit code 1; b: timeout)"),
        ("incomplete", "perplexity and KL divergence not measured (fidelity not scored); mean accuracy not measured (a: timeout)"),
        ("incomplete", "perplexity and KL divergence not measured (fidelity oom)"),
    ]
    rep.accuracy = [r for r in rep.accuracy if r.variant_id != "v3"]  # v3 has no accuracy record at all
    options, _ = options_at(rep, 512, 128, Costs())
    assert options[3].reason.endswith("mean accuracy not measured (not evaluated on every task)")


def test_variants_not_built_for_one_reason_share_one_note():
    from tests.factories import ladder_report
    from toolkit.records import BuildFailure

    rep = ladder_report([(50, 400, 60, 300, 12.0)])
    rep.not_built = [BuildFailure(model="phi", format="gguf", quant=q, reason="no tokenizer.model") for q in ("F16", "Q8_0")]
    rep.not_built += [BuildFailure(model="phi", format="onnx", quant="int4", reason="KeyError"),
                      BuildFailure(model="qwen", format="gguf", quant="Q8_0", reason="no tokenizer.model")]
    notes = [n for n in recommend(rep, Budget(), Costs()).notes if n.startswith("Not built")]
    assert notes == ["Not built: phi gguf F16, Q8_0: no tokenizer.model", "Not built: phi onnx int4: KeyError",
                     "Not built: qwen gguf Q8_0: no tokenizer.model"]


def test_a_model_asked_past_its_trained_context_is_noted_with_each_length_that_goes_past_it():
    from tests.factories import ladder_report
    from toolkit.recommend.notes import context_notes

    rep = ladder_report([(50, 400, 60, 300, 12.0), (40, 300, 80, 200, 13.0)])  # profiled at 64 and 512 tokens
    rep.variants[0].details["context_length"] = 2048
    rep.variants[1].details["context_length"] = 512  # the same model "m": its shortest file counts
    assert context_notes(rep, 512 + 128) == [
        "Context: m was trained on 512 tokens; responses of 640 tokens (the budget's prompt + output) go past it "
        "(speed is measured there, quality there is not what the model was trained for)."]
    rep.quality[0].ctx = 1024
    assert "prompts" not in context_notes(rep, 100)[0] and "fidelity windows of up to 1,024 tokens" in context_notes(rep, 100)[0]
    rep.variants[1].details["context_length"] = 256  # past it: the response, the 512-token prompt, the windows
    assert context_notes(rep, 300) == [
        "Context: m was trained on 256 tokens; responses of 300 tokens (the budget's prompt + output), prompts of "
        "512 tokens, fidelity windows of up to 1,024 tokens go past it (speed is measured there, quality there is not "
        "what the model was trained for)."]
    assert context_notes(rep.model_copy(update={"profiles": [], "quality": []}), 300)[0].startswith(
        "Context: m was trained on 256 tokens; responses of 300 tokens (the budget's prompt + output) go past it")
    rep.variants[1].details["context_length"] = 4096
    assert context_notes(rep, 640) == []  # 2,048 trained: nothing goes past
    del rep.variants[0].details["context_length"], rep.variants[1].details["context_length"]
    assert context_notes(rep, 10**6) == []  # the files did not say: nothing to flag
    assert any(n.startswith("Context: m was trained on 2,048") for n in recommend(
        ladder_report([(50, 400, 60, 300, 12.0)]).model_copy(update={"variants": [
            rep.variants[0].model_copy(update={"details": {"context_length": 2048}})]}),
        Budget(output_tokens=2000), Costs()).notes)


def test_the_record_rounds_its_figures_and_names_the_device_and_the_rules_behind_the_answer():
    from toolkit.recommend.cloud import CloudModel

    rep = report({"ttft": [100, 105, 112], "decode": [50, 52, 55], "kl": 0.03, "mb": 1.26, "ppl": 31},
                 {"ttft": [160, 170, 175], "decode": [40, 41, 43], "kl": 0.011, "mb": 2.0, "ppl": 29.5})
    rep = rep.model_copy(update={"device": rep.device.model_copy(update={"id": "abcdef0123"})})
    rec = recommend(rep, Budget(priority="balanced"), Costs())
    assert rec.device == "h-abcd: cpu, 2 threads"  # the device id's first 4 characters
    first = rec.rows[0]
    # U = 0.9758064516..., PCR = 273.7461431... (the engine's own figures), sizes in MiB to 0.1
    assert (first.size_mb, first.utility, first.pcr) == (1.3, 0.9758, 273.746)
    assert rec.pick == "v0" and rec.tied_with == [] and rec.tie_equivalence is None  # no tie: no equivalence share
    assert rec.message.endswith("(`toolkit profile` re-measures the pick for the recipe's budget).")  # no cloud named
    objectives = ["ttft_ms", "decode_tps", "memory_mb", "perplexity", "energy_j", "cost_per_1k_usd"]
    assert rec.objectives == objectives
    none = recommend(rep, Budget(max_ttft_ms=10), Costs(), [])
    assert none.objectives == objectives  # nothing in budget: every option's shared objectives
    assert none.ruled_out_by == ["TTFT p90 110.6 ms > 10 ms (over by 100.6 ms)"]
    cloud = CloudModel(id="c1", provider="P", model="big", usd_per_1m_input=0.1, usd_per_1m_output=0.4, ttft_ms=20, tokens_per_s=500)
    unpowered = rep.model_copy(update={"power": None})  # no energy figure: no edge cost to compare with
    fallback = recommend(unpowered, Budget(max_ttft_ms=60), Costs(), [cloud])
    assert fallback.answer == "cloud" and fallback.message.endswith(" per 1,000 responses.")
    assert [(c.id, c.provider, c.model) for c in fallback.cloud_rows] == [("c1", "P", "big")]


def test_options_details_and_status_from_the_records_by_hand():
    from toolkit.profiling.roofline import Roofline
    from toolkit.recommend.options import options_at
    from toolkit.records import EvalResult

    rep = report({"ttft": [100.0, 105.123, 110.45375], "decode": [50.0, 51.111, 52.5], "mb": 64},
                 {"ttft": [200.0] * 3, "decode": [40.0] * 3}, {"ttft": [300.0] * 3, "decode": [30.0] * 3})
    rep.quality[0].top1_agreement = 0.875
    rep.profiles[1] = rep.profiles[1].model_copy(update={"status": "crash", "reason": "boom"})
    rep.profiles[2] = rep.profiles[2].model_copy(update={"prompts": []})  # measured, but not at this prompt length
    rep.accuracy = [EvalResult(key="a", variant_id="v0", task="t1", status="ok", value=0.5, runtime="llama.cpp"),
                    EvalResult(key="b", variant_id="v0", task="t2", status="timeout", runtime="llama.cpp"),
                    EvalResult(key="c", variant_id="v1", task="t3", status="ok", value=0.7, runtime="llama.cpp")]
    rep.variants[0] = rep.variants[0].model_copy(update={"n_params": 10_000_000, "details": {"embedding_params": 2_000_000}})
    rep.roofline = Roofline(bandwidth_gbs=6.4, gflops=16.0, threads=2)
    rep.power = rep.power.model_copy(update={"busy_w": 17.3456})
    options, details = options_at(rep, 512, 128, Costs())
    # numpy's linear percentiles of the repeats: TTFT p90 = 105.123 + 0.8 x 5.33075 = 109.3876; decode p10 = 50.2222
    assert (options[0].metrics["ttft_ms"], options[0].metrics["decode_tps"]) == (109.39, 50.22)
    d = details["v0"]
    # the recipe's busy power, 17.3456 W, to 2 decimals; predictions: 6.4e9 / 64 MiB and 16e9 / (2 x 8M)
    assert (d["watts"], d["top1_agreement"], d["acc_t1"]) == (17.35, 0.875, 0.5) and "acc_t2" not in d and "acc_t3" not in d
    assert (d["predicted_decode_tps"], d["predicted_prefill_tps"]) == (round(6.4e9 / 2**26, 1), 1000.0)
    assert [(o.status, o.reason, o.model) for o in options] == [("ok", None, "m"), ("crash", "boom", "m"), ("skipped", None, "m")]
    assert "predicted_decode_tps" in details["v1"] and "predicted_prefill_tps" not in details["v1"]  # no parameter count
    rep.quality[0].status = "crash"  # a failed fidelity record: no top-1 figure
    assert options_at(rep, 512, 128, Costs())[1]["v0"]["top1_agreement"] is None


def test_figures_missing_for_one_reason_are_named_together():
    from toolkit.recommend.options import _listed

    assert [_listed(n) for n in (["a"], ["a", "b"], ["a", "b", "c"])] == ["a", "a and b", "a, b and c"]


def test_report_notes_name_reference_weights_cross_model_quality_and_pooled_reports():
    from tests.factories import ladder_report
    from toolkit.recommend.notes import report_notes

    rep = ladder_report([(50, 400, 60, 300, 12.0), (40, 300, 80, 200, 13.0), (45, 350, 70, 250, 9.0)])
    assert report_notes(rep, 64, 64) == []  # one model, nothing dequantized, nothing failed, one report
    rep.variants[0].notes = ["reference from weights dequantized from Q4_1", "built in 3 s"]
    rep.variants[1].notes = ["reference from weights dequantized from Q4_1"]  # the same note once
    rep.variants[2].model = "g"
    rep.variants[2].source_sha256 = "g's own weights"  # another model, another file (else: the same-weights note)
    rep.quality[0].status = "failed"
    rep.quality[0].bytes_scored = 999  # a failed row's count is not the text scored
    rep.quality[1].bytes_scored = 12345
    rep.quality[1].corpus = "flores"  # the text that row scored
    rep.merged_from = ["a.json", "b.json"]
    assert report_notes(rep, 64, 64) == [
        "Reference weights: reference from weights dequantized from Q4_1.",
        "Quality across models (g, m): bits per byte on the same 12,345 bytes of flores and accuracy on the same items; "
        "perplexity is per token of each model's own tokenizer and KL is to each model's own reference, so neither "
        "compares across models.",
        "One device in 2 reports (same id): repeats pooled from a.json, b.json.",
    ]
    rep.quality[1].bytes_scored = 0
    assert report_notes(rep, 64, 64)[1].startswith("Quality across models (g, m): bits per byte on the same text and")


def test_a_cost_priority_without_any_cost_says_what_ranked_the_variants_instead():
    rows = [(100, 400, 50, 300, 10.0), (120, 450, 60, 200, 10.5)]
    for priority, instead in (("pcr", "utility U"), ("cost", "decode speed")):
        bare = recommend(ladder_report(rows, power=None), Budget(priority=priority))
        assert f"Priority '{priority}' ranks by cost per response" in " ".join(bare.notes)
        assert any(n.endswith(f"ranked by {instead} instead.") for n in bare.notes), bare.notes
        priced = recommend(ladder_report(rows), Budget(priority=priority))  # a power model: costs, no such note
        assert not any(n.startswith("Priority ") for n in priced.notes)
    assert not any(n.startswith("Priority ") for n in recommend(ladder_report(rows, power=None), Budget()).notes)
    capped = recommend(ladder_report(rows, power=None), Budget(max_energy_j=100))  # a limit nothing here can check
    assert capped.answer != "edge" and capped.ruled_out_by == [
        "energy per response not measured (no energy meter read here, and no device.power in the recipe to estimate it from)"]


def test_more_threads_than_cpus_is_named_in_the_notes_and_at_profile_time(tmp_path, monkeypatch, capsys):
    """A recipe written for a 4-core Pi (device.threads 4) profiled on 2 CPUs measures threads waiting for cores."""
    import importlib

    from tests.conftest import write_recipe
    from tests.factories import FP_BARE
    from toolkit.recipe import load_recipe
    from toolkit.records import Manifest

    stage = importlib.import_module("toolkit.pipeline.profile")  # the module; toolkit.pipeline.profile is its function

    rep = report({"ttft": [100] * 3, "decode": [50] * 3})
    assert not any(n.startswith("Threads:") for n in recommend(rep, Budget(), Costs()).notes)  # 2 threads, 2 CPUs
    over = rep.model_copy(update={"device": FP_BARE.model_copy(update={"threads_used": 4})})
    [note] = [n for n in recommend(over, Budget(), Costs()).notes if n.startswith("Threads:")]
    assert note.startswith("Threads: device.threads 4 is more than the 2 CPUs this process may use")
    recipe = load_recipe(write_recipe(tmp_path / "pi.yaml", f"""
        name: pi
        workspace: {tmp_path / 'ws'}
        candidates: [{{model: smollm2-135m-instruct}}]
        device: {{threads: 4}}
        """))
    monkeypatch.setattr(stage, "load_manifest", lambda r: Manifest(recipe="pi", variants=rep.variants))
    monkeypatch.setattr(stage, "device_fingerprint", lambda r: over.device)
    monkeypatch.setattr(stage, "check_offload", lambda *a: (_ for _ in ()).throw(RuntimeError("stop here")))
    with pytest.raises(RuntimeError, match="stop here"):
        stage.profile(recipe)
    assert f"warning: {tmp_path / 'pi.yaml'}: device.threads 4 is more than the 2 CPUs" in capsys.readouterr().err
