from __future__ import annotations

import re

import pytest

from tests.factories import CLOUDS, FP, POWER, ladder_report, spread  # noqa: F401
from toolkit.recipe import Budget, Costs
from toolkit.recommend.cloud import CloudModel, load_providers
from toolkit.recommend.engine import recommend
from toolkit.recommend.options import edge_cost_per_1k
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


def test_edge_pick_with_energy_and_cost():
    report = ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35)])
    rec = recommend(report, Budget(max_ttft_ms=1000), Costs(), CLOUDS)
    assert rec.answer == "edge" and rec.pick in {"v0", "v1"}
    row = next(r for r in rec.rows if r.variant_id == "v1")
    response_s = 0.6 + 128 / 80
    assert row.metrics["energy_j"] == pytest.approx(20 * response_s, rel=1e-3)
    assert row.metrics["cost_per_1k_usd"] == pytest.approx(20 * response_s / 3.6e6 * 0.25 * 1000, rel=1e-3)
    assert "estimated: busy power 20 W" in rec.energy_source


def test_impossible_budget_gives_priced_cloud_fallback():
    report = ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35)])
    rec = recommend(report, Budget(min_decode_tps=90), Costs(), CLOUDS)
    assert rec.answer == "cloud" and rec.pick is None and rec.cloud_pick == "cheap"
    assert "decode (p10)" in rec.ruled_out_by[0]
    assert "Cloud fallback: A small at $" in rec.message and "cheapest edge variant" in rec.message


def test_mixed_answer_when_short_prompts_fit_the_edge():
    report = ladder_report([(100, 800, 50, 300, 30)])
    rec = recommend(report, Budget(max_ttft_ms=500, ttft_prompt_tokens=512), Costs(), CLOUDS)
    assert rec.answer == "mixed"
    assert rec.mixed.max_prompt_tokens == 64 and rec.mixed.edge_variant == "v0" and rec.mixed.cloud == "cheap"


def test_no_edge_and_no_cloud():
    report = ladder_report([(100, 800, 50, 300, 30)])
    rec = recommend(report, Budget(min_decode_tps=10_000), Costs(), CLOUDS)
    assert rec.answer == "none" and "no cloud option does either" in rec.message


def test_pcr_priority_prefers_cheaper_utility():
    report = ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 31)])
    rec = recommend(report, Budget(priority="pcr"), Costs(), [])
    assert rec.pick == "v1" and "PCR" in next(r.verdict for r in rec.rows if r.variant_id == "v1")


def test_reports_render_all_rows_and_plots():
    report = ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35), (90, 900, 40, 400, 40)])
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
