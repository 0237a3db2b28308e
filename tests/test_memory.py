"""Memory that means deployment: an ONNX worker without torch/transformers, repeatable peaks, deploy memory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEXT

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tiny_llama, tmp_path_factory) -> Path:
    pytest.importorskip("optimum.exporters.onnx")
    out = tmp_path_factory.mktemp("onnx") / "model"
    cmd = [sys.executable, "-m", "toolkit.formats.onnx_tools", "export", str(tiny_llama), str(out)]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True, timeout=600)
    return out


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    pytest.importorskip("llama_cpp")
    from toolkit.formats.gguf import convert_hf

    folder = tmp_path_factory.mktemp("gguf")
    convert_hf(tiny_llama, folder / "tiny-f16.gguf", "f16", folder)
    return folder / "tiny-f16.gguf"


def _job(runtime: str, path: Path, corpus: Path, kind: str = "profile") -> dict:
    return {
        "kind": kind, "runtime_module": f"toolkit.runtimes.{runtime}", "path": str(path), "threads": 1,
        "n_ctx": 160, "n_batch": 64, "corpus": str(corpus), "prompt_lengths": [16, 64], "decode_tokens": 16,
        "warmup": 1, "repeats": 2, "ctx": 64, "chunks": 2,
    }


def _worker(job: dict, tmp: Path) -> dict:
    (tmp / "job.json").write_text(json.dumps(job), encoding="utf-8")
    cmd = [sys.executable, "-m", "toolkit.profiling.worker", str(tmp / "job.json"), str(tmp / "out.json")]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True, timeout=300)
    return json.loads((tmp / "out.json").read_text(encoding="utf-8"))


def test_onnx_session_loads_neither_torch_nor_transformers(tiny_onnx, corpus):
    code = """
import json, sys
from toolkit.profiling.worker import run_job
from toolkit.runtimes.onnxrt import open_session
job = json.loads(sys.argv[1])
results = [run_job(job), run_job({**job, "kind": "perplexity"})]
session = open_session(job["path"], 1, 64, 64)
text = session.generate("Edge devices", 4)
print(json.dumps({"loaded": [m for m in ("torch", "transformers") if m in sys.modules],
                  "ok": all(r["load_ms"] > 0 for r in results), "text": text}))
"""
    out = json.loads(_python(code, json.dumps(_job("onnxrt", tiny_onnx, corpus))).splitlines()[-1])
    assert out["loaded"] == [] and out["ok"] and isinstance(out["text"], str)


@pytest.mark.parametrize("edit", [{}, {"clean_up_tokenization_spaces": True}, {"add_bos_token": None}])
def test_fast_tokenizer_agrees_with_transformers(tiny_onnx, tmp_path, edit):
    from transformers import AutoTokenizer

    from toolkit.runtimes.onnxrt import FastTokenizer

    folder = tmp_path / "model"
    shutil.copytree(tiny_onnx, folder, ignore=shutil.ignore_patterns("*.onnx"))
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) | edit
    config_file.write_text(json.dumps({k: v for k, v in config.items() if v is not None}), encoding="utf-8")
    ours, theirs = FastTokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    for text in (TEXT[:2000], " I'm here , aren't you ? Yes .", "é 中文 🙂\n\n  x", ""):
        ids = ours(text)["input_ids"]
        assert ids == theirs(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ids) == theirs.decode(ids)
    assert (ours.add_bos_token, ours.bos_token_id) == (theirs.add_bos_token, theirs.bos_token_id)


def test_missing_tokenizer_json_is_a_clear_error(tiny_onnx, tmp_path):
    from toolkit.errors import UserError
    from toolkit.runtimes.onnxrt import FastTokenizer

    shutil.copytree(tiny_onnx, tmp_path / "m", ignore=shutil.ignore_patterns("*.onnx", "tokenizer.json"))
    with pytest.raises(UserError, match="no tokenizer.json"):
        FastTokenizer(tmp_path / "m")


@pytest.mark.parametrize("mode", ["pin", "adaptive"])
def test_pinned_malloc_gives_freed_buffers_back(mode):
    """The cause of the run-to-run swing, in miniature: once glibc's adaptive mmap threshold has risen, freed
    large blocks stay resident; pinned, they go back to the system."""
    code = """
import sys
from toolkit.profiling.worker import pin_malloc, rss_mb
if sys.argv[1] == "pin":
    pin_malloc()
first = bytearray(4 << 20)
del first  # a freed mmap'ed block: the adaptive threshold rises to 4 MiB
before = rss_mb()
blocks = [bytearray(2 << 20) for _ in range(64)]  # 128 MiB in blocks under the risen threshold
keep = blocks.pop()
del blocks
print(rss_mb() - before)
"""
    kept = float(_python(code, mode))
    assert kept < 16 if mode == "pin" else kept > 64


@pytest.mark.parametrize(("runtime", "variant"), [("llamacpp", "tiny_gguf"), ("onnxrt", "tiny_onnx")])
def test_memory_repeats_in_fresh_processes(runtime, variant, request, corpus, tmp_path):
    path = request.getfixturevalue(variant)
    runs = [_worker(_job(runtime, path, corpus), tmp_path) for _ in range(3)]
    assert all(r["ok"] for r in runs)
    for key in ("peak_rss_mb", "deploy_rss_mb"):
        values = [r[key] for r in runs]
        assert max(values) / min(values) <= 1.05, (key, values)
    for r in runs:  # the deploy figure: the runtime alone plus what the model and its run added
        assert r["runtime_rss_mb"] < r["deploy_rss_mb"] <= r["peak_rss_mb"] + 1
        assert r["deploy_rss_mb"] - r["runtime_rss_mb"] == pytest.approx(r["peak_rss_mb"] - r["baseline_rss_mb"], abs=0.2)


def test_deploy_memory_leaves_out_the_workers_own_imports():
    from toolkit.profiling.worker import deploy_rss_mb

    assert deploy_rss_mb({"baseline_rss_mb": 500.0, "runtime_rss_mb": 60.0}, 900.0) == 460.0
    assert deploy_rss_mb({"baseline_rss_mb": 500.0}, 900.0) is None


def test_deploy_memory_holds_the_kv_cache_of_the_context_the_runtime_opened(tiny_gguf, corpus, tmp_path):
    """Profiles open the runtime at the serving context (pipeline/jobs.py: profile_context), because llama.cpp
    allocates and clears the whole KV cache up front: the deploy figure grows by its size. The tiny Llama's cache
    is 2 layers x (K + V) x 2 KV heads x 64 dims x 2 bytes (F16) = 1 KiB per token of context."""
    small, large = (_worker(_job("llamacpp", tiny_gguf, corpus) | {"n_ctx": n}, tmp_path) for n in (256, 65536))
    kv_mb = (65536 - 256) * 1024 / 2**20
    assert small["deploy_rss_mb"] + 0.9 * kv_mb <= large["deploy_rss_mb"] <= small["deploy_rss_mb"] + 1.1 * kv_mb
