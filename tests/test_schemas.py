"""The published JSON Schemas (schemas/) match the pydantic models, and the records the toolkit writes validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.factories import CLOUDS, ladder_report
from toolkit.recipe import Budget, Costs
from toolkit.recommend.engine import recommend
from toolkit.schemas import MODELS, SCHEMA_DIR, render, write

DEMO = Path(__file__).resolve().parent.parent / "reports" / "smollm2-formats"


@pytest.mark.parametrize("name", list(MODELS))
def test_checked_in_schema_matches_the_model(name):
    assert (SCHEMA_DIR / name).read_text(encoding="utf-8") == render(name), (
        f"schemas/{name} is stale: regenerate with `python -m toolkit.schemas`")


def test_regenerate_writes_the_same_files(tmp_path):
    assert [p.read_text() for p in write(tmp_path)] == [(SCHEMA_DIR / n).read_text() for n in MODELS]


def test_records_validate_against_the_schemas():
    jsonschema = pytest.importorskip("jsonschema")
    validators = {n: jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / n).read_text())) for n in MODELS}
    for v in validators.values():
        v.check_schema(v.schema)
    report = ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35)])
    rec = recommend(report, Budget(max_ttft_ms=1000), Costs(), CLOUDS)
    validators["device-report.schema.json"].validate(json.loads(report.model_dump_json()))
    validators["recommendation.schema.json"].validate(json.loads(rec.model_dump_json()))
    bad = json.loads(rec.model_dump_json()) | {"answer": "maybe"}
    assert not validators["recommendation.schema.json"].is_valid(bad)
    for path in sorted(DEMO.glob("recommendation-*.json")):
        validators["recommendation.schema.json"].validate(json.loads(path.read_text()))
    for path in sorted((DEMO / "devices").glob("device-*.json")):
        validators["device-report.schema.json"].validate(json.loads(path.read_text()))
