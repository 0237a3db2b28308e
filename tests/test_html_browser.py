"""The HTML report in a real headless browser: it renders, with its plots, and logs no console errors."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.test_costs_reports import CLOUDS, _report
from toolkit.recipe import Budget, Costs
from toolkit.recommend.engine import recommend
from toolkit.reports import write_reports

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_html_report_renders_in_headless_chromium(tmp_path):
    report = _report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35), (90, 900, 40, 400, 40)])
    rec = recommend(report, Budget(max_ttft_ms=850, max_memory_mb=350), Costs(), CLOUDS)
    page = write_reports(rec, tmp_path)["html"]
    shot = tmp_path / "shot.png"
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--window-size=1400,1200", f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 20_000, done.stderr[-2000:]
    console = [ln for ln in done.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
