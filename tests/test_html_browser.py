"""The HTML reports in a real headless browser: interactive Plotly figures with every point, axis pickers
that work, no console errors, and a plot area that is not blank."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.factories import CLOUDS, ladder_report
from toolkit.plots import DEFAULT_AXES, METRICS, front_2d, in_budget, value
from toolkit.recipe import Budget, Costs
from toolkit.recommend.engine import Recommendation, recommend
from toolkit.records import DeviceReport
from toolkit.reports import fleet_reports, simulation_reports, write_reports
from toolkit.simulate import PolicyResult

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
DEMO = Path(__file__).resolve().parent.parent / "reports" / "smollm2-formats" / "devices"

# Appended to a copy of a page: reports what was drawn, then picks the x axis `pick_x` (if any) through the
# menu's own button arguments, and writes the result into the title for --dump-dom to carry out.
PROBE = """<script>window.addEventListener('load', function () { setTimeout(function () {
  var gd = document.querySelector('.js-plotly-plot'), out = {}, r = gd.getBoundingClientRect();
  var points = function () { return gd.querySelectorAll('.point').length; };
  var fronts = function () { return gd.data.filter(function (t) { return t.meta && t.meta.role === 'front'; })
                                             .map(function (t) { return t.x.length; }); };
  out.rect = [r.left, r.top, r.width, r.height]; out.points = points(); out.fronts = fronts();
  out.menus = (gd.layout.updatemenus || []).map(function (m) { return m.buttons.length; });
  var pick = %s;
  if (pick) {
    var button = gd.layout.updatemenus[0].buttons.find(function (b) { return b.args[1]['meta.x'] === pick; });
    Plotly.update(gd, button.args[0], button.args[1], button.args[2]);
  }
  setTimeout(function () {
    out.after = {points: points(), fronts: fronts(), x: gd.layout.meta && gd.layout.meta.x,
                 title: (gd.layout.xaxis.title || {}).text, type: gd.layout.xaxis.type, band: gd.layout.shapes && gd.layout.shapes[0]};
    document.title = 'PROBE' + JSON.stringify(out);
  }, 400);
}, 800); });</script>"""


def _chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0", "--window-size=1400,1100",
         "--virtual-time-budget=6000", *args, url],
        capture_output=True, text=True, timeout=120,
    )


def _console_errors(done: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]


def _probe(tmp_path: Path, page: Path, pick_x: str | None = None) -> dict:
    probe = page.with_name("probe-" + page.name)
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE % json.dumps(pick_x) + "</body>"), encoding="utf-8")
    done = _chromium(tmp_path, probe.as_uri(), "--dump-dom")
    assert _console_errors(done) == []
    found = re.search(r"<title>PROBE(.*?)</title>", done.stdout, re.S)
    assert found, done.stderr[-2000:]
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"'))


def _expected_points(rec: Recommendation, x: str, y: str) -> int:
    """Markers drawn for one panel: every variant with both figures, the pick, its ties and the 2-D front."""
    xy = [r for r in rec.rows if value(r, x) is not None and value(r, y) is not None]
    front = front_2d([(value(r, x), value(r, y)) for r in xy if in_budget(r)], METRICS[x][1], METRICS[y][1])
    marked = [r for r in xy if r.variant_id == rec.pick or r.variant_id in rec.tied_with]
    return len(xy) + len(marked) + len(front)


def _recommendation() -> Recommendation:
    report = ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35), (90, 900, 40, 400, 40), (70, 700, 60, 250, 33)])
    rec = recommend(report, Budget(max_ttft_ms=850, max_memory_mb=350), Costs(), CLOUDS)
    tie = next(r.variant_id for r in rec.rows if r.variant_id != rec.pick and in_budget(r))
    return rec.model_copy(update={"tied_with": [tie]})  # draw a tie mark too


def test_html_report_is_interactive_in_headless_chromium(tmp_path):
    rec = _recommendation()
    page = write_reports(rec, tmp_path, images=False)["html"]
    assert (tmp_path / "plotly.min.js").exists() and page.stat().st_size < 200_000  # plotly.js once, beside the pages
    out = _probe(tmp_path, page, pick_x="decode_tps")
    assert out["points"] == _expected_points(rec, *DEFAULT_AXES)
    metrics = [m for m in METRICS if any(value(r, m) is not None for r in rec.rows)]
    assert out["menus"] == [len(metrics), len(metrics)]  # an x and a y picker over every measured objective
    after = out["after"]
    assert after["x"] == "decode_tps" and after["title"] == METRICS["decode_tps"][0]
    assert after["points"] == _expected_points(rec, "decode_tps", DEFAULT_AXES[1])  # the front was recomputed
    assert after["band"]["visible"] is False  # no decode limit in this budget: no shaded region

    shot = tmp_path / "shot.png"
    done = _chromium(tmp_path, page.as_uri(), f"--screenshot={shot}")
    assert _console_errors(done) == [] and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stderr[-2000:]
    image = pytest.importorskip("PIL.Image").open(shot).convert("RGB")
    left, top, width, height = (int(v) for v in out["rect"])
    plot = image.crop((left + 60, top + 70, left + width - 20, top + height - 50))  # inside the margins
    pixels = list(getattr(plot, "get_flattened_data", plot.getdata)())
    inked = sum(1 for p in pixels if min(p) < 235)
    marker = sum(1 for r, g, b in pixels if abs(r - 31) < 40 and abs(g - 119) < 40 and abs(b - 180) < 40)  # D3 blue
    shaded = sum(1 for r, g, b in pixels if r > 235 and 200 < g < 235 and 200 < b < 235)  # the over-budget band
    assert inked > 0.01 * len(pixels) and marker > 50 and shaded > 500, (inked, marker, shaded)


@pytest.mark.skipif(not DEMO.is_dir(), reason="no demo device reports")
def test_fleet_panels_and_simulation_chart(tmp_path):
    budget = Budget(max_ttft_ms=2000, ttft_prompt_tokens=512, min_decode_tps=20, max_memory_mb=1024, max_kl=0.1)
    recs = [recommend(DeviceReport.load(p), budget, Costs(), CLOUDS) for p in sorted(DEMO.glob("device-*.json"))]
    page = fleet_reports(recs, tmp_path, images=False)["html"]
    out = _probe(tmp_path, page)
    assert len(out["fronts"]) == len(recs)  # one panel per device
    assert out["points"] == sum(_expected_points(rec, *DEFAULT_AXES) for rec in recs)

    results = [PolicyResult(policy=p, requests=100, cloud_share=share, p50_s=1.0, p95_s=2.0 + share, p99_s=3.0,
                            usd_per_1k=0.01, utilisation={"a": 0.5}) for p, share in (("random", 0.1), ("load_aware", 0.0))]
    sim = simulation_reports(results, "sim", tmp_path, images=False)["html"]
    assert _probe(tmp_path, sim)["points"] == 3 * len(results)  # p50, p95 and p99 bars per policy


def test_static_png_for_the_markdown_report(tmp_path):
    pytest.importorskip("kaleido")
    rec = _recommendation()
    paths = write_reports(rec, tmp_path, images=True)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["png"].stat().st_size > 10_000
    assert f"]({paths['png'].name})" in paths["md"].read_text(encoding="utf-8")
