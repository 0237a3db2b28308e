"""What would make a run of a recipe end without an answer, found before any work: `toolkit run` and `toolkit
profile` raise it, `toolkit doctor` reports it as a FAIL."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from toolkit.errors import UserError
from toolkit.io import importable
from toolkit.profiling import meters
from toolkit.recipe import Recipe
from toolkit.recommend.metrics import BY_BUDGET, NO_ENERGY

# What compress and evaluate import, module -> distribution: the `build` extra, which a device install leaves out
BUILD_TOOLS = {"torch": "torch", "transformers": "transformers", "optimum": "optimum", "lm_eval": "lm-eval"}


def preflight(recipe: Recipe, formats: list[str] | None = None, *, whole_run: bool = False) -> None:
    """Raise the first reason this device cannot answer the recipe (measuring only `formats`, if given): its
    llama.cpp missing, or its budget on energy with nothing to give energy; for a `whole_run` (`toolkit run`, which
    also scores accuracy and answers with the cloud), an unknown accuracy task or an unpriced cloud model too."""
    if whole_run:
        from toolkit.pipeline.accuracy import task_dirs
        from toolkit.recommend.service import providers

        task_dirs(recipe)
        providers(recipe)
    native = native_runtime_error(recipe) if not formats or "gguf" in formats else None
    for error in (native, energy_budget_error(recipe)):
        if error:
            raise error


def native_runtime_error(recipe: Recipe) -> UserError | None:
    """The error for a recipe that chooses the native llama.cpp where its binaries are not found, or None."""
    if recipe.device.llama_cpp.runtime != "native":
        return None
    from toolkit.runtimes import RUNTIMES

    with native_bin(recipe):
        why = RUNTIMES["llama.cpp-native"].available()
    return UserError(f"chooses runtime: native, and {why}", file=recipe.path, field="device.llama_cpp") if why else None


@contextlib.contextmanager
def native_bin(recipe: Recipe | None) -> Iterator[None]:
    """EDGEFIRST_LLAMA_CPP_BIN set from the recipe, as profiling sets it, and put back after."""
    from toolkit.pipeline.workspace import use_llama_cpp_bin
    from toolkit.runtimes.llamacpp_native import ENV_BIN

    before = os.environ.get(ENV_BIN)
    if recipe:
        use_llama_cpp_bin(recipe)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_BIN, None)
        else:
            os.environ[ENV_BIN] = before


def energy_budget_error(recipe: Recipe | None, choice: meters.Choice | None = None) -> UserError | None:
    """The error for a budget that limits energy or cost on a device that can neither meter nor estimate it
    (recommend would have nothing to hold to the limit), or None."""
    limits = [field for field, metric in BY_BUDGET.items()
              if metric.missing == NO_ENERGY and recipe and getattr(recipe.budget, field) is not None]
    if not limits:
        return None
    if choice is None:
        choice = meters.choose(recipe.device.energy_meter, recipe.device.power.model_dump() if recipe.device.power else None)
        choice.close()
    if choice.meter:
        return None
    return UserError(f"the budget limits energy per response ({', '.join(limits)}), but this device has no readable "
                     f"meter ({choice.why_not_measured()}) and the recipe no device.power to estimate it from",
                     file=recipe.path, field=f"budget.{limits[0]}")


def build_tools_error(command: str) -> UserError | None:
    """The error for `toolkit <command>` (compress, evaluate, run) where this install lacks the build tools: a
    device install (`pip install -e .`) profiles, recommends and deploys, and leaves compressing to a build machine."""
    missing = [dist for module, dist in BUILD_TOOLS.items() if not importable(module)]
    if not missing:
        return None
    return UserError(f"toolkit {command} needs the build tools, and this install has no {', '.join(missing)}: install "
                     "them with pip install -e '.[build]' (or ./scripts/setup.sh), or compress elsewhere and bring "
                     "the workspace here with toolkit pack, for toolkit profile")
