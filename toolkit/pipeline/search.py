"""The staged search (recipe `search: staged`, the default): measure only what can still be the pick, cheapest
work first.

1. compress every variant (compress.py);
2. fidelity of every variant (seconds each); a variant that breaks the budget's quality limits (KL,
   perplexity, bits per byte) is not measured further, and its scoring stops as soon as its figures over the
   whole text are sure to break them (status `stopped`, with lower bounds: quality/fidelity.py);
3. profile the rest once: the first round of rounds (profile.py), one fresh process each;
4. accuracy (the slowest stage) only for variants that would meet every timing and memory limit even with
   their timings `device.noise_margin` better: the others cannot be the pick;
5. the rounds with accuracy known (the first is reused from the cache), so which variants get more rounds is
   decided on every figure, as in the exhaustive sweep; then the pick is certified and the report written.

A variant ruled out keeps its row in every report, with what was measured and "not measured further:
<reason>". Early exits never change the answer on the same measurements: each rules out only variants that
break the budget whatever else is measured, selection decides feasibility before anything else
(recommend/select.py), and such variants stay out of the bootstrap in both modes (noise.within_reach), so they
move neither the pick, the front, any utility, nor the rounds. `search: exhaustive` measures every variant
fully (every point on the plots), in the order compress, evaluate, profile.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from toolkit.pipeline.accuracy import accuracy, task_dirs
from toolkit.pipeline.executor import LOCAL, Executor
from toolkit.pipeline.fidelity import fidelity
from toolkit.pipeline.gates import quality_gate, timing_gate
from toolkit.pipeline.profile import profile
from toolkit.pipeline.workspace import Progress, corpus, load_manifest, quiet, workspace
from toolkit.recipe import Recipe
from toolkit.records import DeviceReport


def search(recipe: Recipe, progress: Progress = quiet, out: Path | None = None,
           on_step: Callable[[str], None] = lambda _: None, executor: Executor = LOCAL) -> tuple[DeviceReport, Path]:
    """Steps 2-5 of the module docstring on a compressed workspace; returns the device report and its path.
    `on_step` hears each step's name as it starts (bench/bench_pipeline.py times them). Fidelity and accuracy
    run on `executor`; profiling always runs here, on the device."""
    workspace(recipe)
    manifest = load_manifest(recipe)
    task_dirs(recipe)  # an unknown task stops the run here, before fidelity
    on_step("fidelity")
    quality = fidelity(recipe, manifest, corpus(recipe), progress, executor)
    ruled = quality_gate(recipe, quality)
    on_step("profile")
    once = recipe.model_copy(update={"device": recipe.device.model_copy(update={"rounds": 1, "max_rounds": 1})})
    first, _ = profile(once, progress, ruled_out=ruled, certify_pick=False, write=False)
    slow = timing_gate(recipe, first)
    on_step("accuracy")
    accuracy(recipe, manifest, progress, ruled_out=ruled | slow, executor=executor)
    on_step("profile + certify")
    return profile(recipe, progress, out=out, ruled_out=ruled, not_evaluated=slow)
