"""Table I of the Edge-First paper (Jang & Morabito, "Edge-First Language Model Inference: Models, Metrics, and
Tradeoffs", IEEE ICDCS 2025 workshops, arXiv:2505.16508), recomputed from the paper's inputs through the
toolkit's own cost functions: energy per response x electricity price for the edge (options.edge_cost_per_1k),
tokens x price from LiteLLM's map for the cloud (recommend.cloud). Only rows whose inputs we could source."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from toolkit.recipe import Cloud, Costs
from toolkit.recommend.cloud import ROOT, load_providers
from toolkit.recommend.options import edge_cost_per_1k

SOURCE = "Table I of Jang & Morabito, Edge-First Language Model Inference (arXiv:2505.16508)"
NOTE = "Only the rows whose inputs we could source; the paper's other rows are not reproduced here."
ELECTRICITY_USD_PER_KWH = 0.25  # the paper's 25 c/kWh
PROMPT_TOKENS, OUTPUT_TOKENS = 150, 200  # the paper's response shape for cloud APIs


class EdgeInput(BaseModel):
    device: str
    model: str
    energy_j: float  # per response, as measured in the paper
    published_cents: float


class CloudInput(BaseModel):
    model: str  # LiteLLM name
    published_cents: float


EDGE = [EdgeInput(device="Jetson AGX Orin", model="Qwen2.5-7B", energy_j=590, published_cents=0.0041)]
CLOUD = [CloudInput(model="gpt-4", published_cents=1.65)]


class Row(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: str
    model: str
    inputs: str
    formula: str
    computed_cents: float
    published_cents: float
    source: str

    @property
    def matches(self) -> bool:
        """Equal at the published figure's precision."""
        digits = len(f"{self.published_cents:g}".partition(".")[2])
        return round(self.computed_cents, digits) == self.published_cents


def table_one() -> list[Row]:
    costs = Costs(electricity_usd_per_kwh=ELECTRICITY_USD_PER_KWH)
    rows = []
    for e in EDGE:
        per_1k = edge_cost_per_1k(e.energy_j, 0.0, costs)
        assert per_1k is not None
        rows.append(Row(
            platform=f"edge: {e.device}", model=e.model, inputs=f"{e.energy_j:g} J, ${costs.electricity_usd_per_kwh:g}/kWh",
            formula=f"{e.energy_j:g} J / 3.6e6 J/kWh x ${costs.electricity_usd_per_kwh:g}", computed_cents=per_1k / 10,
            published_cents=e.published_cents, source="energy: the paper; cost: options.edge_cost_per_1k",
        ))
    settings = Cloud(models=[c.model for c in CLOUD])
    for c, model in zip(CLOUD, load_providers(settings.providers, ROOT, settings), strict=True):
        rows.append(Row(
            platform=f"cloud: {model.provider}", model=c.model, inputs=f"{PROMPT_TOKENS} + {OUTPUT_TOKENS} tokens",
            formula=model.formula(PROMPT_TOKENS, OUTPUT_TOKENS), computed_cents=model.cost_usd(PROMPT_TOKENS, OUTPUT_TOKENS) * 100,
            published_cents=c.published_cents, source=model.price_source,
        ))
    return rows
