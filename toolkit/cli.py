"""`toolkit`: thin command line over the pipeline's stages."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from toolkit import __version__, stages
from toolkit.catalogue import catalogue
from toolkit.cluster import ROUTING, deploy_files, pick_cloud, sim_cloud, sim_devices
from toolkit.cluster import workload as cluster_workload
from toolkit.errors import UserError
from toolkit.fleet import fleet_summary, load_reports, predicted_vs_measured
from toolkit.fleet import predict as predict_variants
from toolkit.io import write_json
from toolkit.profiling.roofline import Roofline
from toolkit.recipe import Budget, Recipe, load_recipe, validation_error
from toolkit.recommend.cloud import load_providers
from toolkit.recommend.engine import Recommendation
from toolkit.recommend.engine import recommend as make_recommendation
from toolkit.records import DeviceReport
from toolkit.render import (
    cloud_table,
    console,
    evaluation_table,
    fleet_table,
    manifest_table,
    models_table,
    new_table,
    prediction_table,
    recommendation_table,
    show,
    simulation_table,
    tasks_table,
)
from toolkit.reports import certification_line, fleet_reports, noise_line, simulation_reports, write_reports
from toolkit.simulate import compare as compare_policies

app = typer.Typer(
    help="Edge-first SLM toolkit: models -> compress -> evaluate -> profile (on the device) -> recommend -> "
    "report. `run` does all stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML, e.g. recipes/demo.yaml")]
WideOpt = Annotated[bool, typer.Option("--wide", help="every column (default: variant, the budget's metrics, verdict)")]
ImagesOpt = Annotated[bool, typer.Option("--images/--no-images", help="static PNG plots for the Markdown reports (kaleido + Chromium)")]


@contextmanager
def progress_bar() -> Iterator:
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console, transient=False
    ) as bar:
        task = bar.add_task("starting", total=None)

        def update(description: str, done: int, total: int) -> None:
            bar.update(task, description=description, completed=done, total=total)

        yield update


def _print_version(value: bool) -> None:
    if value:
        console.print(__version__)
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", help="print the version", is_eager=True, callback=_print_version)
    ] = False,
) -> None:
    """Edge-first SLM toolkit."""


@app.command()
def models() -> None:
    """List the model catalogue (models/*.yaml)."""
    show(models_table(list(catalogue().values())), wide=True)


@app.command()
def compress(recipe: RecipeArg) -> None:
    """Build every variant the recipe asks for (cached by content hash)."""
    r = load_recipe(recipe)
    with progress_bar() as update:
        manifest = stages.compress(r, update)
    show(manifest_table(manifest), wide=True)


@app.command()
def evaluate(recipe: RecipeArg) -> None:
    """Fidelity to the base model (perplexity, KL divergence, top-1) and accuracy (lm-eval), per variant."""
    r = load_recipe(recipe)
    with progress_bar() as update:
        quality, accuracy = stages.evaluate(r, update)
    manifest = stages.load_manifest(r)
    show(evaluation_table(manifest, quality, accuracy), wide=True)


@app.command()
def tasks() -> None:
    """List the offline accuracy tasks (lm-eval YAML over data from PyPI packages)."""
    show(tasks_table(), wide=True)


@app.command()
def profile(
    recipe: RecipeArg,
    out: Annotated[Path | None, typer.Option(help="where to write the device report JSON")] = None,
    threads: Annotated[int | None, typer.Option(help="override device.threads")] = None,
    formats: Annotated[list[str] | None, typer.Option("--format", help="profile only these formats (repeatable)")] = None,
) -> None:
    """Measure every variant on this device, each in its own process; write the device report."""
    r = load_recipe(recipe)
    if threads is not None:
        r.device.threads = threads
    with progress_bar() as update:
        report, path = stages.profile(r, update, out, formats)
    failed = [p for p in report.profiles if p.status != "ok"]
    console.print(f"device report: {path} ({len(report.profiles) - len(failed)} ok, {len(failed)} not ok)")
    for p in failed:
        console.print(f"  {p.variant_name}: {p.status} - {p.reason}")


def _budget(recipe: Recipe, **overrides) -> Budget:
    """The recipe's budget with command-line flags on top, validated like the recipe itself."""
    merged = recipe.budget.model_dump() | {k: v for k, v in overrides.items() if v is not None}
    try:
        return Budget.model_validate(merged)
    except ValidationError as exc:
        error = validation_error(exc, f"{recipe.path} + command-line flags")
        error.field = f"budget.{error.field}" if error.field else "budget"
        raise UserError(error.message, file=error.file, field=error.field) from exc


@app.command()
def recommend(
    recipe: RecipeArg,
    report: Annotated[
        list[Path] | None, typer.Option(help="device report JSON or a folder of them; repeat for a fleet (default: this device's latest)")
    ] = None,
    max_ttft_ms: Annotated[float | None, typer.Option(help="p90 time to first token, ms")] = None,
    ttft_prompt_tokens: Annotated[int | None, typer.Option(help="prompt length the budget is for")] = None,
    min_decode_tps: Annotated[float | None, typer.Option(help="decode tokens/s (slow end, p10)")] = None,
    max_memory_mb: Annotated[float | None, typer.Option(help="peak resident memory, MB")] = None,
    max_perplexity: Annotated[float | None, typer.Option(help="perplexity on the recipe's corpus")] = None,
    max_energy_j: Annotated[float | None, typer.Option(help="energy per response, J")] = None,
    max_cost_per_1k_usd: Annotated[float | None, typer.Option(help="cost of 1,000 responses, USD")] = None,
    output_tokens: Annotated[int | None, typer.Option(help="response length for energy and cost")] = None,
    priority: Annotated[str | None, typer.Option(help="balanced | pcr | quality | speed | memory | cost")] = None,
    wide: WideOpt = False,
    images: ImagesOpt = True,
) -> None:
    """Pareto front, budget, pick (or cloud fallback), and why every other variant lost; writes reports."""
    r = load_recipe(recipe)
    budget = _budget(
        r,
        max_ttft_ms=max_ttft_ms,
        ttft_prompt_tokens=ttft_prompt_tokens,
        min_decode_tps=min_decode_tps,
        max_memory_mb=max_memory_mb,
        max_perplexity=max_perplexity,
        max_energy_j=max_energy_j,
        max_cost_per_1k_usd=max_cost_per_1k_usd,
        output_tokens=output_tokens,
        priority=priority,
    )
    show_recommendation(r, budget, report, wide, images)


@app.command()
def report(
    recipe: RecipeArg,
    report: Annotated[Path | None, typer.Option(help="device report JSON (default: this device's latest)")] = None,
    images: ImagesOpt = True,
) -> None:
    """Rebuild the JSON, Markdown and HTML reports from stored results, without measuring anything."""
    r = load_recipe(recipe)
    rec = build_recommendation(r, r.budget, report)
    for kind, path in write_reports(rec, r.reports_path(), images).items():
        console.print(f"{kind}: {path}")


def _providers(r: Recipe):
    return load_providers(r.cloud.providers, r.base_dir, r.cloud, r.path) if r.cloud.enabled else []


def _reports(r: Recipe, paths: list[Path] | None) -> list[DeviceReport]:
    return load_reports(paths) if paths else [DeviceReport.load(_latest_report(r))]


def build_recommendation(r: Recipe, budget: Budget, report_path: Path | None) -> Recommendation:
    path = report_path or _latest_report(r)
    return make_recommendation(DeviceReport.load(path), budget, r.costs, _providers(r))


def show_recommendation(r: Recipe, budget: Budget, report_paths: list[Path] | Path | None, wide: bool = False,
                        images: bool = True) -> list[Recommendation]:
    paths = [report_paths] if isinstance(report_paths, Path) else report_paths
    recs = []
    for device_report in _reports(r, paths):
        rec = make_recommendation(device_report, budget, r.costs, _providers(r))
        show(recommendation_table(rec, wide), wide)
        if rec.cloud_rows:
            show(cloud_table(rec), wide=True)
        console.print(("[bold green]" if rec.answer == "edge" else "[bold yellow]") + rec.message, soft_wrap=True)
        for line in (noise_line(rec), certification_line(rec)):
            if line:
                console.print(line, highlight=False, soft_wrap=True)
        for kind, path in write_reports(rec, r.reports_path(), images).items():
            console.print(f"{kind}: {path}")
        recs.append(rec)
    if len(recs) > 1:
        show(fleet_table(fleet_summary(recs)), wide=True)
        for kind, path in fleet_reports(recs, r.reports_path(), images).items():
            console.print(f"fleet {kind}: {path}")
    return recs


def _latest_report(r: Recipe) -> Path:
    folder = r.workspace_dir() / "reports"
    reports = sorted(folder.glob("device-*.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise UserError(f"no device report yet; run `toolkit profile {r.path}` or pass --report", file=folder)
    return reports[-1]


ReportsOpt = Annotated[list[Path] | None, typer.Option("--report", help="device report JSON or folder; repeat for a fleet")]


@app.command()
def predict(
    recipe: RecipeArg,
    bandwidth_gbs: Annotated[float | None, typer.Option(help="memory bandwidth of a device you describe, GB/s")] = None,
    gflops: Annotated[float | None, typer.Option(help="its float32 compute, GFLOP/s")] = None,
    ram_mb: Annotated[float | None, typer.Option(help="its memory, MB")] = None,
    report: ReportsOpt = None,
) -> None:
    """Roofline predictions: for a described device, or predicted beside measured on profiled ones."""
    r = load_recipe(recipe)
    if bandwidth_gbs or gflops:
        if not (bandwidth_gbs and gflops):
            raise UserError("give both --bandwidth-gbs and --gflops to describe a device", field="predict")
        preds = predict_variants(stages.load_manifest(r).variants, Roofline(bandwidth_gbs=bandwidth_gbs, gflops=gflops, threads=0), ram_mb)
        show(prediction_table(preds, f"Predicted for a device with {bandwidth_gbs:g} GB/s, {gflops:g} GFLOP/s"), wide=True)
        return
    for device_report in _reports(r, report):
        prompt = r.budget.ttft_prompt_tokens or max(r.device.prompt_lengths)
        rows, summary = predicted_vs_measured(device_report, prompt)
        title = f"{device_report.device.hostname}: roofline {device_report.roofline.bandwidth_gbs:g} GB/s, {device_report.roofline.gflops:g} GFLOP/s"
        show(prediction_table(rows, title), wide=True)
        console.print(f"measured / predicted, median: decode {summary['decode_measured_over_predicted_median']}, "
                      f"prefill at {prompt} tokens {summary['prefill_measured_over_predicted_median']}")


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
    updates = {k: v for k, v in {"rate_per_s": rate, "arrival": arrival, "duration_s": duration_s}.items() if v is not None}
    if updates:
        try:
            r.cluster = r.cluster.model_validate(r.cluster.model_dump() | updates)
        except ValidationError as exc:
            raise validation_error(exc, f"{r.path} + command-line flags") from exc
    reports = _reports(r, report)
    recs = [make_recommendation(rep, r.budget, r.costs, _providers(r)) for rep in reports]
    prompt = recs[0].prompt_tokens
    cloud = pick_cloud(r, _providers(r), prompt, r.budget.output_tokens)
    results = compare_policies(sim_devices(r, reports, recs), sim_cloud(cloud, prompt, r.budget.output_tokens), cluster_workload(r), r.cluster.max_queue)
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
    reports = _reports(r, report)
    recs = [make_recommendation(rep, r.budget, r.costs, _providers(r)) for rep in reports]
    cloud = pick_cloud(r, _providers(r), recs[0].prompt_tokens, r.budget.output_tokens)
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


@app.command()
def paper() -> None:
    """Table I of the Edge-First paper (cost per response, edge vs cloud) recomputed from the paper's inputs."""
    from toolkit.paper import NOTE, SOURCE, table_one

    rows = table_one()
    table = new_table(title=f"{SOURCE}: cost per response")
    for col in ("platform", "model", "paper's inputs", "USD per response", "computed cents", "paper cents", "match"):
        table.add_column(col)
    for row in rows:
        table.add_row(row.platform, row.model, row.inputs, row.formula, f"{row.computed_cents:.4g}", f"{row.published_cents:g}",
                      "yes" if row.matches else "[bold red]no[/]")
    table.caption = "; ".join(dict.fromkeys(row.source for row in rows))
    show(table, wide=True)
    console.print(NOTE)


@app.command()
def doctor(
    recipe: Annotated[Path | None, typer.Argument(help="recipe whose workspace and offline data to check")] = None,
) -> None:
    """Check this machine before a run: one line per check, a fix for each problem; exit 1 when something needed is missing."""
    from toolkit.doctor import run_checks

    checks = run_checks(load_recipe(recipe) if recipe else None)
    for check in checks:
        colour = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}[check.status]
        console.print(f"[{colour}]{check.status:<4}[/]" + check.line()[4:], highlight=False, soft_wrap=True)
    failed = [c.name for c in checks if c.status == "FAIL"]
    counts = ", ".join(f"{sum(c.status == s for c in checks)} {s}" for s in ("ok", "warn", "FAIL"))
    console.print(f"{len(checks)} checks: {counts}" + (f" (needed: {', '.join(failed)})" if failed else ""), highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def export(
    recipe: RecipeArg,
    report: ReportsOpt = None,
    out: Annotated[Path | None, typer.Option(help="folder (default: the reports folder's export/<device id>/)")] = None,
    variant: Annotated[str | None, typer.Option(help="export this variant id instead of the pick")] = None,
) -> None:
    """Hand the pick to a runner: Ollama Modelfile and llama-server command (GGUF), ONNX Runtime or GPTQModel snippet."""
    from toolkit.export import export_pick

    r = load_recipe(recipe)
    reports = _reports(r, report)
    for device_report in reports:
        rec = make_recommendation(device_report, r.budget, r.costs, _providers(r))
        folder = out / device_report.device.id if out and len(reports) > 1 else out or r.reports_path() / "export" / device_report.device.id
        for kind, path in export_pick(rec, device_report, folder, variant).items():
            console.print(f"{rec.device_id} {kind}: {path}", highlight=False)


@app.command()
def schemas(out: Annotated[Path | None, typer.Option(help="folder (default: schemas/ in the repository)")] = None) -> None:
    """Regenerate the JSON Schemas of the recommendation and device-report records (schemas/)."""
    from toolkit.schemas import SCHEMA_DIR, write

    for path in write(out or SCHEMA_DIR):
        console.print(str(path), highlight=False)


@app.command()
def run(recipe: RecipeArg) -> None:
    """All stages: compress, evaluate, profile, recommend. Finished work is reused."""
    r = load_recipe(recipe)
    with progress_bar() as update:
        manifest = stages.compress(r, update)
    show(manifest_table(manifest), wide=True)
    with progress_bar() as update:
        stages.evaluate(r, update)
    with progress_bar() as update:
        _, path = stages.profile(r, update)
    console.print(f"device report: {path}")
    show_recommendation(r, r.budget, path)


def _terminate(signum: int, frame) -> None:
    sys.exit(128 + signum)  # unwinds, so atomic writes clean up their temporary files


def entry() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except UserError as exc:
        console.print(f"[bold red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    entry()
