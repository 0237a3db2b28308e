"""Several candidate models in one recipe: each model's variants are scored against that model's own
reference, and a variant whose quality is missing is set aside with the reason, never compared on fewer
objectives than the rest."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import factories, fakes
from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.recipe import Budget, Costs, load_recipe
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
    quality = [q.model_copy(update={"status": "crash", "reason": "boom", "perplexity": None, "bits_per_byte": None,
                                    "kl_mean": None}) if q.variant_id == broken else q for q in report.quality]
    rec = recommend(report.model_copy(update={"quality": quality}), recipe.budget, recipe.costs)
    row = next(r for r in rec.rows if r.variant_id == broken)
    assert row.status == "incomplete"
    assert row.verdict == "not compared: perplexity, bits per byte and KL divergence not measured (fidelity crash: boom)"
    assert "bits_per_byte" in rec.objectives and "perplexity" not in rec.objectives  # two models: per byte, not per token
    assert rec.pick != broken and rec.pick is not None


def test_across_tokenizers_quality_is_bits_per_byte_not_perplexity():
    """Model b's larger vocabulary gives it the higher per-token perplexity, yet it predicts the same text in
    fewer bits per byte: across models the pick, the front and the utility follow bits per byte."""
    same = {"ttft": [100, 100, 100], "decode": [50, 50, 50], "mem": 300}
    report = factories.repeats_report({**same, "model": "a", "ppl": 20.0, "bpb": 1.20},
                                      {**same, "model": "b", "ppl": 30.0, "bpb": 1.00})
    rec = recommend(report, Budget(priority="quality"), Costs())
    assert rec.pick == "v1" and rec.objectives.count("bits_per_byte") == 1 and "perplexity" not in rec.objectives
    loser = next(r for r in rec.rows if r.variant_id == "v0")
    assert loser.dominated_by == "v1" and "fewer bits per byte" in loser.verdict
    assert any("bits per byte on the same 4,096 bytes" in n for n in rec.notes)
    balanced = recommend(report, Budget(priority="balanced", alpha=1.0), Costs())
    by_id = {r.variant_id: r for r in balanced.rows}  # quality alone: best bits per byte / own bits per byte
    assert by_id["v1"].utility == pytest.approx(1.0) and by_id["v0"].utility == pytest.approx(1.00 / 1.20, abs=1e-4)


def test_one_model_keeps_perplexity_and_bits_per_byte_does_not_count_twice():
    same = {"ttft": [100, 100, 100], "decode": [50, 50, 50], "mem": 300}
    report = factories.repeats_report({**same, "ppl": 20.0, "bpb": 1.0}, {**same, "ppl": 22.0, "bpb": 1.05})
    rec = recommend(report, Budget(priority="balanced", alpha=1.0), Costs())
    assert "perplexity" in rec.objectives and "bits_per_byte" not in rec.objectives
    by_id = {r.variant_id: r for r in rec.rows}
    assert by_id["v1"].utility == pytest.approx(20.0 / 22.0, abs=1e-4)  # best perplexity / own: the one quality signal
    assert not any("Quality across models" in n for n in rec.notes)
    capped = recommend(report, Budget(max_bits_per_byte=1.02), Costs())  # a limit still applies within one model
    assert capped.pick == "v0" and "bits per byte 1.050 bits > 1.02 bits" in next(
        r for r in capped.rows if r.variant_id == "v1").verdict


def test_a_model_whose_reference_fails_has_its_other_variants_say_so_without_running(tmp_path, monkeypatch):
    fakes.install(monkeypatch)
    recipe = _recipe(tmp_path)
    manifest = pipeline.compress(recipe)
    reference, other = manifest.variants[2], manifest.variants[3]  # beta's x1 (its reference) and x3
    shipped = Path(reference.path).read_bytes()
    Path(reference.path).write_text("not a model")  # the reference's runtime cannot load it
    quality, _ = pipeline.evaluate(recipe)
    by_id = {q.variant_id: q for q in quality}
    assert by_id[reference.id].status == "crash"
    assert by_id[other.id].status == "crash" and by_id[other.id].reason.startswith(
        f"its reference {reference.label} was not scored (crash: ")
    logs = tmp_path / "ws" / "logs"
    assert not (logs / f"quality-{other.id}.log").exists()  # no child was started for it
    assert all(by_id[v.id].status == "ok" for v in manifest.variants[:2])  # alpha is untouched
    report, _ = pipeline.profile(recipe)  # the reports read what was stored: the reason is there
    assert next(q for q in report.quality if q.variant_id == other.id).reason == by_id[other.id].reason

    Path(reference.path).write_bytes(shipped)  # mended: the next run scores both (a skip is not cached)
    quality, _ = pipeline.evaluate(recipe)
    assert all(q.status == "ok" for q in quality) and {q.reference_id for q in quality[2:]} == {reference.id}


def test_the_reference_is_the_f16_gguf_else_the_shipped_file_else_the_least_compressed_variant():
    """An ONNX-only recipe (int4 listed before fp32) measures KL from its fp32, not from the int4 it lists first."""
    from toolkit.pipeline.fidelity import reference_variant
    from toolkit.records import Manifest, Variant

    def variant(fmt: str, quant: str, bpw: float | None, model: str = "m", shipped: bool = False) -> Variant:
        return Variant(id=f"{model}-{fmt}-{quant}", label=quant, model=model, format=fmt, runtime="r", quant=quant, path="/x",
                       size_bytes=1, sha256="s" if shipped else quant, source="src", source_sha256="s", seconds=0, tools={},
                       bits_per_weight=bpw)

    onnx = [variant("onnx", "genai-int4-b32", 6.4), variant("onnx", "genai-fp32", 32.3), variant("gguf", "Q4_0", 5.5, "n")]
    assert reference_variant(Manifest(recipe="r", variants=onnx)).quant == "genai-fp32"
    assert reference_variant(Manifest(recipe="r", variants=onnx), "n").quant == "Q4_0"  # each model its own
    shipped = [variant("gguf", "Q8_0", 8.5), variant("gguf", "Q4_1", 5.9, shipped=True), *onnx[:2]]
    assert reference_variant(Manifest(recipe="r", variants=shipped)).quant == "Q4_1"  # the source's own bytes
    assert reference_variant(Manifest(recipe="r", variants=[*shipped, variant("gguf", "F16", 16.1)])).quant == "F16"
    gptq = [variant("gptq", "w8g64", 10.1), variant("gptq", "w4g64", 7.0)]  # every variant quantized: the source
    source = variant("hf", "source", 32.0, shipped=True)
    assert reference_variant(Manifest(recipe="r", variants=gptq, references=[source])) == source


def test_a_fidelity_base_that_is_no_candidate_is_named_in_the_notes():
    from toolkit.recommend.notes import report_notes

    report = factories.repeats_report({"ttft": [100] * 3, "decode": [50] * 3, "kl": 0.02})
    source = report.variants[0].model_copy(update={"id": "m-hf-source", "label": "m HF (as shipped)", "format": "hf"})
    measured = report.model_copy(update={"references": [source], "quality": [
        q.model_copy(update={"reference_id": source.id}) for q in report.quality]})
    assert ("Fidelity base: m's KL and top-1 agreement are measured from m HF (as shipped), its source, which is no "
            "candidate here (every variant of it is quantized).") in report_notes(measured, 512, 128)
    assert not any("Fidelity base" in n for n in report_notes(report, 512, 128))  # a variant is its own model's base


def test_two_candidates_from_the_same_weights_are_named_as_one_model_measured_twice():
    """A catalogue model and a local copy of its file, as two candidates: every variant ties with its twin, and the
    notes say why and what to do; two models from different files get no such note."""
    from toolkit.recommend.notes import report_notes

    report = factories.repeats_report({"ttft": [100] * 3, "decode": [50] * 3}, {"ttft": [100] * 3, "decode": [50] * 3})
    first, second = report.variants
    twins = report.model_copy(update={"variants": [first.model_copy(update={"model": "catalogued"}),
                                                   second.model_copy(update={"model": "local-copy"})]})
    assert first.source_sha256 == second.source_sha256
    assert (f"Same weights: candidates catalogued and local-copy come from one file (source sha256 "
            f"{first.source_sha256[:12]}), so each variant is measured twice and ties with its twin; keep one "
            "candidate.") in report_notes(twins, 512, 128)
    apart = twins.model_copy(update={"variants": [twins.variants[0], twins.variants[1].model_copy(
        update={"source_sha256": "other"})]})
    assert not any("Same weights" in n for n in report_notes(apart, 512, 128))
    assert not any("Same weights" in n for n in report_notes(report, 512, 128))  # one model's own ladder
