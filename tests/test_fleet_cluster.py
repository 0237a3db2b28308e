from __future__ import annotations

import pytest
import yaml

from tests.conftest import write_recipe
from tests.factories import CLOUDS, FP, ladder_report
from toolkit.cluster import deploy_files, pick_cloud, sim_cloud, sim_devices, workload
from toolkit.errors import UserError
from toolkit.fleet import fleet_summary, load_reports, predict, predicted_vs_measured
from toolkit.io import write_json
from toolkit.profiling.roofline import Roofline
from toolkit.recipe import Budget, Costs, load_recipe
from toolkit.recommend.engine import recommend
from toolkit.simulate import compare


def _fleet(tmp_path):
    fast = ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35)])
    slow = ladder_report([(300, 2400, 12, 300, 30), (250, 2000, 20, 200, 35)])
    slow.device = FP.model_copy(update={"id": "dev2", "hostname": "pi"})
    fast.roofline = Roofline(bandwidth_gbs=10, gflops=100, threads=2)
    for i, rep in enumerate((fast, slow)):
        write_json(tmp_path / f"device-{i}.json", rep)
    return load_reports([tmp_path])


def test_fleet_reports_from_a_folder_and_summary(tmp_path):
    reports = _fleet(tmp_path)
    assert [r.device.id for r in reports] == ["dev1", "dev2"]
    recs = [recommend(r, Budget(min_decode_tps=15), Costs(), CLOUDS) for r in reports]
    rows = fleet_summary(recs)
    assert [row.answer for row in rows] == ["edge", "edge"]
    assert rows[1].pick == "m Q1"  # the only variant the slow device runs fast enough
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no device-\\*.json reports"):
        load_reports([empty])


def test_roofline_prediction_for_a_described_device_and_against_measurements(tmp_path):
    reports = _fleet(tmp_path)
    preds = predict(reports[0].variants, Roofline(bandwidth_gbs=10, gflops=100, threads=2), ram_mb=200)
    assert preds[0].decode_tps == pytest.approx(10e9 / 2**20, rel=1e-3)  # 1 MiB of weights at 10 GB/s
    assert all(not p.fits for p in predict(reports[0].variants, Roofline(bandwidth_gbs=10, gflops=100, threads=2), ram_mb=100))
    rows, summary = predicted_vs_measured(reports[0], 512)
    assert len(rows) == 2 and summary["prefill_measured_over_predicted_median"] is None  # no parameter counts
    # by hand: 1 MiB of weights at 10 GB/s -> 10e9 / 2**20 tok/s predicted; measured decode medians 50 and 80
    predicted = 10e9 / 2**20
    assert summary["decode_measured_over_predicted_median"] == pytest.approx((50 / predicted + 80 / predicted) / 2, abs=5e-4)
    slow = reports[0].model_copy(update={"roofline": Roofline(bandwidth_gbs=0.1, gflops=100, threads=2)})
    _, summary = predicted_vs_measured(slow, 512)  # 100x less bandwidth: a ratio that 3 decimals resolve
    assert summary["decode_measured_over_predicted_median"] == pytest.approx(65 / (0.1e9 / 2**20), abs=1e-3)  # 95.4 printed
    with pytest.raises(UserError, match="no roofline"):
        predicted_vs_measured(reports[1], 512)

    # prefill: 2 FLOPs per token for each parameter a prompt token is multiplied by. Of 100M parameters, 60M are
    # the embedding and output projection (Gemma 3 270M has 62%): 100 GFLOP/s / (2 x 40M) = 1,250 tok/s
    variants = [v.model_copy(update={"n_params": 100_000_000, "details": {"embedding_params": 60_000_000}})
                for v in reports[0].variants]
    assert [p.prefill_tps for p in predict(variants, Roofline(bandwidth_gbs=10, gflops=100, threads=2))] == [1250.0, 1250.0]
    variants[0].details = {}  # the files did not say: every parameter counts (500 tok/s)
    assert sorted(p.prefill_tps for p in predict(variants, Roofline(bandwidth_gbs=10, gflops=100, threads=2))) == [500.0, 1250.0]
    rows, summary = predicted_vs_measured(reports[0].model_copy(update={"variants": variants}), 512)
    # measured prefill at 512 tokens: 512 / TTFT median (800 and 600 ms) -> 640 and 853.3 tok/s
    assert summary["prefill_measured_over_predicted_median"] == pytest.approx((640 / 500 + 853.33 / 1250) / 2, abs=1e-3)


def test_simulation_and_deploy_files_from_the_fleet(tmp_path):
    reports = _fleet(tmp_path)
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", """
        name: fleet
        candidates: [{model: smollm2-135m-instruct}]
        cluster: {rpm: 20, window_s: 60, rate_per_s: 0.3, duration_s: 600}
        budget: {min_decode_tps: 15}
        """))
    recs = [recommend(r, recipe.budget, Costs(), CLOUDS) for r in reports]
    devices = sim_devices(recipe, reports, recs)
    assert len(devices) == 2 and devices[0].decode_tps > devices[1].decode_tps
    cloud = pick_cloud(recipe, CLOUDS, 512, 128)
    assert cloud.id == "cheap"
    results = compare(devices, sim_cloud(cloud, 512, 128), workload(recipe))
    assert {r.policy for r in results} == {"random", "weighted", "load_aware"}
    for rep in reports:  # deploy needs GGUF files to point at
        for v in rep.variants:
            v.format = "gguf"
    paths = deploy_files(recipe, reports, recs, cloud, tmp_path / "deploy")
    config = yaml.safe_load(paths["router"].read_text())
    edge = [m for m in config["model_list"] if m["model_name"] == "edge"]
    assert len(edge) == 2 and all(m["litellm_params"]["api_base"].startswith("http://127.0.0.1:") for m in edge)
    assert config["router_settings"]["fallbacks"] == [{"edge": ["cloud"]}]
    assert config["router_settings"]["routing_strategy"] == "usage-based-routing-v2"
    assert all(m["litellm_params"]["rpm"] == 21 for m in edge)  # router_rpm: LiteLLM stops one early
    servers = paths["servers"].read_text()
    assert servers.count("llama_cpp.server") == 2 and "--host 127.0.0.1" in servers
    assert servers.count("--n_ctx 2048 ") == 2  # the context `toolkit export` gives a 512 + 128 token response
    for v in reports[0].variants:  # ... within the model's own
        v.details["context_length"] = 1024
    assert "--n_ctx 1024 " in deploy_files(recipe, reports, recs, cloud, tmp_path / "short")["servers"].read_text()
    # a device profiled through its own llama-server (native runtime, 20 layers on its GPU) is served by it
    native = reports[1].model_copy(deep=True)
    for p in native.profiles:
        p.runtime, p.gpu_layers = "llama.cpp-native", 20
    servers = deploy_files(recipe, [reports[0], native], recs, cloud, tmp_path / "native")["servers"].read_text()
    lines = [ln for ln in servers.splitlines() if not ln.startswith("#")][1:]
    assert lines[0].startswith("python3 -m llama_cpp.server ") and "--n_threads" in lines[0]
    assert lines[1].startswith("llama-server --model ") and lines[1].endswith("--alias edge-1 --n-gpu-layers 20")
    assert "--host 127.0.0.1 --port 8082" in lines[1]


def test_unknown_cloud_provider_in_cluster(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", "name: f\ncandidates: [{model: x}]\ncluster: {cloud: nope}\n"))
    with pytest.raises(UserError, match="cluster.cloud: unknown cloud provider 'nope'"):
        pick_cloud(recipe, CLOUDS, 512, 128)


@pytest.mark.allow_hosts(["127.0.0.1"])  # binds a loopback port to hold it busy
def test_simulation_report_and_busy_port(tmp_path):
    import socket

    from toolkit.reports import simulation_reports
    from toolkit.serve import check_port_free
    from toolkit.simulate import SimCloud, SimDevice, Workload

    results = compare([SimDevice(name="a", ttft_s=0.2, decode_tps=50)], SimCloud(), Workload(duration_s=300))
    paths = simulation_reports(results, "t", tmp_path, images=False)
    page = paths["html"].read_text()
    assert all(page.count(f'"name":"{p}"') == 1 for p in ("p50", "p95", "p99")) and "load_aware" in paths["md"].read_text()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with pytest.raises(UserError, match=f"cannot listen on 127.0.0.1:{port}"):
            check_port_free("127.0.0.1", port)


def test_boards_from_one_image_stay_two_devices_and_one_device_pools_its_reports(tmp_path):
    """Two boards that share hostname, hardware and software but not machine-id (or label) are two devices;
    two reports of one device are one, with its repeats pooled and a note that says so."""
    from toolkit.profiling.device import fingerprint, machine_id

    first, second = tmp_path / "id-a", tmp_path / "id-b"
    first.write_text("0123456789abcdef0123456789abcdef\n", encoding="ascii")
    second.write_text("fedcba9876543210fedcba9876543210\n", encoding="ascii")
    ids = machine_id((str(first),)), machine_id((str(second),))
    assert ids[0] != ids[1] and len(ids[0]) == 12 and "0123456789abcdef" not in ids[0]  # hashed, not the raw id
    assert machine_id((str(tmp_path / "missing"), str(second))) == ids[1]
    assert machine_id((str(tmp_path / "missing"),)) is None
    assert fingerprint(2, {}, {}, "pi5-a").id != fingerprint(2, {}, {}, "pi5-b").id
    assert fingerprint(2, {}, {}, "pi5-a").id == fingerprint(2, {}, {}, "pi5-a").id

    board = ladder_report([(100, 800, 50, 300, 30), (80, 600, 80, 200, 35)])
    twin = board.model_copy(update={"device": FP.model_copy(update={"id": "dev1b", "machine_id": "other"})})
    again = ladder_report([(120, 900, 40, 310, 30), (90, 700, 70, 210, 35)])  # the first board, measured later
    for name, rep in (("device-a.json", board), ("device-b.json", twin), ("device-c.json", again)):
        write_json(tmp_path / name, rep)
    reports = load_reports([tmp_path])
    assert [r.device.id for r in reports] == ["dev1", "dev1b"]
    pooled = reports[0]
    assert pooled.merged_from == [str(tmp_path / "device-a.json"), str(tmp_path / "device-c.json")]
    assert reports[1].merged_from == []
    decode = pooled.profiles[0].decode_tps
    assert decode.values == board.profiles[0].decode_tps.values + again.profiles[0].decode_tps.values
    assert decode.n == 6 and pooled.profiles[0].rounds == 2
    rec = recommend(pooled, Budget(), Costs(), CLOUDS)
    assert any(n.startswith("One device in 2 reports (same id): repeats pooled from") for n in rec.notes)


def test_a_device_is_shipped_the_manifests_variants_and_results_not_stale_files(tmp_path):
    import io
    import tarfile

    from toolkit.pipeline.fleet_ray import pack

    ws = tmp_path / "ws"
    for rel in ("manifest.json", "variants/a-q8_0.gguf", "variants/old-q2_k.gguf", "variants/b-onnx/model.onnx",
                "quality/a.json", "reference/logits.npy", "profiles/x.json", ".lock"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(rel)
    blob = pack(ws, [str(ws / "variants/a-q8_0.gguf"), str(ws / "variants/b-onnx"), str(ws / "variants/gone.gguf")])
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        files = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}
    assert files == {rel: rel for rel in ("manifest.json", "variants/a-q8_0.gguf", "variants/b-onnx/model.onnx",
                                          "quality/a.json")}


def test_executors_by_name_and_fan_out_keeps_order_while_running_calls_at_once():
    import threading
    import time
    from types import SimpleNamespace

    from toolkit.pipeline.executor import LOCAL, fan_out, get_executor

    assert get_executor("local") is LOCAL
    with pytest.raises(UserError, match="unknown executor 'slurm'"):
        get_executor("slurm")
    running, peak, lock = [0], [0], threading.Lock()

    def call(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05 * (3 - i))  # the first call finishes last
        with lock:
            running[0] -= 1
        return i
    assert fan_out(SimpleNamespace(width=3), [lambda i=i: call(i) for i in range(3)]) == [0, 1, 2] and peak[0] == 3
    peak[0] = 0
    assert fan_out(LOCAL, [lambda i=i: call(i) for i in range(3)]) == [0, 1, 2] and peak[0] == 1


@pytest.mark.parametrize("per_minute", [1, 6, 20])
def test_litellm_chooses_a_device_until_it_has_taken_exactly_its_rpm(per_minute):
    """LiteLLM's own usage-based selection (not ours): given router_rpm, a device that admits `per_minute` a
    minute is chosen while it has taken fewer, and not once it has taken them all; given the plain figure it
    stops one early (BerriAI/litellm#33032), so an rpm of 1 was never chosen."""
    pytest.importorskip("litellm")
    from litellm.caching.caching import DualCache
    from litellm.router_strategy.lowest_tpm_rpm_v2 import LowestTPMLoggingHandler_v2

    from toolkit.cluster import router_rpm

    handler = LowestTPMLoggingHandler_v2(router_cache=DualCache(), routing_args={})

    def chosen(rpm: int, taken: int) -> bool:
        device = {"model_name": "edge", "litellm_params": {"model": "openai/edge-0", "rpm": rpm}, "model_info": {"id": "d0"}}
        return handler._common_checks_available_deployment(
            model_group="edge", healthy_deployments=[device], tpm_keys=["d0:openai/edge-0:tpm:00-00"], tpm_values=[0],
            rpm_keys=["d0:openai/edge-0:rpm:00-00"], rpm_values=[taken]) is not None
    given = router_rpm(per_minute, "usage-based-routing-v2")
    assert [chosen(given, taken) for taken in range(per_minute + 1)] == [True] * per_minute + [False]
    assert [chosen(per_minute, taken) for taken in range(per_minute + 1)] == [True] * (per_minute - 1) + [False] * 2
    assert router_rpm(per_minute, "simple-shuffle") == per_minute
