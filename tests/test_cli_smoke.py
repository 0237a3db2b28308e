"""Every command of the CLI, invoked the way a user types it (typer's CliRunner, in this process), on the fake
format of tests/fakes.py: no model, seconds per command. Each test has its own workspace and reports folder;
the commands that read a device report get a copy of one that the fake pipeline profiled once for this module
(or, for deploy and export, which need GGUF picks, the synthetic report of test_costs_reports)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tests import fakes
from tests.conftest import run_console, write_recipe
from tests.factories import ladder_report
from toolkit.cli import app
from toolkit.errors import UserError
from toolkit.io import write_json
from toolkit.profiling.roofline import Roofline
from toolkit.records import DeviceReport, Manifest

pytestmark = pytest.mark.pypi_data  # the fake pipeline's fidelity and prompts read the corpus
ROOT = Path(__file__).resolve().parent.parent
PROVIDERS = {"providers": [
    {"id": "cheap", "provider": "A", "model": "small", "usd_per_1m_input": 0.1, "usd_per_1m_output": 0.4, "ttft_ms": 300,
     "tokens_per_s": 100},
    {"id": "dear", "provider": "B", "model": "big", "usd_per_1m_input": 1.0, "usd_per_1m_output": 4.0, "ttft_ms": 300,
     "tokens_per_s": 100},
]}


def fake_recipe(folder: Path) -> Path:
    """A recipe over the fake format, with its workspace, reports and cloud catalogue inside `folder`."""
    source = fakes.fake_source(folder / "fake-model")
    (folder / "providers.yaml").write_text(yaml.safe_dump(PROVIDERS), encoding="utf-8")
    return write_recipe(folder / "fake.yaml", f"""
        name: fake
        workspace: {folder / 'ws'}
        reports_dir: {folder / 'reports'}
        candidates: [{{model: {source}, name: fakelm}}]
        variants: {{gguf: null, fake: {{speeds: [1, 4], noise: 0.5}}}}
        device: {{prompt_lengths: [32], decode_tokens: 8, repeats: 3, warmup: 0, rounds: 1, max_rounds: 2, certify_runs: 1,
                  power: {{idle_w: 5, busy_w: 10}}}}
        quality: {{ctx: 64, chunks: 2}}
        cloud: {{providers: {folder / 'providers.yaml'}}}
        cluster: {{rpm: 20, window_s: 60, rate_per_s: 0.3, duration_s: 120}}
        """)


def invoke(*args: str | Path) -> str:
    """Run `toolkit ARGS`; the command must succeed. Returns its output, joined into one line per line."""
    result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def profiled(tmp_path_factory) -> Path:
    """A device report of the fake ladder (compress, evaluate, profile once), read-only for the tests."""
    from toolkit import pipeline
    from toolkit.recipe import load_recipe

    folder = tmp_path_factory.mktemp("profiled")
    with pytest.MonkeyPatch.context() as patch:
        fakes.install(patch)
        recipe = load_recipe(fake_recipe(folder))
        pipeline.compress(recipe)
        pipeline.evaluate(recipe)
        _, path = pipeline.profile(recipe)
    return path


@pytest.fixture
def recipe(tmp_path, monkeypatch) -> Path:
    fakes.install(monkeypatch)
    return fake_recipe(tmp_path)


@pytest.fixture
def report(profiled, tmp_path) -> Path:
    """This test's copy of the profiled fake report."""
    return Path(shutil.copy(profiled, tmp_path / profiled.name))


@pytest.fixture
def gguf_report(tmp_path) -> Path:
    """A synthetic device report whose variants are GGUF files (deploy and export need them), with a roofline."""
    rep = ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35)])
    rep.roofline = Roofline(bandwidth_gbs=10, gflops=100, threads=2)
    path = tmp_path / "device-gguf.json"
    write_json(path, rep)
    return path


def test_models_lists_every_catalogue_card():
    out = invoke("models")
    ids = [yaml.safe_load(p.read_text(encoding="utf-8"))["id"] for p in sorted((ROOT / "models").glob("*.yaml"))]
    assert ids and all(i in out for i in ids)


def test_tasks_lists_the_offline_tasks():
    out = invoke("tasks")
    for name in ("mmlu_offline", "social_iqa_bb", "strategyqa_bb", "winowhy_bb", "gsm8k_offline"):
        assert name in out


def test_compress_writes_the_manifest(recipe, tmp_path):
    out = invoke("compress", recipe)
    manifest = Manifest.load(tmp_path / "ws" / "manifest.json")
    assert [(v.format, v.quant) for v in manifest.variants] == [("fake", "x1"), ("fake", "x4")]
    assert all(Path(v.path).is_file() for v in manifest.variants) and "x1" in out and "x4" in out


def test_evaluate_scores_every_variant(recipe, tmp_path):
    invoke("compress", recipe)
    out = invoke("evaluate", recipe)
    stored = sorted((tmp_path / "ws" / "quality").glob("*.json"))
    quality = [json.loads(p.read_text(encoding="utf-8")) for p in stored]
    assert len(quality) == 2 and all(q["status"] == "ok" for q in quality)
    assert sorted(q["kl_mean"] for q in quality)[0] == 0.0  # the exact variant is the reference
    assert "fakelm fake x1" in out and "fakelm fake x4" in out


def test_profile_out_threads_and_format(recipe, tmp_path):
    invoke("compress", recipe)
    target = tmp_path / "elsewhere" / "device.json"
    out = invoke("profile", recipe, "--out", target, "--threads", "1", "--format", "fake", "--device-label", "pi5-a")
    assert f"device report: {target} (2 ok, 0 not ok)" in " ".join(out.split())
    report = DeviceReport.load(target)
    assert report.device.threads_used == 1 and [p.status for p in report.profiles] == ["ok", "ok"]
    assert report.device.label == "pi5-a" and "label" not in report.profiles[0].settings
    assert not list((tmp_path / "ws" / "reports").glob("device-*.json"))  # --out: written there only
    result = CliRunner().invoke(app, ["profile", str(recipe), "--format", "gguf"])
    assert isinstance(result.exception, UserError) and "no variant of format gguf" in str(result.exception)


def test_recommend_writes_reports_and_takes_budget_flags(recipe, report, tmp_path):
    out = " ".join(invoke("recommend", recipe, "--report", report, "--no-images").split())
    rec = json.loads(next((tmp_path / "reports").glob("recommendation-*.json")).read_text(encoding="utf-8"))
    assert rec["answer"] == "edge" and f"Run {rec['pick_label']} on" in out
    assert all((tmp_path / "reports" / f"recommendation-{rec['device_id']}.{ext}").exists() for ext in ("md", "html"))
    # 1 MB: no edge process fits, while the cloud is not held to the device's memory
    out = " ".join(invoke("recommend", recipe, "--report", report, "--no-images", "--max-memory-mb", "1").split())
    assert "No edge variant meets the budget" in out and "Cloud fallback: A small" in out  # the cheaper provider


def test_report_rebuilds_without_measuring(recipe, report, tmp_path):
    out = invoke("report", recipe, "--report", report, "--no-images")
    written = {line.split(": ", 1)[0]: Path(line.split(": ", 1)[1]) for line in out.splitlines() if ": " in line}
    assert {"json", "md", "html"} <= set(written) and all(p.exists() for p in written.values())
    assert not (tmp_path / "ws").exists()  # nothing measured, no workspace touched


def test_predict_for_a_described_device_and_against_measurements(recipe, report, tmp_path):
    out = " ".join(invoke("predict", recipe, "--report", report).split())
    assert "measured / predicted, median: decode" in out
    invoke("compress", recipe)
    manifest = Manifest.load(tmp_path / "ws" / "manifest.json")
    out = invoke("predict", recipe, "--bandwidth-gbs", "0.001", "--gflops", "1")
    for v in manifest.variants:  # roofline by hand: bytes of weights read once per token at 1 MB/s
        assert f"{1e6 / v.size_bytes:,.1f}" in out
    result = CliRunner().invoke(app, ["predict", str(recipe), "--bandwidth-gbs", "1"])
    assert isinstance(result.exception, UserError) and "give both --bandwidth-gbs and --gflops" in str(result.exception)
    for flags in (["--bandwidth-gbs", "0", "--gflops", "1"], ["--bandwidth-gbs", "-3", "--gflops", "1"]):
        result = CliRunner().invoke(app, ["predict", str(recipe), *flags])  # 0 was taken for "not given"; -3 predicted
        assert isinstance(result.exception, UserError) and "--bandwidth-gbs must be above 0" in str(result.exception)


def test_simulate_writes_every_policy(recipe, report, tmp_path):
    invoke("simulate", recipe, "--report", report, "--rate", "0.5", "--duration-s", "60")
    data = json.loads((tmp_path / "reports" / "simulation.json").read_text(encoding="utf-8"))
    assert data["cloud"] == "cheap" and data["cluster"]["rate_per_s"] == 0.5 and data["cluster"]["duration_s"] == 60
    assert sorted(r["policy"] for r in data["results"]) == ["load_aware", "random", "weighted"]


def test_deploy_writes_servers_and_router(recipe, gguf_report, tmp_path):
    invoke("deploy", recipe, "--report", gguf_report, "--out", tmp_path / "deploy", "--policy", "random")
    config = yaml.safe_load((tmp_path / "deploy" / "litellm.yaml").read_text(encoding="utf-8"))
    assert config["router_settings"]["routing_strategy"] == "simple-shuffle"
    assert [m["model_name"] for m in config["model_list"]] == ["edge", "cloud"]
    assert "llama_cpp.server" in (tmp_path / "deploy" / "servers.sh").read_text(encoding="utf-8")
    result = CliRunner().invoke(app, ["deploy", str(recipe), "--report", str(gguf_report), "--policy", "fastest"])
    assert isinstance(result.exception, UserError) and result.exception.field == "--policy"


def test_export_writes_the_hand_off(recipe, gguf_report, report, tmp_path):
    invoke("export", recipe, "--report", gguf_report, "--out", tmp_path / "export")
    modelfile = (tmp_path / "export" / "Modelfile").read_text(encoding="utf-8")
    assert modelfile.startswith("#") or "FROM" in modelfile
    assert (tmp_path / "export" / "llama-server.sh").stat().st_mode & 0o111
    result = CliRunner().invoke(app, ["export", str(recipe), "--report", str(report), "--out", str(tmp_path / "x")])
    assert isinstance(result.exception, UserError) and "no hand-off for format 'fake'" in str(result.exception)


def test_paper_recomputes_table_one():
    out = invoke("paper")
    assert "computed cents" in " ".join(out.split()) and " no " not in out.replace("\n", " ")


def test_doctor_with_a_recipe(recipe):
    result = CliRunner().invoke(app, ["doctor", str(recipe)], env={"COLUMNS": "250"})
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    statuses = [ln.split()[0] for ln in lines[:-1] if ln.split()[0] in ("ok", "warn", "FAIL")]
    assert lines[-1].startswith(f"{len(statuses)} checks: ")
    assert result.exit_code == (1 if "FAIL" in statuses else 0)


def test_schemas_writes_valid_schemas(tmp_path):
    out = invoke("schemas", "--out", tmp_path)
    written = sorted(tmp_path.glob("*.schema.json"))
    assert [p.name for p in written] == ["device-report.schema.json", "recommendation.schema.json"]
    assert all(str(p) in out for p in written)
    assert all(json.loads(p.read_text(encoding="utf-8"))["$schema"].endswith("2020-12/schema") for p in written)


def test_a_user_error_is_one_line_and_exit_2(recipe, monkeypatch, capsys):
    """What `toolkit` (the console script) does with a UserError: one line, exit status 2."""
    code = run_console(monkeypatch, "profile", str(recipe))  # no manifest yet
    assert code == 2
    out = capsys.readouterr()
    errors = [ln for ln in out.out.splitlines() if ln.startswith("error: ")]  # (after the progress bar's first line)
    assert len(errors) == 1 and "no manifest yet; run `toolkit compress" in errors[0] and "Traceback" not in out.out + out.err
