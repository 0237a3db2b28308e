"""Every budget limit, through `recommend`, on a synthetic report whose repeats spread, so that the
conservative figure a limit is checked against (TTFT p90, decode p10) differs from the median.

Each case has a variant A that is the pick without the limit and breaks it, and a variant B that meets it:
with the limit the pick moves to B, and A's verdict names the metric with a value computed here by hand
(numpy's percentile for p10/p90, the README's energy and cost formulas for the rest)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from toolkit.recipe import Budget, Costs
from toolkit.recommend.engine import recommend
from toolkit.records import (
    DeviceFingerprint,
    DevicePower,
    DeviceReport,
    EvalResult,
    Profile,
    PromptTiming,
    Quality,
    Stat,
    Variant,
)

FP = DeviceFingerprint(id="dev1", hostname="h", cpu_model="cpu", physical_cores=2, logical_cpus=2, threads_used=2,
                       ram_mb=1000, os="Linux", python="3.11", runtimes={})
BUSY_W = 20.0
OUTPUT_TOKENS = 128  # Budget's default response length


@dataclass
class V:
    """One variant's measurements: TTFT repeats at 512 prompt tokens, decode repeats, and the fixed figures."""

    ttft: list[float] = field(default_factory=lambda: [700.0, 720.0, 740.0])
    decode: list[float] = field(default_factory=lambda: [40.0, 41.0, 42.0])
    memory: float = 400.0
    ppl: float = 11.0
    bpb: float = 1.0
    kl: float = 0.05
    acc: float | None = None


def report(a: V, b: V) -> DeviceReport:
    variants, profiles, quality, accuracy = [], [], [], []
    for vid, v in (("A", a), ("B", b)):
        variants.append(Variant(id=vid, label=vid, model="m", format="gguf", runtime="llama.cpp", quant=vid, path="/x",
                                size_bytes=1 << 20, sha256="0", source="s", source_sha256="0", seconds=0, tools={}))
        profiles.append(Profile(
            key=vid, variant_id=vid, variant_name=vid, format="gguf", runtime="llama.cpp", device=FP, status="ok",
            settings={}, file_size_mb=1, load_ms=10, decode_tokens=OUTPUT_TOKENS, peak_rss_mb=v.memory,
            prompts=[PromptTiming(prompt_tokens=512, ttft_ms=Stat.of(v.ttft), prefill_tps=Stat.of([512e3 / t for t in v.ttft]))],
            decode_tps=Stat.of(v.decode), itl_ms=Stat.of([1000 / d for d in v.decode]),
        ))
        quality.append(Quality(key=vid, variant_id=vid, status="ok", corpus="c", corpus_sha256="0", ctx=512, chunks=1,
                               perplexity=v.ppl, bits_per_byte=v.bpb, kl_mean=v.kl))
        if v.acc is not None:
            accuracy.append(EvalResult(key=vid, variant_id=vid, task="t", status="ok", metric="acc", value=v.acc, n=100,
                                       runtime="llama.cpp"))
    return DeviceReport(recipe="r", created="now", toolkit_version="0", device=FP, power=DevicePower(idle_w=5, busy_w=BUSY_W),
                        variants=variants, profiles=profiles, quality=quality, accuracy=accuracy)


def p90(values: list[float]) -> float:
    return float(np.percentile(values, 90))  # numpy's default (linear) interpolation


def p10(values: list[float]) -> float:
    return float(np.percentile(values, 10))


def response_s(v: V) -> float:
    """README: response time = TTFT median + output tokens / decode median."""
    return float(np.median(v.ttft)) / 1000 + OUTPUT_TOKENS / float(np.median(v.decode))


def energy_j(v: V) -> float:
    return BUSY_W * response_s(v)  # no RAPL: the recipe's busy power times the response time


def cost_per_1k(v: V, costs: Costs) -> float:
    kwh = energy_j(v) / 3.6e6
    return 1000 * (kwh * costs.electricity_usd_per_kwh + costs.device_usd_per_hour * response_s(v) / 3600)


# A's repeats spread: its median meets the limit, its conservative figure does not.
SPREAD_TTFT = [540.0, 600.0, 900.0]  # median 600, p90 = 600 + 0.8 * 300 = 840
SPREAD_DECODE = [20.0, 50.0, 52.0]  # median 50, p10 = 20 + 0.2 * 30 = 26
FAST = dict(ttft=[300.0, 310.0, 320.0], decode=[80.0, 81.0, 82.0])  # A fastest on every figure
SLOW = dict(ttft=[700.0, 720.0, 740.0], decode=[20.0, 20.5, 21.0])
COSTS = Costs(electricity_usd_per_kwh=0.25, device_usd_per_hour=0.36)

CASES = {
    # limit field: (bound, priority that picks A without the limit, A, B, A's figure computed by hand, message)
    "max_ttft_ms": (800, "memory", V(ttft=SPREAD_TTFT, memory=300), V(memory=500),
                    p90(SPREAD_TTFT), "TTFT p90 {value:.1f} ms > 800 ms (over by {gap:.1f} ms)"),
    "min_decode_tps": (30, "memory", V(decode=SPREAD_DECODE, memory=300), V(memory=500),
                       p10(SPREAD_DECODE), "decode (p10) {value:.1f} tok/s < 30 tok/s (under by {gap:.1f} tok/s)"),
    "max_memory_mb": (450, "speed", V(**FAST, memory=500), V(memory=300),
                      500.0, "deploy memory {value:.1f} MB > 450 MB (over by {gap:.1f} MB)"),
    "max_perplexity": (11.5, "speed", V(**FAST, ppl=12.0), V(ppl=11.0),
                       12.0, "perplexity {value:.1f} > 11.5 (over by {gap:.1f})"),
    "max_bits_per_byte": (1.1, "speed", V(**FAST, bpb=1.25), V(bpb=1.0),
                          1.25, "bits per byte {value:.3f} bits > 1.1 bits (over by {gap:.3f} bits)"),
    "max_kl": (0.1, "speed", V(**FAST, kl=0.2), V(kl=0.05),
               0.2, "KL divergence {value:.4f} nats > 0.1 nats (over by {gap:.4f} nats)"),
    "min_accuracy": (0.4, "speed", V(**FAST, acc=0.3), V(acc=0.5),
                     0.3, "mean accuracy {value:.3f} < 0.4 (under by {gap:.3f})"),
    "max_energy_j": (100, "quality", V(**SLOW, ppl=10.0), V(**FAST, ppl=11.0),
                     energy_j(V(**SLOW)), "energy per response {value:.1f} J > 100 J (over by {gap:.1f} J)"),
    "max_cost_per_1k_usd": (0.5, "quality", V(**SLOW, ppl=10.0), V(**FAST, ppl=11.0),
                            cost_per_1k(V(**SLOW), COSTS),
                            "cost per 1,000 responses {value:.4f} USD > 0.5 USD (over by {gap:.4f} USD)"),
}


def test_every_budget_limit_has_a_case():
    limits = {name for name in Budget.model_fields if name.startswith(("max_", "min_"))}
    assert limits == set(CASES)


@pytest.mark.parametrize("limit", sorted(CASES))
def test_a_limit_moves_the_pick_and_names_the_figure(limit):
    bound, priority, a, b, value, message = CASES[limit]
    rep = report(a, b)
    free = recommend(rep, Budget(priority=priority), COSTS)
    assert free.pick == "A" and not any(r.violations for r in free.rows)  # A wins when nothing limits it
    rec = recommend(rep, Budget(priority=priority, **{limit: bound}), COSTS)
    assert rec.answer == "edge" and rec.pick == "B"
    row_a, row_b = (next(r for r in rec.rows if r.variant_id == vid) for vid in ("A", "B"))
    assert row_b.violations == [] and row_b.verdict.startswith("PICK")
    assert [" ".join(v.split()) for v in row_a.violations] == [message.format(value=value, gap=abs(value - bound))]
    assert row_a.verdict.startswith("breaks the budget: ")
    key = {"max_ttft_ms": "ttft_ms", "min_decode_tps": "decode_tps", "max_memory_mb": "memory_mb",
           "max_perplexity": "perplexity", "max_bits_per_byte": "bits_per_byte", "max_kl": "kl", "min_accuracy": "accuracy",
           "max_energy_j": "energy_j",
           "max_cost_per_1k_usd": "cost_per_1k_usd"}[limit]
    assert row_a.metrics[key] == pytest.approx(value, rel=1e-4)


@pytest.mark.parametrize(("limit", "values", "conservative"), [
    ("max_ttft_ms", SPREAD_TTFT, p90(SPREAD_TTFT)), ("min_decode_tps", SPREAD_DECODE, p10(SPREAD_DECODE)),
])
def test_timing_limits_use_the_slow_end_not_the_median(limit, values, conservative):
    """A bound between the median and the conservative figure: the median meets it, the variant still breaks it;
    a bound beyond the conservative figure lets it through."""
    median = float(np.median(values))
    between = (median + conservative) / 2
    beyond = conservative * (1.05 if limit.startswith("max") else 0.95)
    a = V(ttft=values) if limit == "max_ttft_ms" else V(decode=values)
    rep = report(a, V())
    assert median < between < conservative if limit.startswith("max") else conservative < between < median
    strict = recommend(rep, Budget(**{limit: between}))
    assert next(r for r in strict.rows if r.variant_id == "A").violations
    loose = recommend(rep, Budget(**{limit: beyond}))
    assert not next(r for r in loose.rows if r.variant_id == "A").violations


def test_energy_and_cost_use_the_medians_and_the_given_prices():
    a, b = V(**SLOW), V(**FAST)
    rec = recommend(report(a, b), Budget(), COSTS)
    rows = {r.variant_id: r for r in rec.rows}
    # by hand: A responds in 0.72 + 128 / 20.5 s; 20 W over that; $0.25/kWh plus $0.36/h for the device
    seconds = 0.72 + 128 / 20.5
    assert rows["A"].metrics["energy_j"] == pytest.approx(20 * seconds, rel=1e-4)
    assert rows["A"].metrics["cost_per_1k_usd"] == pytest.approx(1000 * (20 * seconds / 3.6e6 * 0.25 + 0.36 * seconds / 3600), rel=1e-4)
    assert rows["B"].metrics["energy_j"] == pytest.approx(energy_j(b), rel=1e-4)
