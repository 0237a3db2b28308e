"""The local executor (the default): jobs in child processes of this machine, builds in this process.

Fidelity and accuracy jobs run two at a time where the recipe has two threads or more, each with half of them:
a job's one-threaded parts (Python start-up, lm-eval, the numpy reductions) then overlap the other job's
runtime work. llama.cpp computes every logit the same whatever its thread count, so the numbers do not change
(checked on the demo's GGUF variants); on 2 cores two demo variants took 11% less time than one at a time.
Profiling never runs here side by side: it calls `jobs.run` itself, one process at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psutil

from toolkit.pipeline import jobs
from toolkit.pipeline.build import Built, build_candidate, candidate_params
from toolkit.pipeline.workspace import threads
from toolkit.profiling.device import usable_cpus
from toolkit.profiling.harness import ChildResult
from toolkit.recipe import Recipe
from toolkit.records import Variant

# Peak memory of one candidate's build per parameter, with room: Gemma 3 270M's (dequantized to fp32, then
# onnxruntime-genai's builder) peaked at 4.7 GB, 17 bytes per parameter.
BUILD_BYTES_PER_PARAM = 32
JOB_OVERHEAD_BYTES = 2 << 30  # an evaluation child besides its variant: Python, lm-eval, a round of logits
JOBS_AT_ONCE = 2  # enough to overlap one job's one-threaded parts with the other's runtime work


class Local:
    """Jobs in child processes here, `width` at a time, each with its share of the threads; candidates built side
    by side as `local_build_width` allows."""

    def __init__(self, width: int = 1) -> None:
        self.width = width

    def run(self, job: jobs.Job, timeout_s: float, memory_cap_mb: float | None, log: Path,
            returns: Path | None = None) -> ChildResult:
        if self.width > 1:
            job = job.model_copy(update={"threads": max(1, job.threads // self.width)})
        return jobs.run(job, timeout_s, memory_cap_mb, log)

    def build(self, recipe: Recipe, index: int, ws: Path, step: Callable[[str], None]) -> Built:
        return build_candidate(recipe, index, ws, step)

    def build_width(self, recipe: Recipe) -> int:
        return local_build_width(recipe)

    def for_jobs(self, recipe: Recipe, variants: list[Variant]) -> Local:
        return Local(local_job_width(recipe, variants))


LOCAL = Local()


def local_build_width(recipe: Recipe) -> int:
    """How many candidates to build at once on this machine. Half of a build is one-threaded Python (the
    dequantize, llama.cpp's converter, onnxruntime-genai's builder), so two builds share two cores well: as
    many as there are usable cores, as long as every build's peak (BUILD_BYTES_PER_PARAM) fits the memory available;
    one at a time when a candidate's size is unknown."""
    if len(recipe.candidates) < 2:
        return 1
    sizes = [candidate_params(c, recipe) for c in recipe.candidates]
    if None in sizes:
        return 1
    fits = psutil.virtual_memory().available // (BUILD_BYTES_PER_PARAM * max(sizes))
    return int(max(1, min(len(sizes), usable_cpus(), fits)))


def local_job_width(recipe: Recipe, variants: list[Variant]) -> int:
    """Evaluation jobs at once here: JOBS_AT_ONCE with two threads or more, while that many children of the
    largest variant fit in half this machine's memory (its total, so a rerun decides the same)."""
    largest = max((v.size_bytes for v in variants), default=0)
    fits = psutil.virtual_memory().total // 2 // (2 * largest + JOB_OVERHEAD_BYTES)
    return int(max(1, min(JOBS_AT_ONCE, threads(recipe), fits)))
