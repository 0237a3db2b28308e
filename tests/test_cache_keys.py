"""Honest caching, with a fake child worker (no model): every input a result depends on is in its cache key
(changing it recomputes exactly what depends on it), and a failed result is kept with its reason and
retried on the next run."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.formats.files import serving_context
from toolkit.io import sha256_file, write_json
from toolkit.pipeline import accuracy, jobs, workspace
from toolkit.pipeline.fidelity import load_quality
from toolkit.profiling.harness import ChildResult
from toolkit.recipe import load_recipe
from toolkit.records import Manifest, Variant


def stage_module(name: str):
    """A stage's module (`toolkit.pipeline.profile` the attribute is the stage function)."""
    return importlib.import_module(f"toolkit.pipeline.{name}")


class FakeWorker:
    """Answers profile, perplexity and lm-eval jobs like the real worker, and counts them by kind and path."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail: set[str] = set()
        self.tasks: list[list[str]] = []  # per lm-eval job, the tasks it was asked for

    def __call__(self, job: dict, timeout_s: float, memory_cap_mb: float | None, log_path: Path) -> ChildResult:
        self.calls.append((job["kind"], Path(job["path"]).name))
        self.n_ctx = job.get("n_ctx")
        if Path(job["path"]).name in self.fail:
            return ChildResult("crash", {}, "exit code 1: boom", 0.1)
        if job["kind"] == "profile":
            n = job["repeats"]
            data = {"prompts": [{"prompt_tokens": p, "ttft_ms": [10.0 + i for i in range(n)], "runtime_prefill_tps": []}
                                for p in job["prompt_lengths"]],
                    "decode_tps": [50.0 + i for i in range(n)], "itl_ms": [20.0] * n, "runtime_decode_tps": [],
                    "rapl_watts": [], "load_ms": 3.0, "peak_rss_mb": 100.0}
        elif job["kind"] == "perplexity":
            ref = job["reference"]
            if ref["write"]:
                np.savez(Path(ref["dir"]) / "windows.npz", sizes=np.zeros(1, dtype=np.int64))
            data = {"chunks": job["chunks"], "tokens_scored": 64, "bytes_scored": 256, "perplexity": 12.0,
                    "bits_per_byte": 0.9, "nll_stderr": 0.1}
            if not ref["write"]:
                data |= {"kl_mean": 0.01, "kl_p99": 0.05, "top1_agreement": 0.9}
        else:
            self.tasks.append(job["tasks"])
            score = {"metric": "acc", "filter": "none", "value": 0.5, "stderr": 0.05, "n": 10}
            data = {"tasks": {task: score for task in job["tasks"]}, "lm_eval_version": "x"}
        return ChildResult("ok", data, None, 0.1)

    def count(self, kind: str) -> list[str]:
        out = [name for k, name in self.calls if k == kind]
        self.calls.clear()
        return sorted(out)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    worker = FakeWorker()
    monkeypatch.setattr(jobs, "run_child", worker)
    monkeypatch.setattr(stage_module("profile"), "device_roofline", lambda ws, device: None)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text " * 100)
    monkeypatch.setattr(workspace, "corpus_path", lambda name: corpus)
    monkeypatch.setattr(accuracy, "task_dir", lambda name: str(tmp_path))
    path = write_recipe(tmp_path / "r.yaml", f"""
        name: keys
        workspace: {tmp_path / 'ws'}
        candidates: [{{model: x}}]
        device: {{prompt_lengths: [16], decode_tokens: 4, repeats: 3, rounds: 1, max_rounds: 1, certify_runs: 0}}
        quality: {{ctx: 64, chunks: 2}}
        accuracy: {{tasks: [mmlu_offline], limit: 10}}
        """)
    recipe = load_recipe(path)
    variants = []
    for quant in ("F16", "Q8_0"):
        file = tmp_path / f"{quant}.gguf"
        file.write_bytes(quant.encode())
        variants.append(Variant(id=f"x-gguf-{quant.lower()}", label=f"x {quant}", model="x", format="gguf", runtime="llama.cpp",
                                quant=quant, path=str(file), size_bytes=1, sha256=quant * 8, source="s", source_sha256="0",
                                seconds=0, tools={}))
    write_json(recipe.workspace_dir() / "manifest.json", Manifest(recipe="keys", variants=variants))
    return recipe, worker, variants, corpus


def _set_manifest(recipe, variants):
    write_json(recipe.workspace_dir() / "manifest.json", Manifest(recipe="keys", variants=variants))


def _recipe_with(recipe, section: str, **changes):
    return recipe.model_copy(update={section: getattr(recipe, section).model_copy(update=changes)})


def test_fidelity_key_names_the_variant_reference_corpus_settings_and_runtime(setup, monkeypatch):
    recipe, worker, (f16, q8), corpus = setup
    pipeline.evaluate(recipe)
    assert worker.count("perplexity") == ["F16.gguf", "Q8_0.gguf"]
    pipeline.evaluate(recipe)
    assert worker.count("perplexity") == []  # nothing changed: nothing recomputed
    _set_manifest(recipe, [f16, q8.model_copy(update={"sha256": "new"})])
    pipeline.evaluate(recipe)
    assert worker.count("perplexity") == ["Q8_0.gguf"]  # only the variant whose bytes changed
    _set_manifest(recipe, [f16.model_copy(update={"sha256": "new-ref"}), q8.model_copy(update={"sha256": "new"})])
    pipeline.evaluate(recipe)
    assert worker.count("perplexity") == ["F16.gguf", "Q8_0.gguf"]  # a new reference: every KL is stale
    pipeline.evaluate(_recipe_with(recipe, "quality", chunks=3))
    assert worker.count("perplexity") == ["F16.gguf", "Q8_0.gguf"]
    corpus.write_text("other text " * 100)
    pipeline.evaluate(recipe)
    assert worker.count("perplexity") == ["F16.gguf", "Q8_0.gguf"]
    monkeypatch.setattr(workspace, "installed_versions", lambda runtime: (("llama_cpp_python", "9.9.9"),))
    pipeline.evaluate(recipe)
    assert worker.count("perplexity") == ["F16.gguf", "Q8_0.gguf"]


def test_accuracy_key_names_variant_task_settings_and_lm_eval(setup, monkeypatch):
    recipe, worker, (f16, q8), _ = setup
    pipeline.evaluate(recipe)
    assert worker.count("lm_eval") == ["F16.gguf", "Q8_0.gguf"]
    pipeline.evaluate(recipe)
    assert worker.count("lm_eval") == []
    pipeline.evaluate(_recipe_with(recipe, "accuracy", limit=20))
    assert worker.count("lm_eval") == ["F16.gguf", "Q8_0.gguf"]
    _set_manifest(recipe, [f16, q8.model_copy(update={"sha256": "new"})])
    pipeline.evaluate(recipe)
    assert worker.count("lm_eval") == ["Q8_0.gguf"]
    monkeypatch.setattr(accuracy, "lm_eval_version", lambda: "0.0.1")
    pipeline.evaluate(recipe)
    assert worker.count("lm_eval") == ["F16.gguf", "Q8_0.gguf"]


def test_a_device_reports_the_scores_its_build_machine_made_with_other_versions(setup, monkeypatch):
    """A device install has no lm-eval, and a device's llama.cpp may be another build: `toolkit profile` there
    reports the fidelity and accuracy the build machine scored, found by the versions recorded beside them
    (evaluating with other versions still scores anew: the tests above)."""
    recipe, worker, variants, corpus = setup
    pipeline.evaluate(recipe)
    monkeypatch.setattr(workspace, "installed_versions", lambda runtime: (("llama_cpp_python", "9.9.9"),))
    monkeypatch.setattr(accuracy, "lm_eval_version", lambda: "not installed")
    manifest = pipeline.load_manifest(recipe)
    digest = sha256_file(corpus)
    ids = [v.id for v in variants]
    assert [(q.variant_id, q.status) for q in load_quality(recipe, manifest, digest)] == [(i, "ok") for i in ids]
    assert [(a.variant_id, a.status) for a in accuracy.load_accuracy(recipe, manifest)] == [(i, "ok") for i in ids]
    report, _ = pipeline.profile(recipe)
    assert len(report.quality) == len(report.accuracy) == 2 and all(p.status == "ok" for p in report.profiles)
    (recipe.workspace_dir() / workspace.SCORERS).unlink()  # a workspace scored before the record: as before it
    assert load_quality(recipe, manifest, digest) == [] and accuracy.load_accuracy(recipe, manifest) == []


def test_one_child_per_variant_scores_only_the_tasks_not_cached(setup):
    recipe, worker, _, _ = setup
    pipeline.evaluate(recipe)
    assert worker.count("lm_eval") == ["F16.gguf", "Q8_0.gguf"] and worker.tasks == [["mmlu_offline"]] * 2
    worker.tasks.clear()
    both = _recipe_with(recipe, "accuracy", tasks=["mmlu_offline", "social_iqa_bb"])
    _, results = pipeline.evaluate(both)
    assert worker.count("lm_eval") == ["F16.gguf", "Q8_0.gguf"] and worker.tasks == [["social_iqa_bb"]] * 2
    assert [(r.task, r.status) for r in results] == [("mmlu_offline", "ok")] * 2 + [("social_iqa_bb", "ok")] * 2
    pipeline.evaluate(both)
    assert worker.count("lm_eval") == []


def test_profile_key_names_variant_settings_and_device(setup):
    recipe, worker, (f16, q8), _ = setup
    pipeline.profile(recipe)
    assert worker.count("profile") == ["F16.gguf", "Q8_0.gguf"]
    pipeline.profile(recipe)
    assert worker.count("profile") == []
    pipeline.profile(_recipe_with(recipe, "device", repeats=4))
    assert worker.count("profile") == ["F16.gguf", "Q8_0.gguf"]
    pipeline.profile(_recipe_with(recipe, "device", threads=1))  # another thread count is another device
    assert worker.count("profile") == ["F16.gguf", "Q8_0.gguf"]
    _set_manifest(recipe, [f16, q8.model_copy(update={"sha256": "new"})])
    pipeline.profile(recipe)
    assert worker.count("profile") == ["Q8_0.gguf"]


def test_profiles_open_the_context_a_deployed_server_gets_and_are_keyed_by_it(setup):
    """Memory is measured with the KV cache `toolkit export`/`deploy` allocate: the serving context of the
    budget's response shape (at least 2048, a power of two, within the trained context), so a budget whose
    response needs a larger server is profiled again, and one that fits the same server is not."""
    recipe, worker, (f16, q8), _ = setup
    report, _ = pipeline.profile(recipe)
    assert worker.count("profile") == ["F16.gguf", "Q8_0.gguf"] and worker.n_ctx == 2048
    assert {p.settings["n_ctx"] for p in report.profiles} == {2048}
    assert worker.n_ctx == serving_context(16, recipe.budget.output_tokens, None)
    pipeline.profile(_recipe_with(recipe, "budget", output_tokens=1000))  # 16 + 1000 tokens: the same 2048 server
    assert worker.count("profile") == []
    pipeline.profile(_recipe_with(recipe, "budget", output_tokens=3000))
    assert worker.count("profile") == ["F16.gguf", "Q8_0.gguf"] and worker.n_ctx == 4096
    _set_manifest(recipe, [v.model_copy(update={"details": {"context_length": 1024}}) for v in (f16, q8)])
    report, _ = pipeline.profile(recipe)  # a model trained for 1024 tokens is served at 1024
    assert worker.count("profile") == ["F16.gguf", "Q8_0.gguf"] and worker.n_ctx == 1024


def test_a_format_added_to_the_recipe_keeps_the_device_and_its_cached_profiles(setup, monkeypatch):
    """The device is the hardware: adding ONNX to a GGUF recipe used to give the machine another id, and every
    GGUF profile was measured again. A new build of the variant's own runtime still re-measures it."""
    from toolkit.formats.onnx import ONNXSpec

    profile_stage = stage_module("profile")
    recipe, worker, _, _ = setup
    first, _ = pipeline.profile(recipe)
    assert worker.count("profile") == ["F16.gguf", "Q8_0.gguf"]
    with_onnx = _recipe_with(recipe, "variants", onnx=ONNXSpec())
    again, _ = pipeline.profile(with_onnx)
    assert worker.count("profile") == [] and again.device.id == first.device.id
    assert set(again.device.runtimes) > set(first.device.runtimes)  # the runtimes are still reported beside
    real = profile_stage.runtime_build
    monkeypatch.setattr(profile_stage, "runtime_build", lambda name: (real(name)[0] | {"llama_cpp_python": "9.9.9"}, real(name)[1]))
    pipeline.profile(recipe)
    assert worker.count("profile") == ["F16.gguf", "Q8_0.gguf"]


def test_a_failure_is_kept_with_its_reason_and_retried(setup):
    recipe, worker, _, _ = setup
    worker.fail = {"Q8_0.gguf"}
    report, _ = pipeline.profile(recipe)
    quality, accuracy = pipeline.evaluate(recipe)
    assert [p.status for p in report.profiles] == ["ok", "crash"] and "boom" in report.profiles[1].reason
    assert [q.status for q in quality] == ["ok", "crash"] and [a.status for a in accuracy] == ["ok", "crash"]
    failed = [p for p in (recipe.workspace_dir() / "profiles").glob("x-gguf-q8_0-*.json")]
    assert len(failed) == 1 and '"crash"' in failed[0].read_text()  # kept on disk, with its reason
    worker.calls.clear()
    worker.fail = set()
    report, _ = pipeline.profile(recipe)
    quality, accuracy = pipeline.evaluate(recipe)
    assert [p.status for p in report.profiles] == ["ok", "ok"]
    assert [q.status for q in quality] == ["ok", "ok"] and [a.status for a in accuracy] == ["ok", "ok"]
    assert worker.calls == [("profile", "Q8_0.gguf"), ("perplexity", "Q8_0.gguf"), ("lm_eval", "Q8_0.gguf")]
