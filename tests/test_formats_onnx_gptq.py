"""ONNX (fp32, int8, int4) and GPTQ (4/8-bit) on a tiny random Llama: build, load, generate, profile."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.errors import UserError
from toolkit.io import cache_root
from toolkit.recipe import load_recipe
from toolkit.runtimes import get_runtime

HAS_ONNX = get_runtime("onnxruntime").available() is None and shutil.which("true") is not None
try:
    import gptqmodel  # noqa: F401

    HAS_GPTQ = True
except ImportError:
    HAS_GPTQ = False


def _recipe(tmp_path, tiny_llama, variants: str):
    return load_recipe(write_recipe(tmp_path / "r.yaml", f"""
        name: tiny-formats
        workspace: {tmp_path / 'ws'}
        candidates: [{{model: {tiny_llama}, name: tiny-llama}}]
        variants:
          gguf: null
        {variants}
        device: {{threads: 2, prompt_lengths: [16, 32], decode_tokens: 8, warmup: 1, repeats: 3, rounds: 1, max_rounds: 1,
                  certify_runs: 0}}
        quality: {{ctx: 32, chunks: 2}}
        """))


@pytest.fixture(scope="module")
def onnx_run(tiny_llama, tmp_path_factory):
    pytest.importorskip("optimum.exporters.onnx")
    tmp = tmp_path_factory.mktemp("onnx")
    recipe = _recipe(tmp, tiny_llama, "  onnx: {builder: optimum, precisions: [fp32, int8, int4], int4_block_sizes: [32, 128]}")
    return recipe, pipeline.compress(recipe)


def test_onnx_ladder_builds_and_profiles(onnx_run):
    recipe, manifest = onnx_run
    assert [v.quant for v in manifest.variants] == ["fp32", "int8", "int4-b32", "int4-b128"]
    sizes = {v.quant: v.size_bytes for v in manifest.variants}
    assert sizes["fp32"] > sizes["int8"] > sizes["int4-b32"]
    assert all(v.runtime == "onnxruntime" and v.tools["onnxruntime"] for v in manifest.variants)
    quality, _ = pipeline.evaluate(recipe)
    assert all(q.status == "ok" and q.perplexity > 1 for q in quality), [q.reason for q in quality]
    report, _ = pipeline.profile(recipe)
    assert all(p.status == "ok" for p in report.profiles), [p.reason for p in report.profiles]
    assert all(p.decode_tps.median > 0 and p.prompts[1].ttft_ms.n == 3 for p in report.profiles)


def test_onnx_fp32_matches_the_hf_reference(onnx_run, tiny_llama):
    import numpy as np

    from toolkit.runtimes.onnxrt import open_session as ort_session
    from toolkit.runtimes.torch_hf import open_session as torch_session

    _, manifest = onnx_run
    tokens = list(range(3, 40))
    ort = ort_session(manifest.variants[0].path, 2, 64, 64).logits(tokens)
    ref = torch_session(str(tiny_llama), 2, 64, 64).logits(tokens)
    assert np.abs(ort - ref).max() < 1e-3


def test_unreadable_onnx_is_a_clear_result(onnx_run, tmp_path):
    from toolkit.runtimes.onnxrt import open_session

    bad = tmp_path / "bad"
    shutil.copytree(onnx_run[1].variants[1].path, bad)
    (bad / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match="onnxruntime cannot load this model"):
        open_session(str(bad), 1, 32, 32)


def test_unsupported_architecture_for_onnx_export(tmp_path, tiny_llama):
    pytest.importorskip("optimum.exporters.onnx")
    odd = tmp_path / "odd"
    shutil.copytree(tiny_llama, odd)
    config = json.loads((odd / "config.json").read_text())
    config["model_type"] = "no_such_arch"
    (odd / "config.json").write_text(json.dumps(config))
    recipe = _recipe(tmp_path, odd, "  onnx: {builder: optimum, precisions: [fp32]}")
    with pytest.raises(UserError, match="cannot export .* to ONNX"):
        pipeline.compress(recipe)


@pytest.mark.skipif(not HAS_GPTQ, reason="gptqmodel is not installed")
def test_gptq_8_bit(tiny_llama, tmp_path):
    """8-bit here; 4-bit runs end to end on the real SmolLM2 (test_real_smollm2.py, w4g64)."""
    recipe = _recipe(tmp_path, tiny_llama, "  gptq: {bits: [8], group_size: 64, calibration: {lines: 16}}")
    manifest = pipeline.compress(recipe)
    assert [v.quant for v in manifest.variants] == ["w8g64"]
    for v in manifest.variants:
        assert v.details["calibration_lines"] == 16 and len(v.details["calibration_sha256"]) == 64
    from pathlib import Path

    assert not (Path.cwd() / "gptqmodel_offload").exists()  # GPTQModel's scratch stays in the workspace
    # its C++ packing kernel is compiled once into the cache, not in every quantizing process
    [log] = (recipe.workspace_dir() / "logs").glob("gptq-*.log")
    kernel = re.search(r"packing kernel (?:compiled into|loaded from) (\S+\.so)", log.read_text(errors="replace"))
    assert kernel and Path(kernel[1]).is_file() and Path(kernel[1]).is_relative_to(cache_root())
    from toolkit.pipeline.fidelity import fidelity
    from toolkit.pipeline.workspace import corpus

    [source] = manifest.references  # every variant quantized: KL from the checkpoint, not from the w8 itself
    [q] = fidelity(recipe, manifest, corpus(recipe))
    assert (source.format, Path(source.path), q.status, q.reference_id) == ("hf", tiny_llama, "ok", source.id)
    assert 0 < q.kl_mean < 0.05 and q.top1_agreement > 0.9
    report, _ = pipeline.profile(recipe)
    assert all(p.status == "ok" for p in report.profiles), [p.reason for p in report.profiles]


def test_gptq_group_size_must_divide_width(tiny_llama, tmp_path):
    recipe = _recipe(tmp_path, tiny_llama, "  gptq: {bits: [4], group_size: 512, calibration: {lines: 16}}")
    if not HAS_GPTQ:
        pytest.skip("gptqmodel is not installed")
    with pytest.raises(UserError, match="group size 512 does not divide hidden_size=256"):
        pipeline.compress(recipe)
