"""`toolkit`: thin command line over the pipeline's stages."""

from __future__ import annotations

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
from toolkit.errors import UserError
from toolkit.recipe import Budget, Recipe, load_recipe, validation_error
from toolkit.recommend.cloud import load_providers
from toolkit.recommend.engine import Recommendation
from toolkit.recommend.engine import recommend as make_recommendation
from toolkit.records import DeviceReport
from toolkit.render import cloud_table, console, manifest_table, models_table, recommendation_table
from toolkit.reports import write_reports

app = typer.Typer(
    help="Edge-first SLM toolkit: models -> compress -> evaluate -> profile (on the device) -> recommend. "
    "`run` does all stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

RecipeArg = Annotated[Path, typer.Argument(help="recipe YAML, e.g. recipes/demo.yaml")]


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
    console.print(models_table(list(catalogue().values())))


@app.command()
def compress(recipe: RecipeArg) -> None:
    """Build every variant the recipe asks for (cached by content hash)."""
    r = load_recipe(recipe)
    with progress_bar() as update:
        manifest = stages.compress(r, update)
    console.print(manifest_table(manifest))


@app.command()
def evaluate(recipe: RecipeArg) -> None:
    """Score each variant's fidelity: perplexity on local text, each variant in its own process."""
    r = load_recipe(recipe)
    with progress_bar() as update:
        results = stages.evaluate(r, update)
    for q in results:
        shown = f"ppl {q.perplexity:.3f} over {q.tokens_scored} tokens" if q.perplexity else f"{q.status}: {q.reason}"
        console.print(f"{q.variant_id}: {shown}")


@app.command()
def profile(
    recipe: RecipeArg,
    out: Annotated[Path | None, typer.Option(help="where to write the device report JSON")] = None,
) -> None:
    """Measure every variant on this device, each in its own process; write the device report."""
    r = load_recipe(recipe)
    with progress_bar() as update:
        report, path = stages.profile(r, update, out)
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
    report: Annotated[Path | None, typer.Option(help="device report JSON (default: this device's latest)")] = None,
    max_ttft_ms: Annotated[float | None, typer.Option(help="p90 time to first token, ms")] = None,
    ttft_prompt_tokens: Annotated[int | None, typer.Option(help="prompt length the budget is for")] = None,
    min_decode_tps: Annotated[float | None, typer.Option(help="decode tokens/s (slow end, p10)")] = None,
    max_memory_mb: Annotated[float | None, typer.Option(help="peak resident memory, MB")] = None,
    max_perplexity: Annotated[float | None, typer.Option(help="perplexity on the recipe's corpus")] = None,
    max_energy_j: Annotated[float | None, typer.Option(help="energy per response, J")] = None,
    max_cost_per_1k_usd: Annotated[float | None, typer.Option(help="cost of 1,000 responses, USD")] = None,
    output_tokens: Annotated[int | None, typer.Option(help="response length for energy and cost")] = None,
    priority: Annotated[str | None, typer.Option(help="balanced | pcr | quality | speed | memory | cost")] = None,
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
    show_recommendation(r, budget, report)


@app.command()
def report(
    recipe: RecipeArg,
    report: Annotated[Path | None, typer.Option(help="device report JSON (default: this device's latest)")] = None,
) -> None:
    """Rebuild the JSON, Markdown and HTML reports from stored results, without measuring anything."""
    r = load_recipe(recipe)
    rec = build_recommendation(r, r.budget, report)
    for kind, path in write_reports(rec, r.reports_path()).items():
        console.print(f"{kind}: {path}")


def build_recommendation(r: Recipe, budget: Budget, report_path: Path | None) -> Recommendation:
    path = report_path or _latest_report(r)
    providers = load_providers(r.cloud.providers, r.base_dir) if r.cloud.enabled else []
    return make_recommendation(DeviceReport.load(path), budget, r.costs, providers)


def show_recommendation(r: Recipe, budget: Budget, report_path: Path | None) -> Recommendation:
    rec = build_recommendation(r, budget, report_path)
    console.print(recommendation_table(rec))
    if rec.cloud_rows:
        console.print(cloud_table(rec))
    console.print(("[bold green]" if rec.answer == "edge" else "[bold yellow]") + rec.message)
    for kind, path in write_reports(rec, r.reports_path()).items():
        console.print(f"{kind}: {path}")
    return rec


def _latest_report(r: Recipe) -> Path:
    folder = r.workspace_dir() / "reports"
    reports = sorted(folder.glob("device-*.json"), key=lambda p: p.stat().st_mtime)
    if not reports:
        raise UserError(f"no device report yet; run `toolkit profile {r.path}` or pass --report", file=folder)
    return reports[-1]


@app.command()
def run(recipe: RecipeArg) -> None:
    """All stages: compress, evaluate, profile, recommend. Finished work is reused."""
    r = load_recipe(recipe)
    with progress_bar() as update:
        manifest = stages.compress(r, update)
    console.print(manifest_table(manifest))
    with progress_bar() as update:
        stages.evaluate(r, update)
    with progress_bar() as update:
        _, path = stages.profile(r, update)
    console.print(f"device report: {path}")
    show_recommendation(r, r.budget, path)


def entry() -> None:
    try:
        app()
    except UserError as exc:
        console.print(f"[bold red]error:[/] {exc.one_line()}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    entry()
