"""The native llama.cpp runtime: llama.cpp's own llama-server and llama-bench profile GGUF variants, and
llama-perplexity cross-checks the toolkit's KL divergence. Needs the binaries (`toolkit llama-cpp-build`,
EDGEFIRST_LLAMA_CPP_BIN or PATH); .ci/run builds them, so in CI these tests never skip."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.errors import UserError
from toolkit.recipe import load_recipe
from toolkit.runtimes import get_runtime

NATIVE = get_runtime("llama.cpp-native")


@pytest.fixture(scope="module")
def native_bin() -> Path:
    """The binaries, looked up once the session has pointed EDGEFIRST_CACHE at the test cache."""
    if why := NATIVE.available():
        pytest.skip(f"llama.cpp's native binaries are not built for the tests ({why}); build them into the test "
                    "cache with `EDGEFIRST_CACHE=$EDGEFIRST_TEST_CACHE toolkit llama-cpp-build` or set EDGEFIRST_LLAMA_CPP_BIN")
    return NATIVE.load().bin_dir()


def _recipe(tmp, model: str, quants: list[str], llama_cpp: str = "{runtime: native}"):
    return load_recipe(write_recipe(tmp / "r.yaml", f"""
        name: native
        workspace: {tmp / 'ws'}
        candidates: [{{model: {model}, name: m}}]
        variants: {{gguf: {{quants: {quants}, keep_source: false}}, onnx: null}}
        device: {{threads: 2, prompt_lengths: [32, 64], decode_tokens: 16, warmup: 1, repeats: 3, rounds: 1,
                  max_rounds: 1, certify_runs: 0, llama_cpp: {llama_cpp}}}
        quality: {{ctx: 64, chunks: 2}}
        """))


@pytest.fixture(scope="module")
def tiny_native(native_bin, tiny_llama, tmp_path_factory):
    recipe = _recipe(tmp_path_factory.mktemp("native"), tiny_llama, ["Q8_0"])
    pipeline.compress(recipe)
    return recipe


def _offloading(recipe, layers):
    """`recipe` with device.llama_cpp.n_gpu_layers set."""
    llama_cpp = recipe.device.llama_cpp.model_copy(update={"n_gpu_layers": layers})
    return recipe.model_copy(update={"device": recipe.device.model_copy(update={"llama_cpp": llama_cpp})})


def test_profile_through_llama_server_with_llama_bench_beside(tiny_native):
    report, _ = pipeline.profile(tiny_native)
    [p] = report.profiles
    assert p.status == "ok", p.reason
    assert p.runtime == "llama.cpp-native" and p.settings["llama_cpp_runtime"] == "native"
    assert report.device.runtimes["llama.cpp-native"].startswith("b11434 (")
    assert [t.prompt_tokens for t in p.prompts] == [32, 64] and all(t.ttft_ms.n == 3 for t in p.prompts)
    # every streamed token timed (16 after the first per repeat, fewer where the random model emits partial UTF-8
    # bytes, which the server holds back and sends together); the server's own counters beside
    assert p.decode_tps.n == 3 and p.runtime_decode_tps.n == 3 and p.itl_ms.n <= 3 * 16
    assert all(t.runtime_prefill_tps.n == 3 for t in p.prompts)
    # llama-bench on the same file: pp at each prompt length, tg at the decode depth, every repeat kept
    bench = p.llama_bench
    assert bench.build.startswith("b11434 (") and bench.depth == 64  # the longest prompt, where the profile decodes
    assert sorted(bench.prefill_tps) == [32, 64] and bench.decode_tps.n == 3
    # memory is the server's own peak (the deployment), at least the mapped model
    assert p.deploy_rss_mb == p.peak_rss_mb > p.file_size_mb


def test_offload_on_a_cpu_build_is_an_error(tiny_native):
    recipe = _offloading(tiny_native, 8)
    with pytest.raises(UserError, match=r"device.llama_cpp.n_gpu_layers: 8 layers to offload, but .* no GPU backend"):
        pipeline.profile(recipe)


def test_auto_offload_on_a_cpu_build_runs_on_the_cpu_and_says_so(tiny_native):
    recipe = _offloading(tiny_native, "auto")
    report, _ = pipeline.profile(recipe, write=False, certify_pick=False)
    [p] = report.profiles
    assert p.status == "ok" and p.gpu_layers == 0 and p.settings["llama_cpp_n_gpu_layers"] == "auto"
    assert p.offload == "auto: this llama.cpp build has no GPU backend, so the CPU alone"


def test_missing_binaries_skip_with_the_fix(tiny_native, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFIRST_LLAMA_CPP_BIN", str(tmp_path))
    report, _ = pipeline.profile(tiny_native, write=False, certify_pick=False)
    [p] = report.profiles
    assert p.status == "skipped" and "no llama-server in" in p.reason and "toolkit llama-cpp-build" in p.reason


def test_offload_needs_the_native_runtime(tmp_path):
    with pytest.raises(UserError, match="n_gpu_layers needs runtime: native"):
        _recipe(tmp_path, "x", ["Q8_0"], "{n_gpu_layers: 4}")


@pytest.mark.real_model
def test_kl_agrees_with_llama_perplexity_on_three_quants(native_bin, tmp_path):
    """SmolLM2's F16 and three quants: the toolkit's scorer (its runtime's logits, log-softmax, float16-stored
    reference, KL) on llama-perplexity's own token layout, against `llama-perplexity --kl-divergence`."""
    from toolkit.quality.corpus import corpus_path
    from toolkit.quality.fidelity import log_softmax, perplexity, window_logits
    from toolkit.runtimes.llamacpp import open_session

    recipe = _recipe(tmp_path, "smollm2-135m-instruct", ["F16", "Q8_0", "Q5_K_M", "Q4_K_M", "Q4_0"])
    files = {v.quant: v.path for v in pipeline.compress(recipe).variants}
    ctx, chunks, text = 256, 4, corpus_path("flores-eng")
    kld = tmp_path / "base.kld"
    _perplexity(native_bin, ["-m", files["F16"], "--kl-divergence-base", str(kld)], text, ctx, chunks)

    base = open_session(files["F16"], 2, ctx, ctx)
    windows = _llama_perplexity_windows(base, text.read_text(encoding="utf-8"), ctx, chunks)
    ref = tmp_path / "ref"
    ref.mkdir()
    for i, logits in enumerate(window_logits(base, windows)):
        np.save(ref / f"logp-{i}.npy", log_softmax(logits).astype(np.float16))
    np.savez(ref / "windows.npz", sizes=np.ones(len(windows), np.int64),
             **{f"c{i}": np.asarray(c, np.int32) for i, (c, _) in enumerate(windows)},
             **{f"t{i}": np.asarray(t, np.int32) for i, (_, t) in enumerate(windows)})
    base.close()
    kl = {}
    for quant in ("Q8_0", "Q5_K_M", "Q4_K_M", "Q4_0"):
        theirs = _perplexity(native_bin, ["-m", files[quant], "--kl-divergence-base", str(kld), "--kl-divergence"], text, ctx, chunks)
        session = open_session(files[quant], 2, ctx, ctx)
        kl[quant] = perplexity(session, "", ctx, chunks, {"dir": str(ref), "write": False})["kl_mean"], theirs
        session.close()
    for quant in ("Q5_K_M", "Q4_K_M", "Q4_0"):
        ours, theirs = kl[quant]
        assert abs(ours - theirs) <= 0.02 * theirs, kl
    # Q8_0 drifts 0.004 nats only: at that size the two llama.cpp builds' numerics (b11434 here, llama-cpp-python's
    # in the toolkit) and llama-perplexity's 16-bit storage of the base log-probs are of the same order (measured
    # 0.00444 against 0.00424), so there the two agree to 3e-4 nats rather than 2%
    ours, theirs = kl["Q8_0"]
    assert ours < 0.01 and abs(ours - theirs) <= 3e-4, kl


def _perplexity(bin_dir: Path, args: list[str], text, ctx: int, chunks: int) -> float | None:
    out = subprocess.run([str(bin_dir / "llama-perplexity"), *args, "-f", str(text), "-c", str(ctx), "--chunks", str(chunks),
                          "-t", "2", "-b", str(ctx)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    found = re.search(r"Mean\s+KLD:\s+([0-9.]+)", out.stdout + out.stderr)
    return float(found.group(1)) if found else None


def _llama_perplexity_windows(session, text: str, ctx: int, chunks: int) -> list[tuple[list[int], list[int]]]:
    """llama-perplexity's layout: the text's tokens in chunks of ctx, BOS in each chunk's first place when the
    model adds one, and the second half of each chunk scored given everything before it in the chunk."""
    tokens = ([session.bos] if session.add_bos else []) + session.tokenize(text)
    first = ctx // 2
    windows = []
    for i in range(chunks):
        chunk = tokens[i * ctx:(i + 1) * ctx]
        if session.add_bos:
            chunk[0] = session.bos
        windows.append((chunk[:first + 1], chunk[first + 1:]))
    return windows


@pytest.mark.parametrize("target", [None, 10.0, 57.0, 80.0, 200.0])
def test_auto_offload_finds_the_fewest_layers_by_bisection(target):
    """Against a brute force over every layer count, on repeats with spread (the p10 decides, via numpy)."""
    from toolkit.runtimes.llamacpp_offload import fewest_layers

    calls = []

    def decode_tps(layers: int) -> list[float]:
        calls.append(layers)
        speed = 20 + 3 * layers  # rises with the layers on the GPU
        return [speed + 5, speed - 5, speed]

    n_layers = 31
    layers, tried, why = fewest_layers(decode_tps, n_layers, target)
    p10 = {n: float(np.percentile(decode_tps(n), 10)) for n in range(n_layers + 1)}
    meeting = [n for n in range(n_layers + 1) if target is None or p10[n] >= target]
    expected = n_layers if target is None or not meeting else min(meeting)
    assert layers == expected, (target, layers, why)
    assert all(abs(tried[n] - p10[n]) < 1e-9 for n in tried)
    assert len(tried) <= 2 + 5  # every layer, the CPU, then bisection over 31
    if target == 200.0:
        assert why.startswith(f"even every layer on the GPU decodes {p10[n_layers]:.1f} tok/s (p10), below 200")
    elif target == 10.0:
        assert layers == 0 and why.startswith("the CPU alone meets 10")
