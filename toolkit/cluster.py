"""From per-device picks to a simulated cluster and to deployment files (llama.cpp servers + LiteLLM)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from toolkit.errors import UserError
from toolkit.export import context_warning, serving_ctx
from toolkit.io import write_text
from toolkit.recipe import Recipe
from toolkit.recommend.cloud import CloudModel
from toolkit.recommend.engine import Recommendation
from toolkit.records import DeviceReport, Profile
from toolkit.simulate import SimCloud, SimDevice, Workload

# LiteLLM strategy per simulated policy. Only usage-based-routing-v2 enforces each deployment's rpm/tpm
# (per minute) and sends the rest to the fallback, while picking the least-used deployment: the
# load-aware policy with limits, and the default. simple-shuffle spreads requests at random, weighted
# by rpm, and does not enforce the limits.
ROUTING = {"random": "simple-shuffle", "weighted": "simple-shuffle", "load_aware": "usage-based-routing-v2"}


def router_rpm(per_minute: int, strategy: str) -> int:
    """The rpm to give LiteLLM for a device that admits `per_minute` requests a minute. Its usage-based routing
    (lowest_tpm_rpm_v2, litellm 1.110) stops choosing a deployment one request before its rpm
    (`rpm_dict[item] + 1 >= rpm`, BerriAI/litellm#33032): a device would serve one fewer than it admits, and at
    rpm 1 none at all. Given one more, it serves `per_minute` (tests/test_live_router.py); two requests that
    pass the choice at the same instant can still make it one more."""
    return per_minute + 1 if strategy == "usage-based-routing-v2" else per_minute


def pick_cloud(recipe: Recipe, providers: list[CloudModel], prompt_tokens: int, output_tokens: int) -> CloudModel:
    if not providers:
        raise UserError("no cloud provider to overflow to", file=recipe.path, field="cloud.providers")
    if recipe.cluster.cloud:
        found = next((p for p in providers if recipe.cluster.cloud in (p.id, p.litellm_model)), None)
        if found is None:
            raise UserError(f"unknown cloud provider {recipe.cluster.cloud!r}", file=recipe.path, field="cluster.cloud")
        return found
    return min(providers, key=lambda p: p.cost_usd(prompt_tokens, output_tokens))


def sim_devices(recipe: Recipe, reports: list[DeviceReport], recs: list[Recommendation]) -> list[SimDevice]:
    """Each device serving its own pick, with that pick's measured median TTFT and decode speed."""
    devices = []
    for report, rec in zip(reports, recs, strict=True):
        if rec.pick is None:
            continue
        row = next(r for r in rec.rows if r.variant_id == rec.pick)
        devices.append(SimDevice(
            name=report.device.hostname + "-" + report.device.id[:4], ttft_s=row.detail["ttft_ms_median"] / 1000,
            decode_tps=row.detail["decode_tps_median"], slots=recipe.cluster.slots, rpm=recipe.cluster.rpm,
            window_s=recipe.cluster.window_s, usd_per_response=(row.metrics.get("cost_per_1k_usd") or 0.0) / 1000,
        ))
    if not devices:
        raise UserError("no device in the fleet has a variant that meets the budget; nothing to simulate", field="budget")
    return devices


def workload(recipe: Recipe) -> Workload:
    c = recipe.cluster
    return Workload(arrival=c.arrival, rate_per_s=c.rate_per_s, burst_factor=c.burst_factor, duration_s=c.duration_s,
                    output_tokens=recipe.budget.output_tokens, output_sigma=c.output_sigma, seed=c.seed)


def sim_cloud(cloud: CloudModel, prompt_tokens: int, output_tokens: int) -> SimCloud:
    return SimCloud(name=cloud.id, ttft_s=cloud.first_token_ms() / 1000, decode_tps=cloud.tokens_per_s,
                    usd_per_response=cloud.cost_usd(prompt_tokens, output_tokens))


def server_command(path: str, profile: Profile | None, threads: int, host: str, port: int, alias: str,
                   ctx: int) -> list[str]:
    """The server a pick was measured through: llama-server (with its GPU layers) for a native profile, else
    llama-cpp-python's."""
    if profile is not None and profile.runtime == "llama.cpp-native":
        return ["llama-server", "--model", path, "--threads", str(threads), "--ctx-size", str(ctx), "--host", host,
                "--port", str(port), "--alias", alias, *(["--n-gpu-layers", str(profile.gpu_layers)] if profile.gpu_layers else [])]
    return ["python3", "-m", "llama_cpp.server", "--model", path, "--n_threads", str(threads), "--n_ctx", str(ctx),
            "--host", host, "--port", str(port), "--model_alias", alias]


def deploy_files(recipe: Recipe, reports: list[DeviceReport], recs: list[Recommendation], cloud: CloudModel,
                 out: Path, policy: str = "load_aware", api_key_env: str = "EDGEFIRST_API_KEY") -> dict[str, Path]:
    """One llama.cpp server command per device and one LiteLLM router config over them, cloud as fallback."""
    c = recipe.cluster
    commands = ["#!/usr/bin/env bash", "# One llama.cpp server per device: run each line on its device, with the GGUF copied to the",
                "# same path, as the pick was profiled: llama-cpp-python[server], or the device's llama-server (native).",
                "set -euo pipefail"]
    models = []
    for i, (report, rec) in enumerate(zip(reports, recs, strict=True)):
        if rec.pick is None:
            commands.append(f"# {report.device.hostname}: no variant meets the budget; it serves nothing")
            continue
        variant = next(v for v in report.variants if v.id == rec.pick)
        if variant.format != "gguf":
            commands.append(f"# {report.device.hostname}: pick {variant.label} is not GGUF; serve it with its own runtime")
            continue
        port = c.base_port + i
        profile = next((p for p in report.profiles if p.variant_id == variant.id), None)
        trained = variant.details.get("context_length")
        ctx = serving_ctx(rec, int(trained) if trained else None)  # as `toolkit export` sizes it
        cmd = server_command(variant.path, profile, report.device.threads_used, c.host, port, f"edge-{i}", ctx)
        commands.append(f"# {report.device.hostname} ({report.device.cpu_model}): {variant.label}")
        commands.extend(context_warning(report, variant.id, ctx))
        commands.append(shlex.join(cmd))
        row = next(r for r in rec.rows if r.variant_id == rec.pick)
        tokens_per_request = rec.prompt_tokens + rec.output_tokens
        per_minute = max(1, round(c.rpm * 60 / c.window_s))
        models.append({
            "model_name": "edge",
            "litellm_params": {
                "model": f"openai/edge-{i}", "api_base": f"http://{c.host}:{port}/v1", "api_key": "not-needed",
                "rpm": router_rpm(per_minute, ROUTING[policy]), "tpm": per_minute * tokens_per_request,
            },
            "model_info": {"id": f"edge-{i}", "device": report.device.hostname, "decode_tps": row.detail["decode_tps_median"]},
        })
    if not models:
        raise UserError("no device has a GGUF pick to serve; nothing to deploy", field="budget")
    cloud_params = {"model": cloud.litellm_model or f"{cloud.provider.lower()}/{cloud.model}",
                    "api_key": f"os.environ/{(cloud.litellm_provider or cloud.provider).upper().replace('-', '_')}_API_KEY"}
    if cloud.api_base:
        cloud_params["api_base"] = cloud.api_base
    models.append({"model_name": "cloud", "litellm_params": cloud_params, "model_info": {"id": "cloud"}})
    config = {
        "model_list": models,
        "router_settings": {"routing_strategy": ROUTING[policy], "num_retries": 1, "allowed_fails": 1, "cooldown_time": 30,
                            "fallbacks": [{"edge": ["cloud"]}], "enable_pre_call_checks": True},
        "general_settings": {"master_key": f"os.environ/{api_key_env}"},
    }
    paths = {"servers": out / "servers.sh", "router": out / "litellm.yaml"}
    write_text(paths["servers"], "\n".join(commands) + "\n")
    paths["servers"].chmod(0o755)
    header = f"# LiteLLM router for {recipe.name}: edge devices first ({policy} -> {ROUTING[policy]}), {cloud.id} as fallback.\n"
    write_text(paths["router"], header + yaml.safe_dump(config, sort_keys=False))
    return paths
