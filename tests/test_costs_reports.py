from __future__ import annotations

import re

import pytest

from toolkit.recipe import Budget, Costs
from toolkit.recommend.cloud import CloudModel, load_providers
from toolkit.recommend.engine import recommend
from toolkit.recommend.options import edge_cost_per_1k
from toolkit.records import DeviceFingerprint, DevicePower, DeviceReport, Profile, PromptTiming, Quality, Stat, Variant
from toolkit.reports import html_page, markdown


def test_paper_arithmetic_590_joules_at_25_cents_per_kwh():
    per_1k = edge_cost_per_1k(590.0, 10.0, Costs(electricity_usd_per_kwh=0.25))
    cents_per_response = per_1k / 1000 * 100
    assert cents_per_response == pytest.approx(0.0041, abs=0.00005)


def test_amortised_device_cost_adds_per_second():
    per_1k = edge_cost_per_1k(0.0, 3.6, Costs(electricity_usd_per_kwh=0.25, device_usd_per_hour=1.0))
    assert per_1k == pytest.approx(1.0)  # 3.6 s at $1/h = $0.001 per response


def test_cloud_price_per_response():
    cloud = CloudModel(id="c", provider="P", model="m", usd_per_1m_input=0.15, usd_per_1m_output=0.60, ttft_ms=400, tokens_per_s=80, rtt_ms=50)
    assert cloud.cost_usd(512, 128) == pytest.approx((512 * 0.15 + 128 * 0.60) / 1e6)
    assert cloud.first_token_ms() == 450


def test_shipped_provider_catalogue_loads():
    providers = load_providers("models/cloud/providers.yaml")
    assert len(providers) >= 3 and all(p.usd_per_1m_output > 0 for p in providers)


FP = DeviceFingerprint(id="dev1", hostname="h", cpu_model="cpu", physical_cores=2, logical_cpus=2, threads_used=2,
                       ram_mb=1000, os="Linux", python="3.11", runtimes={"llama_cpp_python": "0.3.36"})


POWER = DevicePower(idle_w=5, busy_w=20)


def spread(x: float, low: float, high: float) -> list[float]:
    """Three repeats around a median `x` that spread, so that p10 and p90 differ from the median (budgets use them)."""
    return [x * low, x, x * high]


def _report(rows, power: DevicePower | None = POWER) -> DeviceReport:
    """One variant per row (TTFT median at 64 and 512 tokens, decode median, memory, perplexity); the repeats
    spread: TTFT p90 is 1.08 x the median, decode p10 0.92 x (numpy's linear percentiles of the three)."""
    variants, profiles, quality = [], [], []
    for i, (ttft64, ttft512, tps, mem, ppl) in enumerate(rows):
        vid = f"v{i}"
        variants.append(Variant(id=vid, label=f"m Q{i}", model="m", format="gguf", runtime="llama.cpp", quant=f"Q{i}",
                                path="/x", size_bytes=1 << 20, sha256="0", source="s", source_sha256="0", seconds=0, tools={}))
        profiles.append(Profile(
            key=vid, variant_id=vid, variant_name=f"m Q{i}", format="gguf", runtime="llama.cpp", device=FP, status="ok",
            settings={}, file_size_mb=1, load_ms=10,
            prompts=[PromptTiming(prompt_tokens=n, ttft_ms=Stat.of(spread(t, 0.95, 1.1)),
                                  prefill_tps=Stat.of([n / x * 1000 for x in spread(t, 0.95, 1.1)]))
                     for n, t in ((64, ttft64), (512, ttft512))],
            decode_tokens=128, decode_tps=Stat.of(spread(tps, 0.9, 1.05)),
            itl_ms=Stat.of([1000 / x for x in spread(tps, 0.9, 1.05)]), peak_rss_mb=mem,
        ))
        quality.append(Quality(key=vid, variant_id=vid, status="ok", corpus="c", corpus_sha256="0", ctx=512, chunks=1, perplexity=ppl))
    return DeviceReport(recipe="r", created="now", toolkit_version="0", device=FP, power=power, variants=variants,
                        profiles=profiles, quality=quality)


CLOUDS = [
    CloudModel(id="cheap", provider="A", model="small", usd_per_1m_input=0.1, usd_per_1m_output=0.4, ttft_ms=300, tokens_per_s=100),
    CloudModel(id="dear", provider="B", model="big", usd_per_1m_input=1, usd_per_1m_output=4, ttft_ms=300, tokens_per_s=100),
]


def test_edge_pick_with_energy_and_cost():
    report = _report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35)])
    rec = recommend(report, Budget(max_ttft_ms=1000), Costs(), CLOUDS)
    assert rec.answer == "edge" and rec.pick in {"v0", "v1"}
    row = next(r for r in rec.rows if r.variant_id == "v1")
    response_s = 0.6 + 128 / 80
    assert row.metrics["energy_j"] == pytest.approx(20 * response_s, rel=1e-3)
    assert row.metrics["cost_per_1k_usd"] == pytest.approx(20 * response_s / 3.6e6 * 0.25 * 1000, rel=1e-3)
    assert "estimated: busy power 20 W" in rec.energy_source


def test_impossible_budget_gives_priced_cloud_fallback():
    report = _report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35)])
    rec = recommend(report, Budget(min_decode_tps=90), Costs(), CLOUDS)
    assert rec.answer == "cloud" and rec.pick is None and rec.cloud_pick == "cheap"
    assert "decode (p10)" in rec.ruled_out_by[0]
    assert "Cloud fallback: A small at $" in rec.message and "cheapest edge variant" in rec.message


def test_mixed_answer_when_short_prompts_fit_the_edge():
    report = _report([(100, 800, 50, 300, 30)])
    rec = recommend(report, Budget(max_ttft_ms=500, ttft_prompt_tokens=512), Costs(), CLOUDS)
    assert rec.answer == "mixed"
    assert rec.mixed.max_prompt_tokens == 64 and rec.mixed.edge_variant == "v0" and rec.mixed.cloud == "cheap"


def test_no_edge_and_no_cloud():
    report = _report([(100, 800, 50, 300, 30)])
    rec = recommend(report, Budget(min_decode_tps=10_000), Costs(), CLOUDS)
    assert rec.answer == "none" and "no cloud option does either" in rec.message


def test_pcr_priority_prefers_cheaper_utility():
    report = _report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 31)])
    rec = recommend(report, Budget(priority="pcr"), Costs(), [])
    assert rec.pick == "v1" and "PCR" in next(r.verdict for r in rec.rows if r.variant_id == "v1")


def test_reports_render_all_rows_and_plots():
    report = _report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35), (90, 900, 40, 400, 40)])
    rec = recommend(report, Budget(max_ttft_ms=850, max_memory_mb=350), Costs(), CLOUDS)
    md = markdown(rec)
    assert all(f"| m Q{i}" in md or f"| **m Q{i} (pick)**" in md for i in range(3))
    assert md.count("(pick)**") == 1 and "## Cloud options" in md
    page = html_page(rec)
    assert page.count('class="plotly-graph-div"') == 1 and 'class="pick"' in page and "over budget (max 850)" in page
    assert '<script src="plotly.min.js">' in page and not re.search(r"(src|href)=\"https?:", page)  # offline
    assert all(f"m Q{i}" in page for i in range(3))


def test_rapl_meter_reads_fake_powercap(tmp_path, monkeypatch):
    from toolkit.profiling.meters.rapl import RaplMeter

    pkg = tmp_path / "intel-rapl:0"
    pkg.mkdir()
    (pkg / "max_energy_range_uj").write_text("1000000\n")
    (pkg / "energy_uj").write_text("999000\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a sub-domain: not counted twice
    monkeypatch.setenv("EDGEFIRST_RAPL_ROOT", str(tmp_path))
    meter = RaplMeter.open()
    (pkg / "energy_uj").write_text("2000\n")  # wrapped around
    assert meter.joules() == pytest.approx(0.003)
