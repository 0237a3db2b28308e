"""The README's main job: `toolkit run recipes/demo.yaml` on the two real PyPI models (SmolLM2-135M and Gemma 3
270M), twice: a model and a form named, every variant with a row, the second run from the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.real_model]


def _toolkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_demo_runs_end_to_end_and_reuses_work(tmp_path):
    start = time.perf_counter()
    first = _toolkit("run", str(ROOT / "recipes" / "demo.yaml"), cwd=tmp_path)
    first_s = time.perf_counter() - start
    assert first.returncode == 0, first.stdout + first.stderr
    said = " ".join(first.stdout.split())
    assert "Run smollm2-135m-instruct " in said or "Run gemma3-270m " in said
    reports = list((tmp_path / "reports" / "demo").glob("recommendation-*.json"))
    rec = json.loads(reports[0].read_text())
    assert rec["answer"] == "edge" and rec["energy_source"].startswith("estimated")
    assert (tmp_path / "reports" / "demo" / reports[0].name.replace(".json", ".html")).exists()
    # per model: the file as shipped, 6 GGUF quants and ONNX int4
    assert len(rec["rows"]) == 16 and rec["pick"] and {r["model"] for r in rec["rows"]} == {"smollm2-135m-instruct", "gemma3-270m"}
    assert "bits_per_byte" in rec["objectives"] and "perplexity" not in rec["objectives"]  # two tokenizers
    for r in rec["rows"]:  # measured, or ruled out early with what was measured and why
        assert r["metrics"]["bits_per_byte"] and r["metrics"]["kl"] is not None
        assert r["status"] == "ok" or r["verdict"].startswith("not measured further: "), r
    assert any(r["verdict"].startswith("not measured further: ") for r in rec["rows"])
    start = time.perf_counter()
    second = _toolkit("run", str(ROOT / "recipes" / "demo.yaml"), cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert time.perf_counter() - start < first_s / 3  # everything came from the cache
    # 400 tok/s: beyond any variant of either model on a small CPU, within the cheapest cloud model's speed
    budget = _toolkit("recommend", str(ROOT / "recipes" / "demo.yaml"), "--min-decode-tps", "400", cwd=tmp_path)
    assert budget.returncode == 0
    said = " ".join(budget.stdout.split())
    assert "No edge variant meets the budget" in said and "Cloud fallback: Groq llama-3.1-8b-instant at $" in said
