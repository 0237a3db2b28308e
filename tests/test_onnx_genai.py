"""ONNX variants from onnxruntime-genai's model builder, run by its generator, on a tiny random Llama: build,
agree with the HF reference, score, generate, profile; a precision the builder lacks is a one-line reason."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.errors import UserError
from toolkit.recipe import load_recipe
from toolkit.runtimes import get_runtime

pytest.importorskip("onnxruntime_genai")


@pytest.fixture(scope="module")
def genai_run(tiny_llama, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("genai")
    recipe = load_recipe(write_recipe(tmp / "r.yaml", f"""
        name: tiny-genai
        workspace: {tmp / 'ws'}
        candidates: [{{model: {tiny_llama}, name: tiny-llama}}]
        variants:
          gguf: null
          onnx: {{builder: genai, precisions: [fp32, int8, int4], int4_block_sizes: [32]}}
        device: {{threads: 2, prompt_lengths: [16, 32], decode_tokens: 8, warmup: 1, repeats: 3, rounds: 1, max_rounds: 1,
                  certify_runs: 0}}
        quality: {{ctx: 32, chunks: 2}}
        """))
    return recipe, pipeline.compress(recipe)


def test_builder_writes_fp32_and_int4_and_says_why_not_int8(genai_run):
    _, manifest = genai_run
    assert [v.quant for v in manifest.variants] == ["genai-fp32", "genai-int4-b32"]
    assert all(v.runtime == "onnxruntime-genai" and v.tools["onnxruntime-genai"] == "0.12.2" for v in manifest.variants)
    fp32, int4 = manifest.variants
    assert int4.size_bytes < fp32.size_bytes / 3  # 4-bit weights, embedding included
    [failure] = manifest.not_built
    assert failure.quant == "genai-int8" and "writes fp32 and int4 for the CPU, not int8; use builder: optimum" in failure.reason


def _sessions(manifest, tiny_llama):
    from toolkit.runtimes.onnxrt_genai import open_session as genai_session
    from toolkit.runtimes.torch_hf import open_session as torch_session

    return genai_session(manifest.variants[0].path, 2, 128, 64), torch_session(str(tiny_llama), 2, 128, 64)


def test_fp32_logits_match_the_hf_reference(genai_run, tiny_llama):
    session, reference = _sessions(genai_run[1], tiny_llama)
    tokens = list(range(3, 60))
    ours, theirs = session.logits(tokens), reference.logits(tokens)
    assert ours.shape == theirs.shape == (len(tokens), reference.n_vocab)
    assert np.abs(ours - theirs).max() < 1e-3
    assert (ours.argmax(1) == theirs.argmax(1)).mean() == 1.0


def test_score_rewinds_to_the_context_and_decode_follows_greedy(genai_run, tiny_llama):
    session, reference = _sessions(genai_run[1], tiny_llama)
    context, conts = [1, 40, 41, 42, 43], [[50, 51, 52], [60], [70, 71]]
    for cont, rows in zip(conts, session.score(context, conts), strict=True):
        full = reference.logits(context + cont)[len(context) - 1:len(context) - 1 + len(cont)]
        assert rows.shape == full.shape and np.abs(rows - full).max() < 1e-3
    prompt = [1, 10, 11, 12, 13, 14]
    steps, token = [], session.prefill(prompt)
    for _ in range(6):
        steps.append(token)
        token = session.decode(token)
    expected, seq = [], list(prompt)
    for _ in range(6):
        expected.append(int(reference.logits(seq)[-1].argmax()))
        seq.append(expected[-1])
    assert steps == expected
    # a token that is not the generator's own choice replaces it
    forced = (steps[0] + 1) % reference.n_vocab
    session.prefill(prompt)
    assert session.decode(forced) == int(reference.logits(prompt + [forced])[-1].argmax())


def test_fidelity_and_profile_through_the_generator(genai_run):
    recipe, manifest = genai_run
    quality, _ = pipeline.evaluate(recipe)
    assert all(q.status == "ok" and q.perplexity > 1 for q in quality), [q.reason for q in quality]
    report, _ = pipeline.profile(recipe)
    assert all(p.status == "ok" and p.runtime == "onnxruntime-genai" for p in report.profiles), [p.reason for p in report.profiles]
    assert all(p.decode_tps.median > 0 and p.prompts[1].ttft_ms.n == 3 for p in report.profiles)
    assert report.not_built == manifest.not_built
    assert report.device.runtimes["onnxruntime-genai"] == "0.12.2"


def test_unreadable_genai_model_is_a_clear_error(genai_run, tmp_path):
    import shutil

    from toolkit.runtimes.onnxrt_genai import open_session

    bad = tmp_path / "bad"
    shutil.copytree(genai_run[1].variants[1].path, bad)
    (bad / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match="onnxruntime-genai cannot load this model"):
        open_session(str(bad), 1, 32, 32)


def test_runtime_is_registered_for_onnx():
    runtime = get_runtime("onnxruntime-genai")
    assert runtime.available() is None and "onnx" in runtime.formats


def test_export_snippet_runs_and_generates_what_the_generator_does(genai_run, tmp_path):
    """The deployment snippet `toolkit export` writes for a genai pick runs as is (the tiny model has no chat
    template, so the plain-text branch) and prints the greedy continuation our own session produces."""
    import subprocess
    import sys
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from toolkit.export import onnx_snippet
    from toolkit.runtimes.onnxrt_genai import open_session

    variant = genai_run[1].variants[1]
    script = tmp_path / "run.py"
    script.write_text(onnx_snippet(variant, SimpleNamespace(device="here", output_tokens=8),
                                   SimpleNamespace(device=SimpleNamespace(threads_used=1))), encoding="utf-8")
    printed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=300).stdout
    tokenizer = AutoTokenizer.from_pretrained(variant.path)
    session = open_session(variant.path, 1, 64, 64)
    token, tokens = session.prefill(tokenizer("What is the capital of France?")["input_ids"]), []
    while len(tokens) < 8 and (not tokens or tokens[-1] != tokenizer.eos_token_id):
        tokens.append(token)
        token = session.decode(token)
    session.close()
    assert printed.strip() == tokenizer.decode(tokens, skip_special_tokens=True).strip()
