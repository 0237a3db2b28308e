"""The YAML recipe that drives every stage, validated into plain data with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from toolkit.errors import UserError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(Strict):
    model: str = Field(description="catalogue id (see `toolkit models`), a local path, or hf:<org>/<name>")
    name: str | None = None
    trust_remote_code: bool = False


class GGUFSpec(Strict):
    quants: list[str] = Field(default_factory=lambda: ["F16", "Q8_0", "Q4_K_M"], min_length=1)
    keep_source: bool = Field(True, description="also profile the source GGUF file as it is")

    @field_validator("quants")
    @classmethod
    def _known_quants(cls, quants: list[str]) -> list[str]:
        from toolkit.formats.gguf import QUANT_TYPES

        normalised = [q.upper() for q in quants]
        for q in normalised:
            if q not in QUANT_TYPES:
                raise ValueError(f"unknown quant type {q!r} (known: {', '.join(QUANT_TYPES)})")
        if len(set(normalised)) != len(normalised):
            raise ValueError("quant types repeat")
        return normalised


class ONNXSpec(Strict):
    precisions: list[Literal["fp32", "int8", "int4"]] = Field(default_factory=lambda: ["fp32", "int8", "int4"], min_length=1)
    int4_block_sizes: list[int] = Field(default_factory=lambda: [32, 128], min_length=1)

    @field_validator("int4_block_sizes")
    @classmethod
    def _power_of_two(cls, sizes: list[int]) -> list[int]:
        for size in sizes:
            if size < 16 or size & (size - 1):
                raise ValueError(f"int4 block size {size} must be a power of two >= 16")
        return sizes


class Calibration(Strict):
    corpus: Literal["flores-eng"] = "flores-eng"
    lines: int = Field(128, ge=8, le=100_000)


class GPTQSpec(Strict):
    bits: list[Literal[4, 8]] = Field(default_factory=lambda: [4, 8], min_length=1)
    group_size: int = Field(64, description="must divide the model's hidden and intermediate sizes; -1 = per column")
    desc_act: bool = False
    calibration: Calibration = Field(default_factory=Calibration)

    @field_validator("group_size")
    @classmethod
    def _group(cls, size: int) -> int:
        if size != -1 and (size < 8 or size & (size - 1)):
            raise ValueError(f"group size {size} must be -1 or a power of two >= 8")
        return size


class Variants(Strict):
    gguf: GGUFSpec | None = Field(default_factory=GGUFSpec)
    onnx: ONNXSpec | None = None
    gptq: GPTQSpec | None = None


class Power(Strict):
    """Whole-device power draw, used to estimate energy where RAPL counters are not readable."""

    idle_w: float = Field(gt=0)
    busy_w: float = Field(gt=0)
    note: str = "figures from the recipe"

    @model_validator(mode="after")
    def _busy_above_idle(self) -> Power:
        if self.busy_w < self.idle_w:
            raise ValueError(f"busy_w {self.busy_w} is below idle_w {self.idle_w}")
        return self


class Device(Strict):
    threads: int | None = Field(None, ge=1, description="threads for every runtime; default all cores")
    prompt_lengths: list[int] = Field(default_factory=lambda: [128, 512], min_length=1)
    decode_tokens: int = Field(128, ge=1, le=8192)
    warmup: int = Field(1, ge=0, le=100)
    repeats: int = Field(3, ge=1, le=1000)
    timeout_s: float = Field(900, gt=0)
    memory_cap_mb: float | None = Field(None, gt=0)
    power: Power | None = None
    rounds: int = Field(2, ge=1, le=50, description="fresh processes per variant that can still win")
    max_rounds: int = Field(6, ge=1, le=50, description="fresh processes at most, for contenders whose order is uncertain")
    target_win_probability: float = Field(0.9, gt=0, le=1, description="stop adding rounds once the pick wins this often")
    extra_time_s: float = Field(600, ge=0, description="measuring time allowed beyond the first round of each variant")
    noise_margin: float = Field(0.25, ge=0, le=1, description="run-to-run timing swing a variant may still win by")
    certify_runs: int = Field(3, ge=0, le=20, description="fresh-process re-measurements of the pick (0: none)")

    @field_validator("prompt_lengths")
    @classmethod
    def _positive(cls, lengths: list[int]) -> list[int]:
        if any(n < 1 or n > 32768 for n in lengths):
            raise ValueError("prompt lengths must be between 1 and 32768 tokens")
        return sorted(set(lengths))

    @model_validator(mode="after")
    def _rounds_in_order(self) -> Device:
        if self.max_rounds < self.rounds:
            raise ValueError(f"max_rounds {self.max_rounds} is below rounds {self.rounds}")
        return self


class QualitySpec(Strict):
    corpus: Literal["flores-eng"] = "flores-eng"
    ctx: int = Field(512, ge=16, le=8192)
    chunks: int = Field(6, ge=1, le=1000)


class Costs(Strict):
    electricity_usd_per_kwh: float = Field(0.25, ge=0, description="the Edge-First paper uses 25 c/kWh")
    device_usd_per_hour: float = Field(0.0, ge=0, description="amortised device cost while busy")


class AccuracySpec(Strict):
    tasks: list[str] = Field(default_factory=list, description="offline tasks (toolkit tasks) or stock lm-eval names")
    limit: int | None = Field(None, ge=1, description="items per task (None: all)")
    max_length: int = Field(1024, ge=64, le=32768)
    batch_size: int = Field(4, ge=1, le=256)

    @field_validator("tasks")
    @classmethod
    def _known(cls, tasks: list[str]) -> list[str]:
        from toolkit.tasks import TASKS

        for name in tasks:
            if name not in TASKS and not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"task name {name!r} is neither an offline task nor an lm-eval task name")
        return tasks


class Budget(Strict):
    """Limits on one response of the given shape (prompt_tokens in, output_tokens out)."""

    max_ttft_ms: float | None = Field(None, gt=0)
    ttft_prompt_tokens: int | None = Field(None, ge=1, description="prompt length the budget is for")
    output_tokens: int = Field(128, ge=1, description="response length that energy and cost refer to")
    min_decode_tps: float | None = Field(None, gt=0)
    max_memory_mb: float | None = Field(None, gt=0)
    max_perplexity: float | None = Field(None, gt=1)
    max_kl: float | None = Field(None, gt=0, description="mean KL divergence from the reference")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="mean accuracy over the evaluated tasks")
    max_energy_j: float | None = Field(None, gt=0, description="energy per response, joules")
    max_cost_per_1k_usd: float | None = Field(None, gt=0, description="cost of 1,000 responses, USD")
    priority: Literal["balanced", "pcr", "quality", "speed", "memory", "cost"] = "balanced"
    alpha: float = Field(0.5, ge=0, le=1, description="weight of quality against responsiveness")


class Cloud(Strict):
    models: list[str] = Field(default_factory=list, description="LiteLLM model names, priced from LiteLLM's offline "
                              "price map (default: every model in the catalogue)")
    providers: str = Field("models/cloud/providers.yaml", description="catalogue of what the map lacks: latency "
                           "priors, accuracy, negotiated prices")
    cached_prompt_fraction: float = Field(0, ge=0, le=1, description="share of prompt tokens read from the provider's "
                                          "prompt cache (priced at its cached-input price, where it has one)")
    web_search: Literal["low", "medium", "high"] | None = Field(None, description="search context size when every "
                                                                 "request uses the provider's web search (per-query fee)")
    enabled: bool = True

    @field_validator("models")
    @classmethod
    def _distinct(cls, models: list[str]) -> list[str]:
        if len(set(models)) != len(models):
            raise ValueError("model names repeat")
        return models


class Cluster(Strict):
    """Edge cluster for `toolkit simulate` and `toolkit deploy`: limits per device, load, cloud overflow."""

    rpm: int = Field(30, ge=1, description="requests each device admits per sliding window")
    window_s: float = Field(60, gt=0)
    slots: int = Field(1, ge=1, description="requests a device serves at once")
    max_queue: int = Field(4, ge=0, description="requests waiting per device before overflow")
    cloud: str | None = Field(None, description="one of the cloud options, by id or LiteLLM name (default: cheapest)")
    arrival: Literal["poisson", "onoff", "pareto"] = "onoff"
    rate_per_s: float = Field(0.5, gt=0)
    burst_factor: float = Field(4.0, ge=1)
    duration_s: float = Field(1800, gt=0)
    output_sigma: float = Field(0.5, ge=0)
    seed: int = 1
    base_port: int = Field(8081, ge=1024, le=65000)
    host: str = "127.0.0.1"


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    workspace: str = ".edgefirst/{name}"
    candidates: list[Candidate] = Field(min_length=1)
    variants: Variants = Field(default_factory=Variants)
    device: Device = Field(default_factory=Device)
    quality: QualitySpec = Field(default_factory=QualitySpec)
    accuracy: AccuracySpec = Field(default_factory=AccuracySpec)
    budget: Budget = Field(default_factory=Budget)
    costs: Costs = Field(default_factory=Costs)
    cloud: Cloud = Field(default_factory=Cloud)
    cluster: Cluster = Field(default_factory=Cluster)
    reports_dir: str = "reports/{name}"

    path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _budget_prompt_is_profiled(self) -> Recipe:
        wanted = self.budget.ttft_prompt_tokens
        if wanted is not None and wanted not in self.device.prompt_lengths:
            raise ValueError(
                f"budget.ttft_prompt_tokens={wanted} is not among device.prompt_lengths {self.device.prompt_lengths}"
            )
        return self

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def reports_path(self) -> Path:
        raw = Path(self.reports_dir.format(name=self.name))
        return raw if raw.is_absolute() else Path.cwd() / raw

    def workspace_dir(self) -> Path:
        raw = Path(self.workspace.format(name=self.name))
        return raw if raw.is_absolute() else Path.cwd() / raw

    def settings_for_hash(self) -> dict:
        return self.model_dump(mode="json", exclude={"description", "budget", "workspace", "costs", "cloud", "cluster", "reports_dir"})


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise UserError("recipe not found", file=path) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise UserError(f"not valid YAML ({getattr(exc, 'problem', exc)})", file=path, field=where) from exc
    if not isinstance(raw, dict):
        raise UserError("a recipe must be a YAML mapping", file=path)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, path) from exc
    recipe.path = path.resolve()
    return recipe


def validation_error(exc: ValidationError, path: Path | str) -> UserError:
    """The first pydantic error as a one-line UserError naming file and dotted field."""
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "required field is missing"
    return UserError(message, file=path, field=field)
