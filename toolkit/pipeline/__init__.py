"""The pipeline's stages as plain functions: a recipe in, typed records on disk out. The CLI only calls these.

    compress.py   candidate models -> variants (toolkit/formats) -> manifest.json (build.py: one candidate)
    evaluate.py   fidelity.py (perplexity, KL, top-1 vs the base model) + accuracy.py (lm-eval tasks)
    profile.py    on the device: rounds of fresh processes, certification (certify.py) -> device report
    search.py     the staged search: fidelity, profile, accuracy, certification, each only for what can still
                  win (gates.py says what is ruled out and why); `search: exhaustive` runs evaluate then profile
    jobs.py       the typed jobs a child process runs and the results it returns (profiling/worker.py)
    executor.py   where compress and evaluation jobs run: here, one at a time, or fanned out over Ray
    fleet_ray.py  the profile stage on each device of a Ray cluster (toolkit profile --devices)
    handoff.py    one tar of what profiling reads, for a device without Ray (toolkit pack)
    cache.py      load-or-compute: every result is cached by everything it depends on
    workspace.py  what the stages share: workspace, manifest, this device
Recommendation (toolkit/recommend) reads the device report; it measures nothing.
"""

from toolkit.pipeline.compress import compress
from toolkit.pipeline.evaluate import evaluate
from toolkit.pipeline.profile import profile
from toolkit.pipeline.search import search
from toolkit.pipeline.workspace import load_manifest

__all__ = ["compress", "evaluate", "load_manifest", "profile", "search"]
