"""Live on loopback: two llama.cpp servers with the real SmolLM2, a cloud STAND-IN, the generated LiteLLM
router in front (`toolkit serve`), and a bounded client sending about twice the edge capacity. Every
request must be answered, overflow must reach the stand-in, and the edge servers must stay within their
limits; then one edge server is killed mid-run and still nothing is lost. The test starts and stops
every server itself; traffic goes to 127.0.0.1 only, and the loop is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download at import
pytest.importorskip("litellm")
pytest.importorskip("llama_cpp.server")

from tests.conftest import write_recipe  # noqa: E402
from tests.factories import ladder_report  # noqa: E402
from tests.loopback import free_port, wait_http  # noqa: E402
from toolkit.catalogue import find_card  # noqa: E402
from toolkit.cluster import deploy_files, sim_cloud, sim_devices  # noqa: E402
from toolkit.recipe import Budget, Costs, load_recipe  # noqa: E402
from toolkit.recommend.cloud import CloudModel  # noqa: E402
from toolkit.recommend.engine import recommend  # noqa: E402
from toolkit.simulate import Workload, simulate  # noqa: E402
from toolkit.sources import fetch_pypi_files  # noqa: E402

pytestmark = [pytest.mark.real_model, pytest.mark.allow_hosts(["127.0.0.1"])]  # loopback only
RPM = 6  # each edge device admits 6 requests per 60 s window: 12 for the fleet during the test
REQUESTS = 24






def _post(url: str, body: dict, key: str) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json", "authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.fixture
def cluster(tmp_path):
    gguf = fetch_pypi_files(find_card("smollm2-135m-instruct").source)
    ports = {"edge0": free_port(), "edge1": free_port(), "cloud": free_port()}
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", f"""
        name: live
        candidates: [{{model: smollm2-135m-instruct}}]
        cluster: {{rpm: {RPM}, window_s: 60, base_port: {ports['edge0']}}}
        """))
    reports = [ladder_report([(100, 800, 50, 300, 30)]), ladder_report([(100, 800, 40, 300, 30)])]
    for i, rep in enumerate(reports):
        rep.device = rep.device.model_copy(update={"id": f"dev{i}", "hostname": f"edge{i}", "threads_used": 1})
        rep.variants[0].path, rep.variants[0].format = str(gguf), "gguf"
    recs = [recommend(r, Budget(), Costs(), []) for r in reports]
    cloud = CloudModel(id="stand-in", provider="standin", model="stand-in", usd_per_1m_input=0.1, usd_per_1m_output=0.4,
                       ttft_ms=100, tokens_per_s=100, api_base=f"http://127.0.0.1:{ports['cloud']}/v1", litellm_model="openai/stand-in")
    paths = deploy_files(recipe, reports, recs, cloud, tmp_path / "deploy")
    config = yaml.safe_load(paths["router"].read_text())
    config["model_list"][1]["litellm_params"]["api_base"] = f"http://127.0.0.1:{ports['edge1']}/v1"  # second port
    paths["router"].write_text(yaml.safe_dump(config))
    env = dict(os.environ, EDGEFIRST_API_KEY="test-key", STANDIN_API_KEY="unused", LITELLM_LOCAL_MODEL_COST_MAP="True")
    procs = {}
    for name in ("edge0", "edge1"):
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(ports[name]),
             "--n_threads", "1", "--n_ctx", "512", "--model_alias", f"edge-{name[-1]}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    procs["cloud"] = subprocess.Popen([sys.executable, "-m", "tests.cloud_standin", str(ports["cloud"])], env=env,
                                      cwd=Path(__file__).resolve().parent.parent)
    log = (tmp_path / "router.log").open("w")  # noqa: SIM115 - closed in the finally below

    def start_router() -> None:
        """A router process on a fresh port: LiteLLM keeps its rate-limit counts in memory, so a new one starts
        with fresh limits (instead of waiting for the next wall-clock minute)."""
        if "router" in procs:
            procs["router"].terminate()
            procs["router"].wait(timeout=20)
        ports["router"] = free_port()
        procs["router"] = subprocess.Popen(
            [sys.executable, "-m", "toolkit.cli", "serve", str(paths["router"]), "--port", str(ports["router"])],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{ports['router']}/health")

    try:
        for name in ("edge0", "edge1"):
            wait_http(f"http://127.0.0.1:{ports[name]}/v1/models")
        wait_http(f"http://127.0.0.1:{ports['cloud']}/count")
        start_router()
        yield ports, procs, tmp_path, (recipe, reports, recs, cloud), start_router
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def _send(ports: dict, n: int, kill: subprocess.Popen | None = None) -> list[tuple[int, dict]]:
    url = f"http://127.0.0.1:{ports['router']}/v1/chat/completions"
    body = {"model": "edge", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "temperature": 0}

    def one(i: int) -> tuple[int, dict]:
        if kill is not None and i == n // 3:
            kill.kill()  # an edge device dies mid-run
        start = time.perf_counter()
        code, data = _post(url, body, "test-key")
        data["latency_s"] = time.perf_counter() - start
        return code, data

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(one, range(n)))


def _minutes(start: float, end: float) -> int:
    """LiteLLM counts rpm per wall-clock minute: how many minutes a run touched."""
    return int(end // 60) - int(start // 60) + 1


def test_overflow_reaches_the_cloud_and_nothing_is_lost(cluster):
    ports, procs, tmp, fleet, start_router = cluster
    if 60 - time.time() % 60 < 20:  # the burst (a few seconds) inside one rate-limit minute
        time.sleep(60 - time.time() % 60 + 0.5)
    start = time.time()
    results = _send(ports, REQUESTS)
    minutes = _minutes(start, time.time())
    assert [code for code, _ in results] == [200] * REQUESTS, (tmp / "router.log").read_text()[-2000:]
    cloud_served = _get(f"http://127.0.0.1:{ports['cloud']}/count")["served"]
    served = _get(f"http://127.0.0.1:{ports['router']}/health")["served"]
    edge = {k: v for k, v in served.items() if k.startswith("edge-")}
    print("served by deployment:", served, "cloud stand-in count:", cloud_served, "minutes:", minutes)
    assert minutes == 1 and sum(edge.values()) + cloud_served == REQUESTS, served
    # the rate limits by hand: each edge admits RPM requests in the minute, so the edge serves 2 x RPM and the
    # other half of the burst overflows to the cloud
    assert sorted(edge.values()) == [RPM, RPM] and cloud_served == REQUESTS - 2 * RPM, served
    # the simulator, fed what `toolkit simulate` reads (the device reports' picks, the recipe's limits, the
    # cloud's catalogue figures) and the rate the client sent, never a latency this run measured, gets the same
    # arithmetic: the edge serves its rate-limited capacity of what arrived in the window
    recipe, reports, recs, cloud = fleet
    elapsed = time.time() - start
    load = Workload(arrival="poisson", rate_per_s=REQUESTS / elapsed, output_tokens=8, duration_s=elapsed, seed=1)
    sim = simulate(sim_devices(recipe, reports, recs), sim_cloud(cloud, 16, 8), load, "load_aware", max_queue=4)
    sim_edge = round(sim.requests * (1 - sim.cloud_share))
    print(f"edge served: live {sum(edge.values())}, simulated {sim_edge} of {sim.requests}")
    assert sim_edge == min(sim.requests, 2 * RPM)  # the run lasted under a minute of simulated time
    # then, with fresh limits (a new router process), one edge server dies mid-run: every request is still answered
    start_router()
    again = _send(ports, REQUESTS // 2, kill=procs["edge0"])
    assert [code for code, _ in again] == [200] * (REQUESTS // 2), (tmp / "router.log").read_text()[-2000:]
