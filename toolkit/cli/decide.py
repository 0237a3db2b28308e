"""Commands that decide and hand off: recommend, report, predict, export, paper, schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from toolkit import pipeline
from toolkit.cli.app import ImagesOpt, RecipeArg, ReportsOpt, WideOpt, app, model_flags
from toolkit.errors import UserError
from toolkit.fleet import fleet_summary, predicted_vs_measured
from toolkit.fleet import predict as predict_variants
from toolkit.profiling.roofline import Roofline
from toolkit.recipe import Budget, Recipe, load_recipe
from toolkit.recommend import service
from toolkit.recommend.engine import Recommendation
from toolkit.render import cloud_table, console, fleet_table, new_table, prediction_table, recommendation_table, show
from toolkit.reports import certification_line, fleet_reports, noise_line, write_reports


@app.command()
@model_flags(Budget)
def recommend(
    recipe: RecipeArg,
    report: Annotated[
        list[Path] | None, typer.Option(help="device report JSON or a folder of them; repeat for a fleet (default: this device's latest)")
    ] = None,
    wide: WideOpt = False,
    images: ImagesOpt = True,
    **budget: Any,
) -> None:
    """Pareto front, budget, pick (or cloud fallback), and why every other variant lost; writes reports.
    Every budget field of the recipe has a flag that overrides it for this call."""
    r = load_recipe(recipe)
    show_recommendation(r, service.budget(r, **budget), report, wide, images)


@app.command()
def report(
    recipe: RecipeArg,
    report: Annotated[Path | None, typer.Option(help="device report JSON (default: this device's latest)")] = None,
    images: ImagesOpt = True,
) -> None:
    """Rebuild the JSON, Markdown and HTML reports from stored results, without measuring anything."""
    r = load_recipe(recipe)
    for rec in service.recommendations(r, r.budget, [report] if report else None):
        for kind, path in write_reports(rec, r.reports_path(), images, r.name).items():
            console.print(f"{kind}: {path}")


def show_recommendation(r: Recipe, budget: Budget, report_paths: list[Path] | None, wide: bool = False,
                        images: bool = True) -> list[Recommendation]:
    """Print and write the recommendation for each device report, and the fleet's when there are several."""
    recs = service.recommendations(r, budget, report_paths)
    for rec in recs:
        show(recommendation_table(rec, wide), wide)
        if rec.cloud_rows:
            show(cloud_table(rec), wide=True)
        console.print(("[bold green]" if rec.answer == "edge" else "[bold yellow]") + rec.message, soft_wrap=True)
        warnings = [n for n in rec.notes if n.startswith(("Recipe: ", "Context: ", "Priority ", "Noise: "))]  # the rest are in the reports
        for line in (noise_line(rec), certification_line(rec), *warnings):
            if line:
                console.print(line, highlight=False, soft_wrap=True)
        for kind, path in write_reports(rec, r.reports_path(), images, r.name).items():
            console.print(f"{kind}: {path}")
    if len(recs) > 1:
        show(fleet_table(fleet_summary(recs)), wide=True)
        for kind, path in fleet_reports(recs, r.reports_path(), images).items():
            console.print(f"fleet {kind}: {path}")
    return recs


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
    for flag, value in (("--bandwidth-gbs", bandwidth_gbs), ("--gflops", gflops), ("--ram-mb", ram_mb)):
        if value is not None and not value > 0:
            raise UserError(f"{flag} must be above 0, not {value:g}", field="predict")
    if bandwidth_gbs is not None or gflops is not None:
        if bandwidth_gbs is None or gflops is None:
            raise UserError("give both --bandwidth-gbs and --gflops to describe a device", field="predict")
        device = Roofline(bandwidth_gbs=bandwidth_gbs, gflops=gflops, threads=0)
        preds = predict_variants(pipeline.load_manifest(r).variants, device, ram_mb)
        show(prediction_table(preds, f"Predicted for a device with {bandwidth_gbs:g} GB/s, {gflops:g} GFLOP/s"), wide=True)
        return
    for device_report in service.device_reports(r, report):
        prompt = r.response_prompt_tokens
        rows, summary = predicted_vs_measured(device_report, prompt)
        roof = device_report.roofline
        show(prediction_table(rows, f"{device_report.device.hostname}: roofline {roof.bandwidth_gbs:g} GB/s, {roof.gflops:g} GFLOP/s"),
             wide=True)
        console.print(f"measured / predicted, median: decode {summary['decode_measured_over_predicted_median']}, "
                      f"prefill at {prompt} tokens {summary['prefill_measured_over_predicted_median']}")


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
def export(
    recipe: RecipeArg,
    report: ReportsOpt = None,
    out: Annotated[Path | None, typer.Option(help="folder (default: the reports folder's export/<device id>/)")] = None,
    variant: Annotated[str | None, typer.Option(help="export this variant id instead of the pick")] = None,
) -> None:
    """Hand the pick to a runner: Ollama Modelfile and llama-server command (GGUF), ONNX Runtime or GPTQModel snippet."""
    from toolkit.export import export_pick

    r = load_recipe(recipe)
    reports = service.device_reports(r, report)
    for device_report, rec in zip(reports, service.recommend_each(r, reports), strict=True):
        folder = out / device_report.device.id if out and len(reports) > 1 else out or r.reports_path() / "export" / device_report.device.id
        for kind, path in export_pick(rec, device_report, folder, variant).items():
            console.print(f"{rec.device_id} {kind}: {path}", highlight=False)


@app.command()
def schemas(out: Annotated[Path | None, typer.Option(help="folder (default: schemas/ in the repository)")] = None) -> None:
    """Regenerate the JSON Schemas of the recommendation and device-report records (schemas/)."""
    from toolkit.schemas import SCHEMA_DIR, write

    for path in write(out or SCHEMA_DIR):
        console.print(str(path), highlight=False)
