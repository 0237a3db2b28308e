"""Cloud models as fallback options: prices from LiteLLM's offline price map (`litellm.model_cost`) for any
model name, and what the map lacks (latency priors, accuracy with its source, negotiated prices) from a YAML
catalogue."""

from __future__ import annotations

import difflib
import functools
import os
from importlib.metadata import version
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolkit.config import Strict, read_yaml, validation_error
from toolkit.errors import UserError
from toolkit.recipe import Cloud

ROOT = Path(__file__).resolve().parent.parent.parent
RESERVED = {"sample_spec", "fallback_generalizations"}  # map keys that are not models
TEXT_MODES = {"chat", "completion", "responses"}


class CloudModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    provider: str
    model: str
    usd_per_1m_input: float = Field(ge=0)
    usd_per_1m_output: float = Field(ge=0)
    usd_per_1m_cached_input: float | None = Field(None, ge=0, description="prompt tokens read from the provider's cache")
    usd_per_request: float = Field(0, ge=0, description="fixed fee per request (per-request price, web-search fee)")
    cached_prompt_fraction: float = Field(0, ge=0, le=1, description="share of prompt tokens served from the cache")
    ttft_ms: float = Field(gt=0)
    tokens_per_s: float = Field(gt=0)
    rtt_ms: float = Field(0, ge=0)
    api_base: str | None = Field(None, description="OpenAI-compatible endpoint, for self-hosted or stand-in clouds")
    litellm_model: str | None = Field(None, description="LiteLLM model string (default: <provider>/<model>)")
    litellm_provider: str | None = Field(None, description="LiteLLM provider (names the API key variable)")
    accuracy: dict[str, float] = Field(default_factory=dict)
    accuracy_source: str | None = None
    price_source: str = "catalogue"

    def cached_tokens(self, prompt_tokens: int) -> float:
        return prompt_tokens * self.cached_prompt_fraction if self.usd_per_1m_cached_input is not None else 0.0

    def cost_usd(self, prompt_tokens: int, output_tokens: int) -> float:
        cached = self.cached_tokens(prompt_tokens)
        per_token = ((prompt_tokens - cached) * self.usd_per_1m_input + cached * (self.usd_per_1m_cached_input or 0.0)
                     + output_tokens * self.usd_per_1m_output)
        return per_token / 1e6 + self.usd_per_request

    def formula(self, prompt_tokens: int, output_tokens: int) -> str:
        """The cost of one response as arithmetic on its prices (USD per 1M tokens)."""
        cached = self.cached_tokens(prompt_tokens)
        terms = [f"{prompt_tokens - cached:g} prompt x ${self.usd_per_1m_input:g}"]
        if cached:
            terms.append(f"{cached:g} cached x ${self.usd_per_1m_cached_input:g}")
        terms.append(f"{output_tokens} output x ${self.usd_per_1m_output:g}")
        fee = f" + ${self.usd_per_request:g} per request" if self.usd_per_request else ""
        return f"({' + '.join(terms)}) / 1M{fee}"

    def first_token_ms(self) -> float:
        return self.rtt_ms + self.ttft_ms

    def response_s(self, output_tokens: int) -> float:
        return self.first_token_ms() / 1000 + output_tokens / self.tokens_per_s


class CloudCatalogue(BaseModel):
    """The original format: every model priced by hand. Still read, for catalogues written before the map."""

    model_config = ConfigDict(extra="forbid")
    providers: list[CloudModel] = Field(min_length=1)


# --- the catalogue of what LiteLLM's map lacks ---


class Priors(Strict):
    """Typical latency of a hosted model (published or commonly measured, not ours); rtt_ms is the edge site's."""

    ttft_ms: float | None = Field(None, gt=0)
    tokens_per_s: float | None = Field(None, gt=0)
    rtt_ms: float | None = Field(None, ge=0)


class Defaults(Priors):
    ttft_ms: float = Field(gt=0)
    tokens_per_s: float = Field(gt=0)
    rtt_ms: float = Field(0, ge=0)


class ProviderEntry(Priors):
    label: str | None = Field(None, description="how reports name the provider (default: LiteLLM's provider name)")


class Price(Strict):
    """A negotiated price over the map's, or the price of a model the map lacks (then input and output are needed)."""

    usd_per_1m_input: float | None = Field(None, ge=0)
    usd_per_1m_output: float | None = Field(None, ge=0)
    usd_per_1m_cached_input: float | None = Field(None, ge=0)
    usd_per_request: float | None = Field(None, ge=0)
    source: str = Field(min_length=1, description="where the figure comes from: a contract, a price page and its date")


class ModelEntry(Priors):
    provider: str | None = Field(None, description="LiteLLM provider, for a model the map lacks")
    price: Price | None = None
    accuracy: dict[str, float] = Field(default_factory=dict)
    accuracy_source: str | None = None
    api_base: str | None = None


class Catalogue(Strict):
    defaults: Defaults
    by_provider: dict[str, ProviderEntry] = Field(default_factory=dict)
    models: dict[str, ModelEntry] = Field(default_factory=dict)


@functools.cache
def price_map() -> tuple[dict[str, dict], str]:
    """LiteLLM's price map, never downloaded, and a line that identifies it (version, file's git blob id, size)."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before litellm is imported: the bundled map, no fetch
    import litellm

    models = {k: v for k, v in litellm.model_cost.items() if k not in RESERVED and isinstance(v, dict)}
    where = "bundled map"
    try:
        from litellm.litellm_core_utils.get_model_cost_map import get_model_cost_map_source_info

        info = get_model_cost_map_source_info()
        where = f"{info['source']} map" + (f", git blob {info['source_revision'][:12]}" if info.get("source_revision") else "")
    except (ImportError, AttributeError, KeyError):
        pass
    return models, f"LiteLLM {version('litellm')} price map ({where}, {len(models)} models)"


def _lookup(name: str) -> tuple[str, dict] | None:
    """The map's entry for a name, also as <provider>/<name> when the map keeps the bare name (openai/gpt-4o-mini)."""
    models, _ = price_map()
    if isinstance(models.get(name), dict):
        return name, models[name]
    provider, _, bare = name.partition("/")
    entry = models.get(bare)
    if bare and isinstance(entry, dict) and entry.get("litellm_provider") == provider:
        return bare, entry
    return None


def closest_names(name: str, n: int = 5) -> list[str]:
    models, _ = price_map()
    return difflib.get_close_matches(name, list(models), n=n, cutoff=0.5)


def _per_1m(value: object) -> float | None:
    return round(float(value) * 1e6, 9) if isinstance(value, int | float) else None


def map_prices(entry: dict, web_search: str | None = None) -> dict[str, float | None]:
    """Per-1M-token prices and per-request fees from one map entry."""
    fee = float(entry.get("input_cost_per_request") or 0.0)
    search = entry.get("search_context_cost_per_query")
    if web_search and isinstance(search, dict):
        fee += float(search.get(f"search_context_size_{web_search}") or 0.0)
    return {
        "usd_per_1m_input": _per_1m(entry.get("input_cost_per_token")),
        "usd_per_1m_output": _per_1m(entry.get("output_cost_per_token")),
        "usd_per_1m_cached_input": _per_1m(entry.get("cache_read_input_token_cost")),
        "usd_per_request": fee,
    }


def cloud_model(name: str, catalogue: Catalogue, settings: Cloud, file: Path | str | None, field: str) -> CloudModel:
    """One cloud option: the map's prices for `name` (or the catalogue's), the catalogue's priors and accuracy."""
    found = _lookup(name)
    entry = catalogue.models.get(found[0] if found else name) or catalogue.models.get(name) or ModelEntry()
    override = entry.price.model_dump(exclude={"source"}, exclude_none=True) if entry.price else {}
    if found is None:
        if not {"usd_per_1m_input", "usd_per_1m_output"} <= override.keys():
            near = ", ".join(closest_names(name)) or "none"
            raise UserError(f"LiteLLM's price map has no model {name!r} (closest: {near}); or give its price in "
                            f"{settings.providers} under models.{name}.price", file=file, field=field)
        provider = entry.provider or (name.partition("/")[0] if "/" in name else "custom")
        prices: dict[str, float | None] = {"usd_per_request": 0.0} | override
        source = f"catalogue: {entry.price.source}"
    else:
        key, raw = found
        provider = entry.provider or str(raw.get("litellm_provider") or "custom")
        prices = map_prices(raw, settings.web_search) | override
        if (mode := raw.get("mode") or "chat") not in TEXT_MODES:
            raise UserError(f"{key!r} has mode {mode!r} in LiteLLM's map, not a chat model", file=file, field=field)
        if prices["usd_per_1m_input"] is None or prices["usd_per_1m_output"] is None:
            raise UserError(f"{key!r} has no per-token price in LiteLLM's map", file=file, field=field)
        source = price_map()[1] + (f"; {', '.join(override)} from the catalogue: {entry.price.source}" if override else "")
    by = catalogue.by_provider.get(provider, ProviderEntry())
    priors = catalogue.defaults.model_dump()
    for layer in (by, entry):
        priors |= layer.model_dump(include={"ttft_ms", "tokens_per_s", "rtt_ms"}, exclude_none=True)
    return CloudModel(
        id=name.replace("/", "-"), provider=by.label or provider, model=name.removeprefix(f"{provider}/"),
        litellm_model=name, litellm_provider=provider, api_base=entry.api_base, accuracy=entry.accuracy,
        accuracy_source=entry.accuracy_source, price_source=source, cached_prompt_fraction=settings.cached_prompt_fraction,
        **priors, **prices,
    )


def load_providers(path: str | Path, base: Path | None = None, settings: Cloud | None = None,
                   recipe_file: Path | str | None = None) -> list[CloudModel]:
    """The cloud options a recipe names (`cloud.models`; default: every model in the catalogue)."""
    settings = settings or Cloud(providers=str(path))
    path = Path(path)
    if not path.is_absolute():
        candidates = [(base or Path.cwd()) / path, ROOT / path]
        path = next((p for p in candidates if p.exists()), candidates[0])
    raw = read_yaml(path, "cloud catalogue", file=recipe_file, field="cloud.providers")
    try:
        if isinstance(raw, dict) and isinstance(raw.get("providers"), list):
            if settings.models:
                raise UserError(f"{path} prices models by hand (providers: [...]); naming models needs a catalogue "
                                "with defaults/models, as models/cloud/providers.yaml", file=recipe_file, field="cloud.models")
            return CloudCatalogue.model_validate(raw).providers
        catalogue = Catalogue.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, path) from exc
    if settings.models:
        return [cloud_model(n, catalogue, settings, recipe_file, "cloud.models") for n in settings.models]
    return [cloud_model(n, catalogue, settings, path, f"models.{n}") for n in catalogue.models]

