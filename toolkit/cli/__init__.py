"""`toolkit`: the command line. It parses, calls the pipeline (toolkit/pipeline) or the recommendation service
(toolkit/recommend/service.py), and renders; it decides nothing itself.

    app.py      the typer app, shared options, flags generated from pydantic models
    stage.py    models, tasks, compress, evaluate, profile, run, doctor, llama-cpp-build
    decide.py   recommend, report, predict, export, paper, schemas
    cluster.py  simulate, deploy, serve
"""

from __future__ import annotations

import signal
import sys

from rich.markup import escape

from toolkit.cli import cluster, decide, stage  # noqa: F401 - each module registers its commands on `app`
from toolkit.cli.app import app
from toolkit.errors import UserError
from toolkit.render import console


def _terminate(signum: int, frame) -> None:
    sys.exit(128 + signum)  # unwinds, so atomic writes clean up their temporary files


def entry() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except UserError as exc:
        console.print(f"[bold red]error:[/] {escape(exc.one_line())}", highlight=False, soft_wrap=True)
        sys.exit(2)


__all__ = ["app", "entry"]
