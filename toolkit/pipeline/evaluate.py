"""Stage 2: fidelity (pipeline/fidelity.py) and accuracy (pipeline/accuracy.py) of every variant."""

from __future__ import annotations

from toolkit.pipeline.accuracy import accuracy, task_dirs
from toolkit.pipeline.executor import LOCAL, Executor
from toolkit.pipeline.fidelity import fidelity
from toolkit.pipeline.gates import quality_gate
from toolkit.pipeline.workspace import Progress, corpus, load_manifest, quiet, workspace
from toolkit.recipe import Recipe
from toolkit.records import EvalResult, Quality


def evaluate(recipe: Recipe, progress: Progress = quiet,
             executor: Executor = LOCAL) -> tuple[list[Quality], list[EvalResult]]:
    """Fidelity, then accuracy of what the quality gate leaves (staged search), each job on `executor`."""
    workspace(recipe)
    manifest = load_manifest(recipe)
    task_dirs(recipe)  # an unknown task stops the run here, before fidelity
    quality = fidelity(recipe, manifest, corpus(recipe), progress, executor)
    ruled_out = quality_gate(recipe, quality) if recipe.search == "staged" else {}  # pipeline/search.py
    results = accuracy(recipe, manifest, progress, ruled_out, executor)
    progress("done", len(manifest.variants), len(manifest.variants))
    return quality, results
