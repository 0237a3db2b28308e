"""The YAML recipe that drives every stage, validated into plain data with one-line errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SerializeAsAny, field_validator, model_validator

from toolkit.config import Strict, load_yaml_model


class Candidate(Strict):
    model: str = Field(description="catalogue id (see `toolkit models`), a local path, or hf:<org>/<name>")
    name: str | None = Field(None, description="how reports and file names call it (default: the catalogue id or file stem)")
    trust_remote_code: bool = False

    @field_validator("name")
    @classmethod
    def _file_safe(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise ValueError(f"{name!r}: a name is part of file names, so letters, digits, '.', '_' and '-' only, "
                             "starting with a letter or digit")
        return name


class Power(Strict):
    """Whole-device power draw, used to estimate energy where no energy meter is readable."""

    idle_w: float = Field(gt=0)
    busy_w: float = Field(gt=0)
    note: str = "figures from the recipe"

    @model_validator(mode="after")
    def _busy_above_idle(self) -> Power:
        if self.busy_w < self.idle_w:
            raise ValueError(f"busy_w {self.busy_w} is below idle_w {self.idle_w}")
        return self


class LlamaCpp(Strict):
    """Which llama.cpp profiles GGUF variants: the copy bundled in llama-cpp-python, or the device's own build."""

    runtime: Literal["bundled", "native"] = Field(
        "bundled", description="bundled: llama-cpp-python; native: the device's llama-server and llama-bench "
        "(toolkit/runtimes/llamacpp_native.py)")
    bin_dir: str | None = Field(None, description="folder with llama-server and llama-bench (default: PATH, then "
                                "the toolkit's own build from `toolkit llama-cpp-build`)")
    n_gpu_layers: int | Literal["auto"] = Field(
        0, description="layers offloaded to the GPU (999: all; auto: the fewest that meet budget.min_decode_tps, "
        "runtimes/llamacpp_offload.py); native only, and a number above 0 is an error on a build without a GPU backend")

    @model_validator(mode="after")
    def _offload_is_native(self) -> LlamaCpp:
        if isinstance(self.n_gpu_layers, int) and not 0 <= self.n_gpu_layers <= 999:
            raise ValueError(f"n_gpu_layers {self.n_gpu_layers} is not between 0 and 999 (or auto)")
        if self.n_gpu_layers and self.runtime != "native":
            raise ValueError("n_gpu_layers needs runtime: native (the bundled llama.cpp is a CPU build)")
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
    energy_meter: Literal["auto", "ina3221", "pi5-pmic", "rapl", "nvml", "power-model"] = Field(
        "auto", description="where energy comes from (toolkit/profiling/meters); auto: the best readable meter")
    rounds: int = Field(2, ge=1, le=50, description="fresh processes per variant that can still win")
    max_rounds: int = Field(6, ge=1, le=50, description="fresh processes at most, for contenders whose order is uncertain")
    target_win_probability: float = Field(0.9, gt=0, le=1, description="stop adding rounds once the pick wins this often")
    extra_time_s: float = Field(600, ge=0, description="measuring time allowed beyond the first round of each variant")
    noise_margin: float = Field(0.25, ge=0, le=1, description="run-to-run timing swing a variant may still win by")
    certify_runs: int = Field(3, ge=0, le=20, description="fresh-process re-measurements of the pick (0: none)")
    llama_cpp: LlamaCpp = Field(default_factory=LlamaCpp)
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="this device's name in "
                              "fleets; part of its id, so boards flashed from one image stay apart")

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
        for name in tasks:  # offline task names follow the same rule; which ones exist is checked when evaluating
            if not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"task name {name!r} is neither an offline task nor an lm-eval task name")
        return tasks


class Budget(Strict):
    """Limits on one response of the given shape (prompt_tokens in, output_tokens out)."""

    max_ttft_ms: float | None = Field(None, gt=0, description="time to first token, p90, ms")
    ttft_prompt_tokens: int | None = Field(None, ge=1, description="prompt length the budget is for")
    output_tokens: int = Field(128, ge=1, description="response length that energy and cost refer to")
    min_decode_tps: float | None = Field(None, gt=0, description="decode tokens/s, slow end (p10)")
    max_memory_mb: float | None = Field(None, gt=0, description="deploy memory (runtime + model), MB")
    max_perplexity: float | None = Field(None, gt=1, description="perplexity on the recipe's corpus")
    max_bits_per_byte: float | None = Field(None, gt=0, description="bits per byte on the recipe's corpus (compares "
                                            "across tokenizers)")
    max_kl: float | None = Field(None, gt=0, description="mean KL divergence from the reference")
    min_accuracy: float | None = Field(None, ge=0, le=1, description="mean accuracy over the evaluated tasks")
    max_energy_j: float | None = Field(None, gt=0, description="energy per response, joules")
    max_cost_per_1k_usd: float | None = Field(None, gt=0, description="cost of 1,000 responses, USD")
    priority: Literal["balanced", "pcr", "quality", "speed", "memory", "cost"] = Field(
        "balanced", description="what picks among the variants that meet the budget")
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
    workspace: str = Field(".edgefirst/{name}", description="artifacts and measurements; relative to the folder toolkit runs in")
    candidates: list[Candidate] = Field(min_length=1)
    # SerializeAsAny: dumped as the registry's Variants model it holds (a plain BaseModel field dumps as {})
    variants: SerializeAsAny[BaseModel] = Field(default_factory=lambda: _variants_model()(), description="one section "
                                                "per format to build (toolkit.formats.REGISTRY); absent: GGUF's defaults")
    device: Device = Field(default_factory=Device)
    quality: QualitySpec = Field(default_factory=QualitySpec)
    accuracy: AccuracySpec = Field(default_factory=AccuracySpec)
    budget: Budget = Field(default_factory=Budget)
    costs: Costs = Field(default_factory=Costs)
    cloud: Cloud = Field(default_factory=Cloud)
    cluster: Cluster = Field(default_factory=Cluster)
    reports_dir: str = Field("reports/{name}", description="JSON, Markdown and HTML reports; relative to the folder toolkit runs in")
    search: Literal["staged", "exhaustive"] = Field(
        "staged", description="staged: measure only what can still be the pick, cheapest first (pipeline/search.py); "
        "exhaustive: every variant fully measured, for every point on the plots")

    path: Path | None = Field(None, exclude=True)

    @field_validator("candidates")
    @classmethod
    def _candidates_apart(cls, candidates: list[Candidate]) -> list[Candidate]:
        seen: dict[str, int] = {}
        for i, c in enumerate(candidates):
            if (first := seen.setdefault(c.name or c.model, i)) != i:
                raise ValueError(f"candidates {first} and {i} are both {c.name or c.model!r}: remove one, or give "
                                 "each its own name")
        return candidates

    @field_validator("variants", mode="before")
    @classmethod
    def _variants(cls, raw: object) -> BaseModel:
        """A `variants:` section builds the formats it names, and only those; without one, the formats on by
        default (GGUF)."""
        if isinstance(raw, dict):
            from toolkit.formats import REGISTRY

            raw = dict.fromkeys(REGISTRY) | raw
            if all(spec is None for spec in raw.values()):
                raise ValueError("names no format to build: give one (gguf, onnx, gptq), or leave `variants:` out "
                                 "for the default GGUF ladder")
        return _variants_model().model_validate({} if raw is None else raw)

    @model_validator(mode="after")
    def _budget_prompt_is_profiled(self) -> Recipe:
        wanted = self.budget.ttft_prompt_tokens
        if wanted is not None and wanted not in self.device.prompt_lengths:
            raise ValueError(
                f"budget.ttft_prompt_tokens={wanted} is not among device.prompt_lengths {self.device.prompt_lengths}"
            )
        if self.budget.min_accuracy is not None and not self.accuracy.tasks:
            raise ValueError("budget.min_accuracy needs accuracy.tasks, and the recipe names none (`toolkit tasks` "
                             "lists the offline ones)")
        return self

    @property
    def response_prompt_tokens(self) -> int:
        """The prompt of the budget's response: budget.ttft_prompt_tokens, else the longest profiled prompt."""
        return self.budget.ttft_prompt_tokens or max(self.device.prompt_lengths)

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
        return self.model_dump(mode="json", exclude={"description", "budget", "workspace", "costs", "cloud", "cluster", "reports_dir",
                                                        "search"})


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    recipe = load_yaml_model(path, Recipe, "recipe")
    recipe.path = path.resolve()
    return recipe


def _variants_model() -> type[BaseModel]:
    from toolkit.formats import variants_model  # formats register their own recipe sections

    return variants_model()
