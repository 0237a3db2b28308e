"""Commands for edge clusters: simulate the fleet, write its deployment, serve the router."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit.cli.app import RecipeArg, ReportsOpt, app
from toolkit.cluster import ROUTING, deploy_files, pick_cloud, sim_cloud, sim_devices
from toolkit.cluster import workload as cluster_workload
from toolkit.errors import UserError
from toolkit.io import write_json
from toolkit.recipe import load_recipe
from toolkit.recommend import service
from toolkit.render import console, show, simulation_table
from toolkit.reports import simulation_reports
from toolkit.simulate import compare as compare_policies


@app.command()
def simulate(
    recipe: RecipeArg,
    report: ReportsOpt = None,
    rate: Annotated[float | None, typer.Option(help="mean requests per second")] = None,
    arrival: Annotated[str | None, typer.Option(help="poisson | onoff | pareto")] = None,
    duration_s: Annotated[float | None, typer.Option(help="simulated seconds")] = None,
) -> None:
    """Simulate the fleet as an edge cluster with rate limits and cloud overflow, for each selection policy."""
    r = load_recipe(recipe)
    r = r.model_copy(update={"cluster": service.cluster(r, rate_per_s=rate, arrival=arrival, duration_s=duration_s)})
    reports = service.device_reports(r, report)
    recs = service.recommend_each(r, reports)
    prompt, out_tokens = recs[0].prompt_tokens, r.budget.output_tokens
    cloud = pick_cloud(r, service.providers(r), prompt, out_tokens)
    results = compare_policies(sim_devices(r, reports, recs), sim_cloud(cloud, prompt, out_tokens), cluster_workload(r), r.cluster.max_queue)
    show(simulation_table(results, r, cloud.id), wide=True)
    target = r.reports_path() / "simulation.json"
    write_json(target, {"recipe": r.name, "cluster": r.cluster.model_dump(), "cloud": cloud.id, "results": [x.model_dump() for x in results]})
    title = f"{r.name}: {len(results[0].utilisation)} devices, {r.cluster.arrival} arrivals at {r.cluster.rate_per_s:g}/s, overflow to {cloud.id}"
    for kind, path in {"json": target, **simulation_reports(results, title, r.reports_path())}.items():
        console.print(f"simulation {kind}: {path}")


@app.command()
def deploy(
    recipe: RecipeArg,
    report: ReportsOpt = None,
    out: Annotated[Path | None, typer.Option(help="folder for servers.sh and litellm.yaml")] = None,
    policy: Annotated[str, typer.Option(help="random | weighted | load_aware (sets LiteLLM's routing strategy)")] = "load_aware",
) -> None:
    """Deployment files from the picks: a llama.cpp server per device, one LiteLLM router with cloud fallback."""
    r = load_recipe(recipe)
    if policy not in ROUTING:
        raise UserError(f"unknown policy {policy!r} (known: {', '.join(ROUTING)})", field="--policy")
    reports = service.device_reports(r, report)
    recs = service.recommend_each(r, reports)
    cloud = pick_cloud(r, service.providers(r), recs[0].prompt_tokens, r.budget.output_tokens)
    for kind, path in deploy_files(r, reports, recs, cloud, out or r.reports_path() / "deploy", policy).items():
        console.print(f"{kind}: {path}")


@app.command()
def serve(
    config: Annotated[Path, typer.Argument(help="router config written by `toolkit deploy` (litellm.yaml)")],
    host: Annotated[str, typer.Option(help="address to bind; 127.0.0.1 unless you mean to expose it")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 4000,
    api_key_env: Annotated[str, typer.Option(help="environment variable holding the API key clients must send")] = "EDGEFIRST_API_KEY",
) -> None:
    """Start the LiteLLM router in front of the edge servers, with cloud fallback (OpenAI-compatible API)."""
    from toolkit.serve import serve as run_server

    run_server(config, host, port, api_key_env)
