"""Batched scoring gives the numbers unbatched scoring gives: llama.cpp (many sequences per decode, shared
contexts decoded once) and onnxruntime (rows of one batch, padded and masked), for lm-eval's loglikelihood and
rolling loglikelihood, and for fidelity (perplexity, KL, top-1 from one pass)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from tests.conftest import TEXT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
AGREE = 1e-4  # batched vs unbatched, in log-likelihood (nats)

# shared contexts (several choices each), single- and multi-token continuations, contexts of very different
# lengths, a context ending in spaces, and one long enough to be cut to max_length
CONTEXTS = [
    "Edge devices run small",
    "Quantization trades accuracy for",
    "When no edge variant meets the budget, requests go to the",
    "The toolkit measures time to first",
    "Question: which runtime loads a GGUF file?\nA. llama.cpp\nB. onnxruntime\nC. PyTorch\nAnswer:",
    "A phone, a Jetson or a Raspberry Pi has little memory, so models are quantized to fewer bits per weight.  ",
    TEXT[:1500],
]
CHOICES = [" language models", " token", " A", " B", " cloud, which costs money for every token.", " speed and size.", "x"]


def _requests() -> list[Instance]:
    pairs = [(context, CHOICES[(i + j) % len(CHOICES)]) for i, context in enumerate(CONTEXTS) for j in range(1 + i % 4)]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def _rolling() -> list[Instance]:
    texts = [TEXT[:400], TEXT[1000:1100], "Edge devices.", TEXT[2000:3500]]
    return [Instance("loglikelihood_rolling", {}, (text,), i) for i, text in enumerate(texts)]


def _gguf(tiny_llama, tmp_path_factory, outtype: str) -> Path:
    pytest.importorskip("llama_cpp")
    from toolkit.formats.gguf import convert_hf

    folder = tmp_path_factory.mktemp(f"gguf-{outtype}")
    (folder / "logs").mkdir()
    convert_hf(tiny_llama, folder / f"tiny-{outtype}.gguf", outtype, folder)
    return folder / f"tiny-{outtype}.gguf"


@pytest.fixture(scope="module")
def gguf_f32(tiny_llama, tmp_path_factory) -> Path:
    return _gguf(tiny_llama, tmp_path_factory, "f32")


@pytest.fixture(scope="module")
def gguf_f16(tiny_llama, tmp_path_factory) -> Path:
    """F16 weights: llama.cpp rounds activations and the KV cache to F16, which turns any difference in
    summation order into visible differences; the test that batching changes nothing has to hold here too."""
    return _gguf(tiny_llama, tmp_path_factory, "f16")


@pytest.fixture(scope="module")
def onnx_fp32(tiny_llama, tmp_path_factory) -> Path:
    pytest.importorskip("optimum.exporters.onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("onnx-fp32") / "model"
    cmd = [sys.executable, "-m", "toolkit.formats.onnx_tools", "export", str(tiny_llama), str(out)]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True, timeout=600)
    return out


def _open(kind: str, path: Path, n_ctx: int = 256):
    from toolkit.runtimes.llamacpp import open_session as open_llama
    from toolkit.runtimes.onnxrt import open_session as open_ort

    return (open_llama if kind == "llama.cpp" else open_ort)(str(path), 2, n_ctx, n_ctx)


def _small_batches(session) -> None:
    """Force many rounds and split groups, so packing, sequence ids and padding are all exercised."""
    session.SCORE_TOKENS = 96
    if hasattr(session, "SCORE_SEQS"):
        session.SCORE_SEQS = 3


def _reference_loglikelihood(session, lm, request, requests) -> float:
    """Independent of the scoring code: one forward pass over context + continuation (`logits`), the context
    cut as the adapter cuts it for its group (room for the group's longest continuation)."""
    from toolkit.quality.fidelity import log_softmax

    context, cont = lm._encode_pair(*request.args)
    group = [lm._encode_pair(*r.args)[1] for r in requests if r.args[0] == request.args[0]]
    context = lm._fit(context, group)
    logp = log_softmax(session.logits(context + cont))[len(context) - 1:len(context) - 1 + len(cont)]
    return float(logp[np.arange(len(cont)), cont].sum())


@pytest.fixture(params=["llama.cpp F32", "llama.cpp F16", "onnxruntime fp32"])
def model(request):
    kind, weights = request.param.split()
    fixture = {"F32": "gguf_f32", "F16": "gguf_f16", "fp32": "onnx_fp32"}[weights]
    return kind, request.getfixturevalue(fixture)


def test_batched_loglikelihood_matches_unbatched(model):
    from toolkit.evaluation.lm_adapter import SessionLM

    kind, path = model
    requests = _requests()
    plain = _open(kind, path)
    unbatched = SessionLM(plain, 160, batched=False).loglikelihood(requests)
    packed = _open(kind, path)
    _small_batches(packed)
    lm = SessionLM(packed, 160)
    batched = lm.loglikelihood(requests)
    wide = SessionLM(_open(kind, path), 160).loglikelihood(requests)  # default sizes: everything in one or two calls
    assert len(batched) == len(requests) and len({round(a, 3) for a, _ in batched}) > len(CONTEXTS)
    for (a, greedy_a), (b, greedy_b), (c, greedy_c) in zip(batched, unbatched, wide, strict=True):
        assert a == pytest.approx(b, abs=AGREE) and c == pytest.approx(b, abs=AGREE)
        assert greedy_a == greedy_b == greedy_c
    # and both agree with a plain forward pass over each request on its own (llama.cpp's single-sequence
    # context uses flash attention: close, not identical)
    tolerance = 1e-2 if kind == "llama.cpp" else AGREE
    for request, (a, _) in zip(requests, batched, strict=True):
        assert a == pytest.approx(_reference_loglikelihood(plain, lm, request, requests), abs=tolerance)


def test_batched_rolling_loglikelihood_matches_unbatched(model):
    from toolkit.evaluation.lm_adapter import SessionLM

    kind, path = model
    packed = _open(kind, path)
    _small_batches(packed)
    batched = SessionLM(packed, 64).loglikelihood_rolling(_rolling())
    unbatched = SessionLM(_open(kind, path), 64, batched=False).loglikelihood_rolling(_rolling())
    assert all(value < 0 for value in batched)
    assert batched == pytest.approx(unbatched, abs=AGREE)


def test_fidelity_one_pass_batched_and_unbatched(model, tmp_path):
    from toolkit.quality.fidelity import perplexity

    kind, path = model
    session = _open(kind, path)
    ref = {"dir": str(tmp_path), "write": True}
    written = perplexity(session, TEXT, 64, 5, ref)
    packed = _open(kind, path)
    _small_batches(packed)
    batched = perplexity(packed, TEXT, 64, 5, {"dir": str(tmp_path), "write": False})
    unbatched = perplexity(_open(kind, path), TEXT, 64, 5, {"dir": str(tmp_path), "write": False}, batched=False)
    assert written["chunks"] == 5 and batched["tokens_scored"] == written["tokens_scored"] > 5 * 20
    # bits per byte is the same log-likelihood per UTF-8 byte of the scored passages
    nats = math.log(written["perplexity"]) * written["tokens_scored"]
    assert written["bits_per_byte"] == pytest.approx(nats / math.log(2) / written["bytes_scored"], rel=1e-9)
    assert batched["perplexity"] == pytest.approx(written["perplexity"], rel=1e-5)
    assert batched["perplexity"] == pytest.approx(unbatched["perplexity"], rel=1e-5)
    # the same model against its own reference (stored as float16, and this random model's top logits lie close
    # together): KL near zero, top-1 agreement nearly total, and the same either way
    assert batched["kl_mean"] < 1e-4 and batched["top1_agreement"] >= 0.95
    assert batched["kl_mean"] == pytest.approx(unbatched["kl_mean"], abs=1e-6)
    assert batched["top1_agreement"] == pytest.approx(unbatched["top1_agreement"], abs=1 / 160)


def test_llama_cpp_scores_many_groups_per_decode(gguf_f32, monkeypatch):
    """The packing itself: shared contexts are decoded once, several groups share one llama_decode."""
    import llama_cpp

    session = _open("llama.cpp", gguf_f32)
    calls = []
    real = llama_cpp.llama_decode

    def counting(ctx, batch):
        calls.append(batch.n_tokens)
        return real(ctx, batch)

    groups = [([1, 5, 6, 7], [[8], [9, 10], [11, 12, 13]]), ([1, 20], [[21]]), ([1] + list(range(30, 60)), [[61, 62]])]
    monkeypatch.setattr(llama_cpp, "llama_decode", counting)
    many = session.score_many(groups)
    # one decode: each context once, plus every continuation but its last token
    assert calls == [4 + 1 + 2 + 2 + 31 + 1]
    # windows: each group starting at a multiple of 64 cells (filler tokens between), every ubatch >= 64 rows
    calls.clear()
    windows = session.score_windows(groups)
    assert calls == [64 + 64 + 32]
    for rows_many, rows_windows in zip(many, windows, strict=True):
        for a, b in zip(rows_many, rows_windows, strict=True):
            np.testing.assert_allclose(a, b, atol=0.1)  # F16 queries in one, F32 in the other: close, not equal
    alone = [session.score(context, conts) for context, conts in groups]
    for rows_many, rows_alone, (_, conts) in zip(many, alone, groups, strict=True):
        for a, b, cont in zip(rows_many, rows_alone, conts, strict=True):
            assert a.shape == (len(cont), session.n_vocab)
            np.testing.assert_allclose(a, b, atol=1e-5)


def test_onnx_dynamic_int8_is_scored_unbatched(onnx_fp32, tmp_path):
    """Dynamic int8 quantizes activations with one scale per tensor: batch neighbours and padding would change
    a request's numbers, so such a model is scored one group at a time (and gives score()'s numbers)."""
    out = tmp_path / "int8"
    subprocess.run([sys.executable, "-m", "toolkit.formats.onnx_tools", "int8", str(onnx_fp32), str(out)],
                   cwd=ROOT, capture_output=True, check=True, timeout=600)
    fp32, int8 = _open("onnxruntime", onnx_fp32), _open("onnxruntime", out)
    assert not fp32.quantizes_activations_per_tensor() and int8.quantizes_activations_per_tensor()
    groups = [([1, 5, 6, 7], [[8, 9], [10, 11, 12]]), ([1, 20], [[21]])]
    for rows_many, rows_alone in zip(int8.score_many(groups), [int8.score(c, k) for c, k in groups], strict=True):
        for a, b in zip(rows_many, rows_alone, strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("layout", ["requests", "windows"])
def test_llama_cpp_numbers_do_not_depend_on_neighbours(gguf_f16, layout):
    """A group scores the same wherever it lands in a packed decode, to float rounding, in both layouts. The
    traps this guards: llama.cpp's CPU flash attention has a scalar kernel below 64 query rows per ubatch and
    a tiled one from 64 (the windows layout without its minimum of 64 rows: 9e-4 apart here; the requests
    layout with ubatches of 64 or more: 5e-2); the tiled one walks keys in 64-cell tiles that a request's
    keys fall into by its offset (windows without alignment: 3e-4); and the last layer runs on output rows
    only, with other kernels for one row than for several (a lone one-token answer moved by 1e-4)."""
    session = _open("llama.cpp", gguf_f16)
    score = session.score_many if layout == "requests" else session.score_windows
    rng = np.random.default_rng(3)
    cases = [(90, [rng.integers(3, session.n_vocab, 6).tolist(), [7]], k) for k in (1, 5, 33, 40, 70, 100)]
    cases += [(20 + 7 * t, [[5]], 10) for t in range(6)]  # short: alone, the only output row of its ubatch
    for length, conts, k in cases:
        group = ([1] + rng.integers(3, session.n_vocab, length).tolist(), conts)
        before = ([1] + rng.integers(3, session.n_vocab, k).tolist(), [[6]] if k == 10 else [[5, 6]])
        packed = score([before, group])[1]
        for a, b in zip(packed, score([group])[0], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
