"""HF checkpoint -> GGUF (llama.cpp converter) -> quantize -> perplexity -> profile -> recommend, on a tiny model."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.errors import UserError
from toolkit.io import write_json
from toolkit.pipeline import jobs
from toolkit.profiling.harness import run_child
from toolkit.recipe import load_recipe
from toolkit.recommend.engine import recommend
from toolkit.records import DeviceReport, Manifest


def _recipe(folder, tiny_llama):
    return load_recipe(write_recipe(folder / "tiny.yaml", f"""
        name: tiny
        workspace: {folder / 'ws'}
        candidates:
          - model: {tiny_llama}
            name: tiny-llama
        variants:
          gguf:
            quants: [F16, Q8_0, Q4_K_M]
        device:
          threads: 2
          prompt_lengths: [16, 64]
          decode_tokens: 16
          warmup: 1
          repeats: 3
          timeout_s: 300
          max_rounds: 3       # rounds for contenders: enough to test them, without up to 6 rounds of 3 variants
          extra_time_s: 60    # on a busy 2-core machine (the test took 50-350 s with the defaults)
        quality:
          ctx: 64
          chunks: 2
        """))


@pytest.fixture(scope="module")
def built(tiny_llama, tmp_path_factory):
    """The ladder converted and quantized once per module, in a workspace no test runs in."""
    folder = tmp_path_factory.mktemp("built")
    pipeline.compress(_recipe(folder, tiny_llama))
    return folder / "ws"


@pytest.fixture
def recipe(built, tiny_llama, tmp_path):
    """A workspace of this test's own holding a copy of the compressed ladder (and nothing measured): what one
    test measures, another never reads. The variant records' paths are moved to the copy."""
    import shutil

    ws = tmp_path / "ws"
    shutil.copytree(built, ws, ignore=shutil.ignore_patterns(".lock"))
    for record in [ws / "manifest.json", *ws.glob("variants/*/variant.json")]:
        record.write_text(record.read_text(encoding="utf-8").replace(str(built), str(ws)), encoding="utf-8")
    return _recipe(tmp_path, tiny_llama)


@pytest.fixture
def manifest(recipe):
    return pipeline.compress(recipe)


def test_compress_builds_the_ladder(manifest, recipe):
    assert all(Path(v.path).is_relative_to(recipe.workspace_dir()) for v in manifest.variants)  # this test's own copy
    quants = [v.quant for v in manifest.variants]
    assert quants == ["F16", "Q8_0", "Q4_K_M"]
    sizes = [v.size_bytes for v in manifest.variants]
    assert sizes[0] > sizes[1] > sizes[2]
    f16 = manifest.variants[0]
    assert 15 < f16.bits_per_weight < 17.5
    assert all(v.tools["llama_cpp_python"] for v in manifest.variants)
    stored = Manifest.load(recipe.workspace_dir() / "manifest.json")
    assert stored == manifest


def test_second_compress_reuses_finished_work(manifest, recipe):
    before = {v.id: Path(v.path).stat().st_mtime_ns for v in manifest.variants}
    again = pipeline.compress(recipe)
    assert [v.id for v in again.variants] == list(before)
    assert {v.id: Path(v.path).stat().st_mtime_ns for v in again.variants} == before


def test_perplexity_then_profile_then_recommend(manifest, recipe):
    quality, _ = pipeline.evaluate(recipe)
    assert [q.status for q in quality] == ["ok"] * 3
    vocab = 320
    from toolkit.quality.corpus import corpus_path

    passages, current = [], ""  # whole lines, each passage >= 2 x ctx = 128 bytes; the second of each pair is scored
    for line in corpus_path("flores-eng").read_text(encoding="utf-8").splitlines(keepends=True):
        current += line
        if len(current.encode()) >= 128:
            passages, current = [*passages, current], ""
    for q in quality:
        assert 1 < q.perplexity < 10 * vocab  # a random model is near-uniform over its vocabulary
        assert q.chunks == 2 and q.bytes_scored == len(passages[1].encode()) + len(passages[3].encode())
        assert q.tokens_scored == quality[0].tokens_scored > 2 * 32  # every variant scores the reference's tokens
        assert q.bits_per_byte == pytest.approx(math.log(q.perplexity) * q.tokens_scored / q.bytes_scored / math.log(2),
                                                rel=1e-3)
    report, path = pipeline.profile(recipe)
    assert path.exists()
    assert [p.status for p in report.profiles] == ["ok"] * 3, [p.reason for p in report.profiles]
    for p in report.profiles:
        assert p.load_ms > 0 and p.peak_rss_mb > 50
        assert [t.prompt_tokens for t in p.prompts] == [16, 64]
        assert 1 <= p.rounds <= recipe.device.max_rounds and len(p.peak_rss_mb_runs) == p.rounds
        assert all(t.ttft_ms.n == 3 * p.rounds and t.ttft_ms.median > 0 for t in p.prompts)
        assert p.decode_tps.n == 3 * p.rounds and p.decode_tps.median > 0
        assert p.decode_tps.runs == ([3] * p.rounds if p.rounds > 1 else [])
        assert p.itl_ms.p90 >= p.itl_ms.median
        assert p.runtime_decode_tps is not None and p.runtime_decode_tps.median > 0
    assert report.device.threads_used == 2 and report.device.cpu_model
    assert report.device.runtimes["llama_cpp_python"]
    assert len(report.quality) == 3
    rec = recommend(report, recipe.budget)
    assert rec.pick in {v.id for v in manifest.variants}
    assert all(r.verdict for r in rec.rows)
    assert max(p.rounds for p in report.profiles) >= recipe.device.rounds  # the pick is a contender: fresh processes
    assert rec.certification is not None and [r.status for r in rec.certification.runs] == ["ok"] * 3
    assert "Certified: meets the budget in 3/3 fresh runs" in rec.message
    assert {r.variant_id: r.rounds for r in rec.rows} == {p.variant_id: p.rounds for p in report.profiles}
    impossible = recipe.budget.model_copy(update={"min_decode_tps": 1e9})
    rec = recommend(report, impossible)
    assert rec.pick is None and "No variant meets the budget" in rec.message


# What `pip install -e .` leaves out (the `build` and `onnx` extras): a device install
NOT_ON_A_DEVICE = ("torch", "transformers", "optimum", "lm_eval", "accelerate", "sentencepiece", "datasets", "onnx",
                   "onnxruntime", "onnxruntime_genai", "onnx_ir", "tokenizers")


def test_a_device_install_profiles_a_packed_workspace_without_the_build_tools(recipe, tmp_path, tiny_llama):
    """The build machine evaluates and packs (`toolkit pack`); on a device with only `pip install -e .` (no torch,
    converters, lm-eval or ONNX Runtime) the bundle unpacked into another workspace, with the build machine's gone,
    is profiled by every process of `toolkit profile` (the per-variant children too), then recommended and
    exported, the report carrying the fidelity and accuracy the build machine scored; `compress` there stops in one
    line that names the missing tools and the extra that brings them. (`recipe` holds the compressed ladder;
    nothing in this process opens its workspace, which would lock it.)"""
    device = tmp_path / "device"
    device.mkdir()
    (device / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({NOT_ON_A_DEVICE!r}))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(device), os.environ.get("PYTHONPATH")]))}

    def tiny(workspace: Path) -> Path:
        return write_recipe(tmp_path / f"{workspace.name}.yaml", f"""
            name: tiny
            workspace: {workspace}
            reports_dir: {tmp_path / 'reports'}
            candidates: [{{model: {tiny_llama}, name: tiny-llama}}]
            variants: {{gguf: {{quants: [F16, Q8_0, Q4_K_M]}}}}
            device: {{threads: 2, prompt_lengths: [16], decode_tokens: 8, repeats: 2, rounds: 1, max_rounds: 1,
                      certify_runs: 1, timeout_s: 300}}
            quality: {{ctx: 64, chunks: 2}}
            accuracy: {{tasks: [mmlu_offline], limit: 4}}
            budget: {{ttft_prompt_tokens: 16, min_decode_tps: 1}}
            """)

    def toolkit(*args: str, here: dict = env) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "toolkit.cli", *args], env=here, capture_output=True, text=True,
                              timeout=900)

    build, bundle = tiny(tmp_path / "ws"), tmp_path / "tiny-device.tar"
    for step in (("evaluate", str(build)), ("pack", str(build), "--out", str(bundle))):  # on the build machine
        done = toolkit(*step, here=dict(os.environ))
        assert done.returncode == 0, done.stdout + done.stderr
    (tmp_path / "ws").rename(tmp_path / "ws-elsewhere")  # the device cannot see the build machine's files
    small = tiny(tmp_path / "device-ws")
    with tarfile.open(bundle) as tar:
        tar.extractall(tmp_path / "device-ws", filter="data")

    blocked = toolkit("compress", str(small))
    assert blocked.returncode == 2 and blocked.stdout.count("\n") == 1, blocked.stdout + blocked.stderr
    assert "toolkit compress needs the build tools, and this install has no torch, transformers, optimum, lm-eval" in blocked.stdout
    assert "pip install -e '.[build]'" in blocked.stdout
    out = tmp_path / "device.json"
    profiled = toolkit("profile", str(small), "--out", str(out))
    assert profiled.returncode == 0, profiled.stdout + profiled.stderr
    report = DeviceReport.load(out)
    assert [p.status for p in report.profiles] == ["ok"] * 3 and "torch" not in report.device.runtimes
    assert all(Path(v.path).is_relative_to(tmp_path / "device-ws") for v in report.variants)
    # what the build machine scored, found without lm-eval here (workspace.scorers)
    assert [q.status for q in report.quality] == ["ok"] * 3 and [a.status for a in report.accuracy] == ["ok"] * 3
    assert [c.certified for c in report.certifications] == [True]  # the pick re-measured, through recommend
    decided = toolkit("recommend", str(small), "--report", str(out), "--no-images")
    assert decided.returncode == 0 and "Run tiny-llama" in decided.stdout, decided.stdout + decided.stderr
    exported = toolkit("export", str(small), "--report", str(out))
    assert exported.returncode == 0 and "llama-server" in exported.stdout, exported.stdout + exported.stderr


def test_a_workspace_copied_to_another_path_finds_its_variant_files_there(tmp_path):
    """A workspace copied by hand keeps the build machine's absolute paths in its manifest: each variant's file is
    found under this workspace's `variants/` instead; a path that exists, or that is not in a workspace, stays."""
    from toolkit.pipeline.workspace import here

    ws = tmp_path / "device-ws"
    (ws / "variants" / "m-q8").mkdir(parents=True)
    (ws / "variants" / "m-q8" / "model.gguf").write_bytes(b"GGUF")
    assert here("/build/ws/variants/m-q8/model.gguf", ws) == str(ws / "variants" / "m-q8" / "model.gguf")
    assert here("variants/m-q8/model.gguf", ws) == str(ws / "variants" / "m-q8" / "model.gguf")  # a bundle's
    assert here("/build/ws/variants/gone/model.gguf", ws) == "/build/ws/variants/gone/model.gguf"
    assert here("/cache/models/m.gguf", ws) == "/cache/models/m.gguf"
    assert here(str(tmp_path), ws) == str(tmp_path)


def test_broken_variant_is_recorded_and_the_sweep_goes_on(manifest, recipe, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 4096)
    broken = manifest.variants[2].model_copy(update={"id": "tiny-broken", "label": "broken", "path": str(bad), "sha256": "0" * 64})
    write_json(recipe.workspace_dir() / "manifest.json", Manifest(recipe="tiny", variants=[broken, manifest.variants[2]]))
    assert not (recipe.workspace_dir() / "profiles").exists()  # nothing measured before: the "ok" below is this run's
    once = recipe.device.model_copy(update={"rounds": 1, "max_rounds": 1, "certify_runs": 0})  # one process per variant
    report, _ = pipeline.profile(recipe.model_copy(update={"device": once}))
    assert report.profiles[0].status == "crash"
    assert "could not load" in report.profiles[0].reason
    assert report.profiles[1].status == "ok"


def _job(variant, recipe, corpus):
    return jobs.measure_job(recipe, variant, "profile", corpus).model_dump(mode="json")


def test_memory_cap_and_timeout_are_results_not_failures(manifest, recipe, tmp_path):
    from toolkit.quality.corpus import corpus_path

    job = _job(manifest.variants[0], recipe, corpus_path("flores-eng"))
    oom = run_child(job, timeout_s=120, memory_cap_mb=30, log_path=tmp_path / "oom.log")
    assert oom.status == "oom" and "cap of 30 MB" in oom.reason
    slow = run_child(job | {"repeats": 100_000}, timeout_s=2, memory_cap_mb=None, log_path=tmp_path / "slow.log")
    assert slow.status == "timeout" and "within 2 s" in slow.reason


def test_cli_bad_recipe_is_one_line(tmp_path):
    bad = write_recipe(tmp_path / "bad.yaml", "name: t\ncandidates: [{model: x}]\nvariants: {gguf: {quants: [Q7]}}\n")
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "compress", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bad.yaml: variants.gguf.quants: unknown quant type 'Q7'" in lines[0]


def test_unknown_model_architecture_is_clear(tmp_path, tiny_llama):
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(tiny_llama, odd)
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["NoSuchForCausalLM"]
    (odd / "config.json").write_text(json.dumps(config))
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", f"name: odd\nworkspace: {tmp_path / 'ws'}\ncandidates: [{{model: {odd}}}]\n"))
    with pytest.raises(UserError, match="cannot convert .* to GGUF: .*NoSuchForCausalLM"):
        pipeline.compress(recipe)
    # nothing half-written stays: no GGUF, no temporary (`.NAME.PID.XXXX.part`), no variant; only the lock and the
    # converter's log
    left = sorted(str(p.relative_to(tmp_path / "ws")) for p in (tmp_path / "ws").rglob("*") if p.is_file())
    assert [p for p in left if not (p.startswith("logs/") and p.endswith(".log"))] == [".lock"], left
    # every default quant starts from the F16 conversion: it ran once, and its log is named after the model
    assert [p.split("-f16-")[0] for p in left if p.startswith("logs/convert-")] == ["logs/convert-odd"], left


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--max-memory-mb", "-5", "budget.max_memory_mb: Input should be greater than 0"),
    ("--priority", "fastest", "budget.priority: Input should be 'balanced'"),
])
def test_cli_bad_budget_flag_is_one_line(flag, value, words):
    from pathlib import Path

    demo = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "recommend", str(demo), flag, value],
                          capture_output=True, text=True, env={**__import__("os").environ, "COLUMNS": "300"})
    assert done.returncode == 2
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0] and "demo.yaml" in lines[0]


def test_candidates_build_side_by_side_in_recipe_order(built, tiny_llama, tmp_path, monkeypatch):
    """Two candidates built at once (two cores, memory for both) give the variant a one-at-a-time build gave (the
    module's ladder), byte for byte, in the recipe's order; with one core, or a candidate of unknown size, one at
    a time."""
    from toolkit.pipeline import local as build
    from toolkit.pipeline.build import candidate_params
    from toolkit.pipeline.local import local_build_width

    def two(folder: Path, first: str = str(tiny_llama)):
        folder.mkdir(exist_ok=True)
        return load_recipe(write_recipe(folder / "two.yaml", f"""
            name: two
            workspace: {folder / 'ws'}
            candidates:
              - model: {first}
                name: tiny-b
              - model: {tiny_llama}
                name: tiny-a
            variants:
              gguf:
                quants: [Q8_0]
            """))
    monkeypatch.setattr(build, "usable_cpus", lambda: 2)
    side_by_side = two(tmp_path / "side")
    assert local_build_width(side_by_side) == 2
    assert candidate_params(side_by_side.candidates[0], side_by_side) > 0
    together = pipeline.compress(side_by_side)
    serial = next(v for v in Manifest.load(built / "manifest.json").variants if v.quant == "Q8_0")
    assert [v.label for v in together.variants] == ["tiny-b Q8_0", "tiny-a Q8_0"]
    assert [v.sha256 for v in together.variants] == [serial.sha256] * 2
    monkeypatch.setattr(build, "usable_cpus", lambda: 1)
    assert local_build_width(side_by_side) == 1
    monkeypatch.setattr(build, "usable_cpus", lambda: 2)
    assert local_build_width(two(tmp_path / "hub", "hf:someone/unknown-model")) == 1  # size unknown until fetched
    monkeypatch.setattr(build, "BUILD_BYTES_PER_PARAM", 1 << 40)  # no room for two builds
    assert local_build_width(side_by_side) == 1


def test_evaluation_jobs_run_two_at_once_with_the_same_numbers(recipe, manifest, monkeypatch):
    """With two threads, fidelity runs the reference, then the other two variants at once with one thread each,
    and gets the numbers one job at a time with both threads gets."""
    import shutil
    import threading

    from toolkit.pipeline import local
    from toolkit.pipeline.fidelity import fidelity
    from toolkit.pipeline.workspace import corpus

    running, peak, threads, lock = [0], [0], [], threading.Lock()
    original = jobs.run

    def tracked(job, *args):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            threads.append(job.threads)
        try:
            return original(job, *args)
        finally:
            with lock:
                running[0] -= 1
    monkeypatch.setattr(jobs, "run", tracked)
    assert local.local_job_width(recipe, manifest.variants) == 2
    together = fidelity(recipe, manifest, corpus(recipe))
    assert peak[0] == 2 and threads == [1, 1, 1]
    for folder in ("quality", "fidelity"):
        shutil.rmtree(recipe.workspace_dir() / folder)
    monkeypatch.setattr(local, "JOBS_AT_ONCE", 1)
    peak[0], threads[:] = 0, []
    alone = fidelity(recipe, manifest, corpus(recipe))
    assert peak[0] == 1 and threads == [2, 2, 2]
    figures = ("perplexity", "bits_per_byte", "kl_mean", "kl_p99", "top1_agreement", "status")
    assert [q.model_dump(include=set(figures)) for q in together] == [q.model_dump(include=set(figures)) for q in alone]
    assert all(q.status == "ok" for q in alone) and alone[1].kl_mean > 0
    monkeypatch.setattr(local, "JOB_OVERHEAD_BYTES", 1 << 50)  # no room for two
    assert local.local_job_width(recipe, manifest.variants) == 1


def test_quants_alone_are_measured_from_the_source_not_from_one_of_them(tiny_llama, tmp_path):
    """A recipe whose every variant is quantized (GGUF Q8_0 and Q4_K_M of an HF checkpoint, no F16): fidelity's
    base is the checkpoint as shipped, run by transformers in fp32, and no candidate. Before, it was the Q8_0 (KL 0)."""
    recipe = load_recipe(write_recipe(tmp_path / "quants.yaml", f"""
        name: quants
        workspace: {tmp_path / 'ws'}
        candidates: [{{model: {tiny_llama}, name: tiny-llama}}]
        variants: {{gguf: {{quants: [Q8_0, Q4_K_M]}}}}
        device: {{threads: 2, prompt_lengths: [16], decode_tokens: 8, repeats: 2, rounds: 1, max_rounds: 1, certify_runs: 0}}
        quality: {{ctx: 64, chunks: 2}}
        """))
    manifest = pipeline.compress(recipe)
    assert [v.quant for v in manifest.variants] == ["Q8_0", "Q4_K_M"]
    [source] = manifest.references
    assert (source.format, source.runtime, source.as_shipped, Path(source.path)) == ("hf", "torch", True, tiny_llama)
    assert source.unquantized and all(v.unquantized is False for v in manifest.variants)
    from toolkit.pipeline.fidelity import fidelity
    from toolkit.pipeline.workspace import corpus

    quality = fidelity(recipe, manifest, corpus(recipe))
    assert [q.variant_id for q in quality] == [v.id for v in manifest.variants]  # the source is scored, not listed
    assert all(q.status == "ok" and q.reference_id == source.id for q in quality), [q.reason for q in quality]
    q8, q4 = quality
    assert 0 < q8.kl_mean < q4.kl_mean and q8.top1_agreement > 0.9
    assert Manifest.load(recipe.workspace_dir() / "manifest.json").references == [source]
    report, _ = pipeline.profile(recipe, formats=["gguf"])  # a format filter keeps the base the results are keyed by
    assert report.references == [source] and [q.kl_mean for q in report.quality] == [q8.kl_mean, q4.kl_mean]
    assert any(n.startswith("Fidelity base: tiny-llama's KL") for n in recommend(report, recipe.budget).notes)
