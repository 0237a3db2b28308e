"""A fleet on Ray: a local cluster on loopback with two "devices" (two nodes of this machine, each with its
`device:NAME` resource), `toolkit profile --devices` profiles the real SmolLM2's GGUF ladder on both and brings back two
device reports that stay two devices; a node killed mid-job leaves that device failed with its reason, and a
rerun redoes only it. Compress and evaluate fan out over the same nodes, match a local run, and lose only the
job of a node killed under them."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import pytest

from tests.conftest import write_recipe
from toolkit import pipeline
from toolkit.fleet import load_reports
from toolkit.io import sha256_file
from toolkit.recipe import load_recipe
from toolkit.recommend import service

# Every Ray address on loopback: Ray's switch for one-machine clusters (meant for macOS and Windows), read when
# Ray is imported and inherited by every process the cluster starts; without it Ray binds this machine's address
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.allow_hosts(["127.0.0.1"]), pytest.mark.real_model]


STORE = 1 << 30


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    from ray.cluster_utils import Cluster

    tmp = tmp_path_factory.mktemp("fleet")
    recipe = load_recipe(write_recipe(tmp / "r.yaml", f"""
        name: fleet
        workspace: {tmp / 'ws'}
        candidates: [{{model: smollm2-135m-instruct}}]
        variants: {{gguf: {{quants: [Q8_0, Q4_0], keep_source: false}}, onnx: null}}
        device: {{threads: 1, prompt_lengths: [32, 64], decode_tokens: 16, warmup: 1, repeats: 2, rounds: 1,
                  max_rounds: 1, certify_runs: 0}}
        quality: {{ctx: 64, chunks: 2}}
        """))
    pipeline.compress(recipe)
    # object stores that hold the packed workspace (~240 MiB) in memory: Ray's test default of 150 MiB falls back to
    # disk, which Ray refuses on a disk over 95% full
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "object_store_memory": STORE,
                                                            "node_ip_address": "127.0.0.1"})
    nodes = {name: _add_device(cluster, name) for name in ("pi-a", "pi-b")}
    cluster.wait_for_nodes()
    assert cluster.address.startswith("127.0.0.1:") and not _listening_beyond_loopback()
    yield recipe, cluster, nodes
    ray.shutdown()
    cluster.shutdown()


def test_two_devices_profiled_on_their_nodes_stay_two(fleet):
    from toolkit.pipeline.fleet_ray import profile_on_devices

    recipe, cluster, _ = fleet
    written, failed = profile_on_devices(recipe, ["pi-a", "pi-b"], cluster.address, say=lambda _: None)
    assert failed == {} and len(written) == 2
    reports = load_reports(written)
    assert [r.device.label for r in reports] == ["pi-a", "pi-b"]  # one machine, one machine-id: the labels part them
    assert reports[0].device.id != reports[1].device.id and reports[0].device.machine_id == reports[1].device.machine_id
    assert all([p.status for p in r.profiles] == ["ok"] * 2 and r.profiles[0].decode_tps.n == 2 for r in reports)
    assert all(r.merged_from == [] for r in reports)
    recs = service.recommend_each(recipe, reports)  # the fleet recommendation reads them: one per device
    assert [r.device_id for r in recs] == [r.device.id for r in reports] and all(r.answer == "edge" for r in recs)


def test_a_dead_node_fails_its_device_and_a_rerun_redoes_only_it(fleet):
    from toolkit.pipeline.fleet_ray import profile_on_devices

    recipe, cluster, nodes = fleet
    recipe = recipe.model_copy(update={"device": recipe.device.model_copy(update={"repeats": 3})})  # not cached yet
    start = time.time()
    with _killed_when(cluster, nodes, lambda: _profiling_started(start), "pi-a's profile never started"):
        written, failed = profile_on_devices(recipe, ["pi-a", "pi-b"], cluster.address, say=lambda _: None)
    assert list(failed) == ["pi-a"] and len(written) == 1 and "pi-b" in written[0].name
    again, failed = profile_on_devices(recipe, ["pi-b"], cluster.address, say=lambda _: None)
    # pi-b's profile comes from its node's cache: the very measurement of the first run, not a new one
    assert failed == {} and load_reports(again)[0].profiles[0].wall_s == load_reports(written)[0].profiles[0].wall_s
    again, failed = profile_on_devices(recipe, ["pi-a"], cluster.address, say=lambda _: None)
    assert failed == {} and load_reports(again)[0].profiles[0].status == "ok"


def _profiling_started(since: float) -> bool:
    """Whether pi-a's profile child has started writing its log after `since`."""
    from toolkit.io import cache_root

    return any(p.stat().st_mtime > since for p in (cache_root() / "fleet" / "pi-a").rglob("profile-*.log"))


def test_evaluation_fans_out_over_the_nodes_and_matches_a_local_run(fleet, tmp_path):
    """Fidelity and accuracy jobs as Ray tasks: the files travel through the object store to node-local folders
    (the reference's logits come back), both nodes take jobs, and every figure equals a local run's."""
    import shutil

    from toolkit.pipeline.executor import RayExecutor

    recipe, cluster, _ = fleet
    recipe = recipe.model_copy(update={"accuracy": recipe.accuracy.model_copy(update={"tasks": ["mmlu_offline"], "limit": 3})})
    here = recipe.model_copy(update={"workspace": str(tmp_path / "ws")})  # the same variants, nothing measured
    (tmp_path / "ws").mkdir()
    shutil.copy(recipe.workspace_dir() / "manifest.json", tmp_path / "ws" / "manifest.json")

    quality, accuracy = pipeline.evaluate(recipe, executor=RayExecutor(cluster.address))
    nodes = {(recipe.workspace_dir() / "logs" / f"lm-eval-{r.variant_id}.log").read_text().split("\n")[0] for r in accuracy}
    assert len(nodes) == 2 and all(line.startswith("ran on Ray node ") for line in nodes)  # one job on each node
    assert list(recipe.workspace_dir().glob("fidelity/*/windows.npz"))  # the reference's logits came back
    local_quality, local_accuracy = pipeline.evaluate(here)
    assert [q.status for q in quality] == ["ok", "ok"] and quality[1].kl_mean > 0
    assert [(q.perplexity, q.kl_mean, q.top1_agreement) for q in quality] == \
        [(q.perplexity, q.kl_mean, q.top1_agreement) for q in local_quality]
    assert [(r.status, r.value, r.items) for r in accuracy] == [(r.status, r.value, r.items) for r in local_accuracy]
    assert len(accuracy) == 2 and all(len(r.items) == 3 and sum(r.items) / 3 == pytest.approx(r.value) for r in accuracy)


def _listening_beyond_loopback() -> list[str]:
    """Sockets this process's children (the cluster's processes) listen on, other than loopback ones."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            out += [f"{child.name()} {c.laddr.ip}:{c.laddr.port}" for c in child.net_connections("inet")
                    if c.status == psutil.CONN_LISTEN and not _loopback(c.laddr.ip)]
        except psutil.Error:
            continue
    return out


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_compress_fans_out_one_candidate_per_node_and_matches_a_local_build(fleet, tiny_llama, tmp_path):
    """Two candidate models built at once, one per node, in the nodes' own folders; each variant's files come
    back into the workspace, byte for byte what a local build writes."""
    from toolkit.pipeline.executor import RayExecutor

    _, cluster, _ = fleet

    def recipe(name: str):
        return load_recipe(write_recipe(tmp_path / f"{name}.yaml", f"""
            name: {name}
            workspace: {tmp_path / name}
            candidates: [{{model: {tiny_llama}, name: tiny-a}}, {{model: {tiny_llama}, name: tiny-b}}]
            variants: {{gguf: {{quants: [F16, Q8_0]}}, onnx: null}}
            device: {{threads: 1}}
            """))
    there = pipeline.compress(recipe("there"), executor=RayExecutor(cluster.address))
    here = pipeline.compress(recipe("here"))
    assert [(v.id, v.sha256) for v in there.variants] == [(v.id, v.sha256) for v in here.variants]
    assert len(there.variants) == 4 and there.not_built == []
    for variant, local in zip(there.variants, here.variants, strict=True):
        assert Path(variant.path).relative_to(tmp_path / "there") == Path(local.path).relative_to(tmp_path / "here")
        assert sha256_file(Path(variant.path)) == variant.sha256
    again = pipeline.compress(recipe("there"))  # locally now: what came back is the workspace's cache, whole
    assert [(v.sha256, v.seconds) for v in again.variants] == [(v.sha256, v.seconds) for v in there.variants]
    nodes = {note for v in there.variants for note in v.notes if note.startswith("built on Ray node ")}
    assert len(nodes) == 2  # tiny-a on one node, tiny-b on the other


def test_a_node_dying_mid_evaluation_fails_only_its_job_and_a_rerun_redoes_only_it(fleet, tmp_path):
    """Both nodes run an lm-eval job; one node dies: its job is recorded failed with Ray's reason, the other's
    result and every fidelity figure stand, and the rerun (on a replacement node) runs that one job alone."""
    import shutil

    from toolkit.pipeline.executor import RayExecutor
    from toolkit.pipeline.fidelity import fidelity
    from toolkit.pipeline.workspace import corpus, load_manifest

    recipe, cluster, nodes = fleet
    recipe = recipe.model_copy(update={"workspace": str(tmp_path / "ws"), "accuracy": recipe.accuracy.model_copy(
        update={"tasks": ["mmlu_offline"], "limit": 4})})
    (tmp_path / "ws").mkdir()
    shutil.copy(fleet[0].workspace_dir() / "manifest.json", tmp_path / "ws" / "manifest.json")
    # fidelity first (its base, the source as shipped, then both quants at once), so that the node dies in lm-eval
    fidelity(recipe, load_manifest(recipe), corpus(recipe), executor=RayExecutor(cluster.address))
    with _killed_when(cluster, nodes, _both_running(nodes, "run_there"), "the two nodes never ran run_there at once"):
        quality, accuracy = pipeline.evaluate(recipe, executor=RayExecutor(cluster.address))
    assert [q.status for q in quality] == ["ok", "ok"]
    lost = [r for r in accuracy if r.status != "ok"]
    kept = [r for r in accuracy if r.status == "ok"]
    assert len(lost) == 1 and len(kept) == 1 and lost[0].reason.startswith("Ray: "), [r.reason for r in accuracy]
    logs = {r.variant_id: recipe.workspace_dir() / "logs" / f"lm-eval-{r.variant_id}.log" for r in accuracy}
    kept_log = logs[kept[0].variant_id].stat().st_mtime_ns

    quality2, accuracy2 = pipeline.evaluate(recipe, executor=RayExecutor(cluster.address))
    assert [q.model_dump() for q in quality2] == [q.model_dump() for q in quality]  # all from the cache
    assert [r.status for r in accuracy2] == ["ok", "ok"]
    assert [r.model_dump() for r in accuracy2 if r.variant_id == kept[0].variant_id] == [kept[0].model_dump()]
    assert logs[kept[0].variant_id].stat().st_mtime_ns == kept_log  # not run again
    assert logs[lost[0].variant_id].read_text().startswith("ran on Ray node ")


def test_a_node_dying_mid_compress_loses_only_its_candidate_and_a_rerun_builds_only_it(fleet, tiny_llama, tmp_path):
    """Two candidates build at once, one per node; one node dies: that candidate's variants are not built, with
    Ray's reason, the other's arrive whole, and the rerun reuses them and builds the rest."""
    from toolkit.pipeline.executor import RayExecutor

    _, cluster, nodes = fleet
    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", f"""
        name: dies
        workspace: {tmp_path / 'ws'}
        candidates: [{{model: {tiny_llama}, name: tiny-a}}, {{model: {tiny_llama}, name: tiny-b}}]
        variants: {{gguf: {{quants: [F16, Q8_0]}}, onnx: null}}
        device: {{threads: 1}}
        """))
    with _killed_when(cluster, nodes, _both_running(nodes, "build_there"), "the two nodes never ran build_there at once"):
        first = pipeline.compress(recipe, executor=RayExecutor(cluster.address))
    # the survivor's F16 and Q8_0; the lost one's the same two (not the source as shipped: an HF model has none)
    assert len(first.variants) == 2 and sorted((f.format, f.quant) for f in first.not_built) == [("gguf", "F16"), ("gguf", "Q8_0")]
    assert {f.model for f in first.not_built} | {v.model for v in first.variants} == {"tiny-a", "tiny-b"}
    assert all(f.reason.startswith("Ray: ") for f in first.not_built), [f.reason for f in first.not_built]
    assert not list((tmp_path / "ws" / "variants").glob("*.part"))  # nothing half-received

    again = pipeline.compress(recipe, executor=RayExecutor(cluster.address))
    assert again.not_built == [] and len(again.variants) == 4
    survivors = {v.id: (v.sha256, v.seconds) for v in first.variants}
    assert {v.id: (v.sha256, v.seconds) for v in again.variants if v.id in survivors} == survivors  # reused
    assert all(sha256_file(Path(v.path)) == v.sha256 for v in again.variants)


@contextmanager
def _killed_when(cluster, nodes, ready, never: str):
    """Kill pi-a's node (no grace) once `ready()`, polling while the body runs; a replacement joins afterwards.
    `never`: the failure when the body ended before `ready()` held."""
    done = threading.Event()
    killed = []

    def watch() -> None:
        deadline = time.monotonic() + 300
        while not ready():
            if done.wait(0.02) or time.monotonic() > deadline:
                return
        cluster.remove_node(nodes["pi-a"], allow_graceful=False)
        killed.append(True)
    killer = threading.Thread(target=watch)
    killer.start()
    try:
        yield
    finally:
        done.set()
        killer.join()
        if killed:
            nodes["pi-a"] = _add_device(cluster, "pi-a")
            cluster.wait_for_nodes()
    assert killed, never


def _both_running(nodes, task: str):
    return lambda: all(_running(nodes[name], task) for name in ("pi-a", "pi-b"))


def _add_device(cluster, name: str):
    """A node of 1 CPU offering the `device:NAME` resource, on loopback."""
    return cluster.add_node(num_cpus=1, resources={f"device:{name}": 1}, object_store_memory=STORE,
                            node_ip_address="127.0.0.1")


def _running(node, task: str) -> bool:
    """Whether a worker of `node` is running a Ray task of function `task` (Ray titles it `ray::task`)."""
    from ray._private import ray_constants

    raylet = psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)
    for process in raylet.children(recursive=True):
        try:
            if " ".join(process.cmdline()).startswith(f"ray::{task}"):
                return True
        except psutil.Error:
            continue
    return False
