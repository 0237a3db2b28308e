"""Terminal tables that fit (compact by default, --wide on request, plain text in a pipe) and `toolkit doctor`."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tests.conftest import write_recipe
from tests.factories import CLOUDS, ladder_report
from toolkit import render
from toolkit.cli import app
from toolkit.doctor import Check, check_runtime, run_checks
from toolkit.recipe import Budget, Costs, load_recipe
from toolkit.recommend.engine import recommend
from toolkit.records import DeviceReport

DEMO = Path(__file__).resolve().parent.parent / "reports" / "smollm2-formats" / "devices"
BOX = set("┏┓┗┛┃━│─┌┐└┘├┤┬┴┼╇╈╋┡┩")


def _printed(monkeypatch, table, wide: bool = False) -> str:
    out = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=out, width=80))  # a pipe: not a terminal
    render.show(table, wide)
    return out.getvalue()


def _rec():
    if DEMO.is_dir():  # the demo's 15 variants with their long verdicts
        budget = Budget(max_ttft_ms=2000, ttft_prompt_tokens=512, min_decode_tps=20, max_memory_mb=1024, max_kl=0.1)
        return recommend(DeviceReport.load(sorted(DEMO.glob("device-*.json"))[-1]), budget, Costs(), CLOUDS)
    return recommend(ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35)]), Budget(max_ttft_ms=700), Costs(), CLOUDS)


def test_compact_table_fits_100_columns_as_plain_text(monkeypatch):
    rec = _rec()
    text = _printed(monkeypatch, render.recommendation_table(rec, plain_text=True))
    lines = text.splitlines()
    assert max(map(len, lines)) <= 100 and not BOX & set(text)
    assert all(line == line.rstrip() for line in lines)
    header = next(line for line in lines if "variant" in line)
    assert "TTFT p90 ms" in header and "deploy MB" in header and "verdict" in header and "bpw" not in header
    col = header.index("verdict")
    cells = " ".join(line[col:].strip() for line in lines[lines.index(header) + 1:])
    assert all(" ".join(r.verdict.split()) in cells for r in rec.rows)  # wrapped at spaces, never inside a word
    pick = next(r for r in rec.rows if r.variant_id == rec.pick)
    assert any(line.startswith("*") and pick.quant in line for line in lines)


def test_wide_table_has_every_column_on_one_line_per_variant(monkeypatch):
    rec = _rec()
    text = _printed(monkeypatch, render.recommendation_table(rec, wide=True, plain_text=True), wide=True)
    assert not BOX & set(text)
    header = next(line for line in text.splitlines() if "variant" in line)
    for col in ("MB", "bpw", "prefill tok/s", "decode tok/s p50/p10", "ITL p50/p90 ms", "J/resp", "USD/1k", "front", "why"):
        assert col in header
    assert all(sum(r.label in line for line in text.splitlines()) == 1 for r in rec.rows)


def test_terminal_tables_keep_box_art():
    table = render.recommendation_table(_rec(), plain_text=False)
    out = io.StringIO()
    Console(file=out, width=100, force_terminal=True).print(table)
    assert "─" in out.getvalue()


def test_doctor_fails_with_a_fix_when_a_runtime_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    # onnxruntime-genai imports onnxruntime: whether an earlier test already imported it must not matter
    monkeypatch.delitem(sys.modules, "onnxruntime_genai", raising=False)
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 1, result.output
    line = next(line for line in result.output.splitlines() if line.split()[1:2] == ["onnxruntime"])
    assert line.startswith("FAIL") and "Fix: .venv/bin/pip install 'onnxruntime==" in line
    assert "(needed: onnxruntime, onnxruntime-genai)" in result.output


def test_doctor_passes_here_with_one_line_per_check():
    checks = run_checks()
    assert [c for c in checks if c.status == "FAIL"] == []
    names = [c.name for c in checks]
    for name in ("python", "llama.cpp", "onnxruntime", "torch", "gptqmodel", "cpu", "energy", "energy/rapl", "disk", "memory",
                 "cache", "offline packages", "browser"):
        assert name in names
    assert all("\n" not in c.line() for c in checks)
    assert all(c.fix for c in checks if c.status != "ok")
    genai = next(c for c in checks if c.name == "onnxruntime-genai")  # its own build flags, not torch's ("?")
    assert "devices: cpu" in genai.line() and "?" not in genai.line()


def test_doctor_line_carries_the_fix():
    line = Check("disk", "FAIL", "0.5 GiB free", "free space").line()
    assert line.startswith("FAIL") and line.endswith("Fix: free space")
    assert "Fix" not in Check("disk", "ok", "50 GiB free", "free space").line()


@pytest.mark.parametrize("missing", ["plotly", "lm_eval"])
def test_doctor_names_a_missing_package(monkeypatch, missing):
    from toolkit import doctor

    real = doctor.importable
    monkeypatch.setattr(doctor, "importable", lambda module: module != missing and real(module))
    check = doctor.check_packages()
    assert check.status == "FAIL" and doctor.PACKAGES[missing] in check.detail and "pip install" in check.fix


BUILD_MODULES = ("torch", "transformers", "optimum", "lm_eval", "sentencepiece", "accelerate")


def test_a_device_install_is_told_what_it_can_do_not_failed(monkeypatch, tmp_path):
    """`pip install -e .` (DEVICE=1 ./scripts/setup.sh) has no build tools and, without `[onnx]`, no ONNX Runtime:
    doctor warns with the extra to install, and FAILs only where the recipe has ONNX variants to profile."""
    for module in (*BUILD_MODULES, "onnxruntime", "onnxruntime_genai"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    checks = {c.name: c for c in run_checks()}
    for name in ("torch", "packages", "onnxruntime", "onnxruntime-genai"):
        assert checks[name].status == "warn", checks[name].line()
    assert "'.[build]'" in checks["torch"].fix and "'.[build]'" in checks["packages"].fix
    assert "'.[onnx]'" in checks["onnxruntime"].fix
    onnx = load_recipe(write_recipe(tmp_path / "onnx.yaml", "name: o\ncandidates: [{model: x}]\nvariants: {onnx: {}}\n"))
    assert check_runtime("onnxruntime", onnx).status == "FAIL"
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0 and "Fix: .venv/bin/pip install -e '.[build]'" in result.output  # not eaten as markup
    monkeypatch.delitem(sys.modules, "torch")  # one build tool here: a broken install, not a device's
    assert {c.name: c for c in run_checks()}["packages"].status == "FAIL"


def test_doctor_checks_that_every_candidate_resolves(tmp_path, monkeypatch):
    import huggingface_hub

    from tests.conftest import write_recipe
    from toolkit.doctor_recipe import check_candidates
    from toolkit.recipe import load_recipe

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, **kw: None)  # the hub answers
    (tmp_path / "local.gguf").write_bytes(b"GGUF")
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", """
        name: c
        candidates: [{model: smollm2-135m-instruct}, {model: nope-model}, {model: ./local.gguf}, {model: "hf:org/name"}]
        """))
    checks = check_candidates(recipe)
    assert [c.status for c in checks] == ["ok", "FAIL", "ok", "ok"]
    assert checks[1].detail.startswith(f"{recipe.path}: candidates.1.model: model 'nope-model' is neither") and checks[1].fix
    assert "in the catalogue" in checks[0].detail and f"at {tmp_path / 'local.gguf'} (GGUF file)" in checks[2].detail
    assert "from the Hugging Face hub (reachable, or in its local cache)" in checks[3].detail
    assert check_candidates(None) == []


def test_doctor_fails_a_hub_candidate_this_machine_cannot_fetch(tmp_path, monkeypatch):
    """Unreachable and not cached: FAIL naming file and field (compress would fail after minutes); cached: ok."""
    import huggingface_hub

    from tests.conftest import write_recipe
    from toolkit.doctor_recipe import check_candidates
    from toolkit.recipe import load_recipe

    asked = []

    def model_info(self, repo, revision=None, timeout=None):
        asked.append((repo, revision, timeout))
        raise OSError("HTTPSConnectionPool(host='huggingface.co'): Max retries exceeded (Caused by NameResolutionError("
                      "\"[Errno -2] Name or service not known\"))")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", """
        name: h
        candidates: [{model: qwen2.5-0.5b-instruct}, {model: "hf:org/name"}]
        """))
    checks = check_candidates(recipe)
    assert asked == [("Qwen/Qwen2.5-0.5B-Instruct", "main", 5.0), ("org/name", "main", 5.0)]
    assert [c.status for c in checks] == ["FAIL", "FAIL"] and checks[0].fix
    assert checks[1].detail == (f"{recipe.path}: candidates.1.model: hf:org/name: cannot fetch 'org/name' from the Hugging "
                                "Face hub (https://huggingface.co unreachable: Name or service not known), and it is "
                                "not in the local hub cache")
    cached = tmp_path / "config.json"
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, name, revision=None: str(cached) if repo == "org/name" and name == "config.json" else None)
    assert [c.status for c in check_candidates(recipe)] == ["FAIL", "ok"]


def test_doctor_checks_accuracy_tasks_that_are_not_offline_ones(tmp_path, monkeypatch):
    from tests.conftest import write_recipe
    from toolkit.doctor_recipe import check_tasks
    from toolkit.errors import UserError
    from toolkit.pipeline import accuracy
    from toolkit.recipe import load_recipe

    asked = []

    def task_dir(name):  # lm-eval's index takes seconds; its verdicts are tested with the accuracy stage
        asked.append(name)
        if name == "nope":
            raise UserError("unknown task 'nope'", field="accuracy.tasks")

    monkeypatch.setattr(accuracy, "task_dir", task_dir)
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", """
        name: t
        candidates: [{model: smollm2-135m-instruct}]
        accuracy: {tasks: [mmlu_offline, nope, arc_easy]}
        """))
    checks = check_tasks(recipe)
    assert asked == ["nope", "arc_easy"]  # offline tasks are the offline-packages check's
    assert [(c.name, c.status) for c in checks] == [("task nope", "FAIL"), ("task arc_easy", "ok")]
    assert checks[0].detail == f"{recipe.path}: accuracy.tasks: unknown task 'nope'" and checks[0].fix


def test_doctor_checks_that_every_cloud_option_is_priced(tmp_path):
    from tests.conftest import write_recipe
    from toolkit.doctor_recipe import check_cloud
    from toolkit.recipe import load_recipe

    def recipe(cloud: str):
        return load_recipe(write_recipe(tmp_path / "r.yaml", f"""
            name: k
            candidates: [{{model: smollm2-135m-instruct}}]
            cloud: {cloud}
            """))

    typo = check_cloud(recipe("{models: [gpt-4o-mini, gpt-4o-mnii]}"))
    assert [c.status for c in typo] == ["FAIL"] and typo[0].fix
    assert typo[0].detail.startswith(f"{tmp_path / 'r.yaml'}: cloud.models: LiteLLM's price map has no model 'gpt-4o-mnii'")
    assert "closest: gpt-4o-mini" in typo[0].detail
    priced = check_cloud(recipe("{models: [gpt-4o-mini]}"))
    assert [(c.status, c.detail) for c in priced] == [("ok", "1 priced: gpt-4o-mini")]
    assert check_cloud(recipe("{enabled: false, models: [gpt-4o-mnii]}")) == [] and check_cloud(None) == []


def test_run_refuses_an_unpriced_cloud_model_before_any_work(tmp_path, monkeypatch, capsys):
    from tests.conftest import run_console, write_recipe

    path = write_recipe(tmp_path / "r.yaml", f"""
        name: k
        workspace: {tmp_path / 'ws'}
        reports_dir: {tmp_path / 'reports'}
        candidates: [{{model: smollm2-135m-instruct}}]
        variants: {{gguf: {{quants: [Q4_0]}}}}
        cloud: {{models: [gpt-4o-mnii]}}
        """)
    assert run_console(monkeypatch, "run", str(path)) == 2  # a user error
    assert f"error: {path}: cloud.models: LiteLLM's price map has no model 'gpt-4o-mnii'" in capsys.readouterr().out
    assert not (tmp_path / "ws").exists()  # nothing compressed, nothing profiled


def test_the_native_llama_cpp_is_needed_only_by_recipes_that_choose_it(tmp_path, monkeypatch, capsys):
    """Chosen and not found in device.llama_cpp.bin_dir: doctor FAILs and run stops before any work; not chosen:
    its absence is fine; binaries in bin_dir: found, and the process environment is left as it was."""
    import os

    from tests.conftest import run_console, write_recipe
    from toolkit.doctor import check_runtime
    from toolkit.preflight import native_runtime_error
    from toolkit.recipe import load_recipe

    empty, built = tmp_path / "empty", tmp_path / "built"
    empty.mkdir()
    built.mkdir()
    for tool in ("llama-server", "llama-bench"):
        (built / tool).write_text("#!/bin/sh\n")
        (built / tool).chmod(0o755)
    monkeypatch.delenv("EDGEFIRST_LLAMA_CPP_BIN", raising=False)

    def recipe(llama_cpp: str):
        return write_recipe(tmp_path / "r.yaml", f"""
            name: nat
            workspace: {tmp_path / 'ws'}
            reports_dir: {tmp_path / 'reports'}
            candidates: [{{model: smollm2-135m-instruct}}]
            device: {{llama_cpp: {llama_cpp}}}
            """)

    missing = load_recipe(recipe(f"{{runtime: native, bin_dir: {empty}}}"))
    check = check_runtime("llama.cpp-native", missing)
    stop = f"{missing.path}: device.llama_cpp: chooses runtime: native, and llama.cpp-native is not installed here"
    assert check.status == "FAIL" and check.fix and check.detail.startswith(f"{stop} (no llama-server in {empty}")
    assert native_runtime_error(missing).one_line() == check.detail  # doctor and run say the same
    assert "EDGEFIRST_LLAMA_CPP_BIN" not in os.environ  # put back after the check
    assert run_console(monkeypatch, "run", str(missing.path)) == 2
    assert stop in capsys.readouterr().out
    assert not (tmp_path / "ws").exists()  # nothing compressed, nothing profiled
    bundled = load_recipe(recipe(f"{{bin_dir: {empty}}}"))
    assert check_runtime("llama.cpp-native", bundled).status == "ok" and native_runtime_error(bundled) is None
    assert native_runtime_error(load_recipe(recipe(f"{{runtime: native, bin_dir: {built}}}"))) is None
