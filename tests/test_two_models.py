"""Several candidate models in one recipe: each model's variants are scored against that model's own
reference, and a variant whose quality is missing is set aside with the reason, never compared on fewer
objectives than the rest."""

from __future__ import annotations

from tests import fakes
from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.recipe import load_recipe
from toolkit.recommend.engine import recommend


def _recipe(tmp_path):
    a, b = fakes.fake_source(tmp_path / "model-a"), fakes.fake_source(tmp_path / "model-b")
    (b / "config.json").write_text('{"model_type": "fake", "other": true}')  # another model: other bytes
    return load_recipe(write_recipe(tmp_path / "two.yaml", f"""
        name: two
        workspace: {tmp_path / 'ws'}
        candidates: [{{model: {a}, name: alpha}}, {{model: {b}, name: beta}}]
        variants: {{gguf: null, fake: {{speeds: [1, 3], noise: 0.5}}}}
        device: {{prompt_lengths: [32], decode_tokens: 8, repeats: 3, warmup: 0, rounds: 1, max_rounds: 1, certify_runs: 0,
                  power: {{idle_w: 5, busy_w: 10}}}}
        quality: {{ctx: 64, chunks: 2}}
        cloud: {{enabled: false}}
        """))


def test_each_model_is_scored_against_its_own_reference(tmp_path, monkeypatch):
    fakes.install(monkeypatch)
    recipe = _recipe(tmp_path)
    manifest = pipeline.compress(recipe)
    assert [(v.model, v.quant) for v in manifest.variants] == [("alpha", "x1"), ("alpha", "x3"), ("beta", "x1"), ("beta", "x3")]
    quality, _ = pipeline.evaluate(recipe)
    ids = {(v.model, v.quant): v.id for v in manifest.variants}
    by_id = {q.variant_id: q for q in quality}
    for model in ("alpha", "beta"):
        reference, other = by_id[ids[(model, "x1")]], by_id[ids[(model, "x3")]]
        assert reference.reference_id == ids[(model, "x1")] and reference.kl_mean == 0.0
        assert other.reference_id == ids[(model, "x1")] and other.kl_mean > 0.01


def test_a_variant_without_its_quality_is_set_aside_with_the_reason(tmp_path, monkeypatch):
    fakes.install(monkeypatch)
    recipe = _recipe(tmp_path)
    manifest = pipeline.compress(recipe)
    pipeline.evaluate(recipe)
    report, _ = pipeline.profile(recipe)
    broken = manifest.variants[3].id
    quality = [q.model_copy(update={"status": "crash", "reason": "boom", "perplexity": None, "kl_mean": None})
               if q.variant_id == broken else q for q in report.quality]
    rec = recommend(report.model_copy(update={"quality": quality}), recipe.budget, recipe.costs)
    row = next(r for r in rec.rows if r.variant_id == broken)
    assert row.status == "incomplete" and row.verdict.startswith("not compared: perplexity not measured (fidelity crash: boom)")
    assert "perplexity" in rec.objectives and "KL divergence not measured" in row.verdict
    assert rec.pick != broken and rec.pick is not None
