"""Cloud providers as fallback options: price per response and typical latency from a YAML catalogue."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolkit.errors import UserError
from toolkit.recipe import validation_error

ROOT = Path(__file__).resolve().parent.parent.parent


class CloudModel(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    provider: str
    model: str
    usd_per_1m_input: float = Field(ge=0)
    usd_per_1m_output: float = Field(ge=0)
    ttft_ms: float = Field(gt=0)
    tokens_per_s: float = Field(gt=0)
    rtt_ms: float = Field(0, ge=0)
    api_base: str | None = Field(None, description="OpenAI-compatible endpoint, for self-hosted or stand-in clouds")
    litellm_model: str | None = Field(None, description="LiteLLM model string (default: <provider>/<model>)")
    accuracy: dict[str, float] = Field(default_factory=dict)

    def cost_usd(self, prompt_tokens: int, output_tokens: int) -> float:
        return (prompt_tokens * self.usd_per_1m_input + output_tokens * self.usd_per_1m_output) / 1e6

    def first_token_ms(self) -> float:
        return self.rtt_ms + self.ttft_ms

    def response_s(self, output_tokens: int) -> float:
        return self.first_token_ms() / 1000 + output_tokens / self.tokens_per_s


class CloudCatalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")
    providers: list[CloudModel] = Field(min_length=1)


def load_providers(path: str | Path, base: Path | None = None) -> list[CloudModel]:
    path = Path(path)
    if not path.is_absolute():
        candidates = [(base or Path.cwd()) / path, ROOT / path]
        path = next((p for p in candidates if p.exists()), candidates[0])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError("cloud provider catalogue not found", file=path, field="cloud.providers") from exc
    except yaml.YAMLError as exc:
        raise UserError(f"not valid YAML ({exc})", file=path) from exc
    try:
        return CloudCatalogue.model_validate(raw).providers
    except ValidationError as exc:
        raise validation_error(exc, path) from exc
