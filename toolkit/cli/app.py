"""The typer app and what every command shares: argument types, the progress bar."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import typer
from pydantic import BaseModel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from toolkit import __version__
from toolkit.render import console

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
ReportsOpt = Annotated[list[Path] | None, typer.Option("--report", help="device report JSON or folder; repeat for a fleet")]


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


def model_flags(model: type[BaseModel], fields: list[str] | None = None) -> Callable[[Callable], Callable]:
    """Give a command one `--flag` per field of `model` (None: keep the recipe's value), generated from the
    model so that every field has one; the values reach the command in its `**kwargs`."""

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        for name, field in model.model_fields.items():
            if fields is not None and name not in fields:
                continue
            kind, choices = _flag_type(field.annotation)
            help_text = (field.description or name.replace("_", " ")) + (f" ({' | '.join(choices)})" if choices else "")
            option = typer.Option(f"--{name.replace('_', '-')}", help=help_text, show_default=False)
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                            annotation=Annotated[kind | None, option]))
        command.__signature__ = signature.replace(parameters=params)
        return command

    return decorate


def _flag_type(annotation: Any) -> tuple[type, list[str]]:
    """The command-line type of a field (float, int, str) and its choices when it is a Literal."""
    if get_origin(annotation) is Literal:
        return str, [str(c) for c in get_args(annotation)]
    first = next((a for a in get_args(annotation) if a is not type(None)), annotation)
    if get_origin(first) is Literal:
        return str, [str(c) for c in get_args(first)]
    return (first if first in (int, float, str) else str), []
