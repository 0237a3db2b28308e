"""Plain records passed between stages and stored as versioned JSON on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from toolkit.config import Strict, validation_error
from toolkit.errors import UserError
from toolkit.profiling.roofline import Roofline
from toolkit.stat import Stat, percentile  # noqa: F401 - records carry Stats; importers read them from here

SCHEMA_VERSION = 1


class Stored(Strict):
    """A record's section: unlike a config a person writes, a measured value may be inf or nan (a diverged score)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=True)


class Record(Stored):
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def load(cls, path: Path):
        try:
            data = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read ({exc.strerror})", file=path) from exc
        try:
            record = cls.model_validate_json(data)
        except ValidationError as exc:
            error = validation_error(exc, path)
            why = f"{error.field}: {error.message}" if error.field else error.message
            raise UserError(f"not a valid {cls.__name__} record ({why})", file=path) from exc
        if record.schema_version != SCHEMA_VERSION:
            raise UserError(f"written by schema version {record.schema_version}, this toolkit reads {SCHEMA_VERSION}",
                            file=path, field="schema_version")
        return record


class Variant(Record):
    id: str
    label: str
    model: str
    format: str
    runtime: str
    quant: str
    path: str
    size_bytes: int
    sha256: str
    n_params: int | None = None
    bits_per_weight: float | None = None
    source: str
    source_sha256: str
    seconds: float
    tools: dict[str, str]
    notes: list[str] = Field(default_factory=list)
    details: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @property
    def as_shipped(self) -> bool:
        """The source file itself, not a conversion of it (its bytes are the source's)."""
        return self.sha256 == self.source_sha256

    @property
    def unquantized(self) -> bool | None:
        """16 bits per weight or more (F16, BF16, fp32); None when its size per parameter is unknown."""
        return None if self.bits_per_weight is None else self.bits_per_weight >= 15.5


class BuildFailure(BaseModel):
    """A variant the recipe asked for that could not be built here, and why (the sweep went on without it)."""

    model: str
    format: str
    quant: str
    reason: str

    @property
    def label(self) -> str:
        return f"{self.model} {self.format} {self.quant}"


class Manifest(Record):
    recipe: str
    variants: list[Variant]
    not_built: list[BuildFailure] = Field(default_factory=list)
    references: list[Variant] = Field(default_factory=list)  # fidelity bases that are no variant (build.py)


class DeviceFingerprint(Stored):
    id: str
    hostname: str
    cpu_model: str
    physical_cores: int | None
    logical_cpus: int
    threads_used: int
    ram_mb: int
    os: str
    python: str
    runtimes: dict[str, str]
    build_flags: dict[str, str] = Field(default_factory=dict)
    machine_id: str | None = None  # sha256 prefix of /etc/machine-id: boards flashed from one image differ here
    label: str | None = None  # the user's name for it (device.label, toolkit profile --device-label)


class PromptTiming(Stored):
    prompt_tokens: int
    ttft_ms: Stat
    prefill_tps: Stat
    runtime_prefill_tps: Stat | None = None


class LlamaBench(Stored):
    """llama.cpp's own llama-bench on the same file, threads and batch: the yardstick for the native runtime."""

    build: str  # llama.cpp build number (commit)
    depth: int  # tokens in the context while decode is timed (the longest prompt length, as the profile decodes)
    prefill_tps: dict[int, Stat]  # pp, per prompt length
    decode_tps: Stat  # tg


RunStatus = Literal["ok", "oom", "crash", "timeout", "skipped"]
QualityStatus = Literal["ok", "stopped", "oom", "crash", "timeout", "skipped"]  # stopped: sure to break the budget


class EnergyWindow(Stored):
    """One measured window of a profile: the prefill of one repeat (tokens: prompt) or its decode (tokens: decoded)."""

    phase: Literal["prefill", "decode"]
    tokens: int
    seconds: float
    joules: float  # gross: everything the meter saw in the window
    net_joules: float | None = None  # joules - idle_w x seconds


class ProfileEnergy(Stored):
    """Energy of a profile's timed windows and where it comes from (toolkit/profiling/meters)."""

    meter: str | None  # rapl, ina3221, pi5-pmic, nvml, power-model; None: neither a meter nor device.power
    source: str  # e.g. "measured: RAPL package+DRAM", "estimated: power model, ..."
    sample_hz: float | None = None  # power sources: background sampling rate; None: counters read at window edges
    idle_w: float | None = None  # measured before the timed runs (model loaded, nothing running)
    watts: Stat | None = None  # gross power of each window (joules / seconds), what energy per response uses
    windows: list[EnergyWindow] = Field(default_factory=list)
    parts_j: dict[str, float] = Field(default_factory=dict)  # per domain or rail, over all windows
    unused: dict[str, str] = Field(default_factory=dict)  # the other meters and why they were not used
    read_errors: int = 0


class Profile(Record):
    """One variant measured on one device."""

    key: str
    variant_id: str
    variant_name: str
    format: str
    runtime: str
    device: DeviceFingerprint
    status: RunStatus
    reason: str | None = None
    settings: dict[str, int | float | str | None]
    file_size_mb: float
    load_ms: float | None = None
    prompts: list[PromptTiming] = Field(default_factory=list)
    decode_tokens: int = 0
    decode_context: int | None = None  # prompt tokens in the context before the timed decodes (the longest prompt)
    decode_tps: Stat | None = None
    itl_ms: Stat | None = None
    runtime_decode_tps: Stat | None = None
    peak_rss_mb: float | None = None  # the whole worker process (VmHWM)
    peak_rss_mb_runs: list[float] = Field(default_factory=list)  # one per fresh process; peak_rss_mb is their max
    deploy_rss_mb: float | None = None  # a process holding only the runtime and the model (profiling/worker.py)
    deploy_rss_mb_runs: list[float] = Field(default_factory=list)
    rapl_watts: Stat | None = None  # RAPL package watts of each timed window (kept for reports written before `energy`)
    energy: ProfileEnergy | None = None
    llama_bench: LlamaBench | None = None  # llama-bench's figures, from the native llama.cpp runtime
    gpu_layers: int | None = None  # native llama.cpp: layers on the GPU (n_gpu_layers, or what auto chose)
    offload: str | None = None  # how gpu_layers was chosen (auto's search, or why there is no GPU)
    rounds: int = 1  # fresh processes whose repeats are merged here
    wall_s: float = 0.0

    def prompt(self, tokens: int) -> PromptTiming | None:
        return next((p for p in self.prompts if p.prompt_tokens == tokens), None)


class Quality(Record):
    """Fidelity of one variant on a local text: perplexity (per token of its own tokenizer), bits per byte (on
    the same text for every model) and, against its model's reference, KL divergence and top-1 agreement."""

    key: str
    variant_id: str
    status: QualityStatus
    reason: str | None = None
    corpus: str
    corpus_sha256: str
    ctx: int
    chunks: int
    tokens_scored: int = 0
    bytes_scored: int = 0
    perplexity: float | None = None
    bits_per_byte: float | None = None
    nll_stderr: float | None = None
    reference_id: str | None = None
    kl_mean: float | None = None
    kl_p99: float | None = None
    top1_agreement: float | None = None
    lower_bounds: dict[str, float] | None = None  # status "stopped": the least each figure can be over the whole text
    wall_s: float = 0.0


class EvalResult(Record):
    """One variant's score on one lm-eval task, measured through the variant's own runtime."""

    key: str
    variant_id: str
    task: str
    status: RunStatus
    reason: str | None = None
    metric: str | None = None
    filter: str | None = None
    value: float | None = None
    stderr: float | None = None
    n: int | None = None
    limit: int | None = None
    runtime: str
    lm_eval_version: str | None = None
    items: list[float] = Field(default_factory=list)  # each item's score by doc id: noise.py's paired bootstrap
    wall_s: float = 0.0


class DevicePower(Stored):
    idle_w: float
    busy_w: float
    note: str = ""


class CertRun(Stored):
    """One fresh-process re-measurement of a pick at the budget's response shape."""

    status: RunStatus
    ttft_p90_ms: float | None = None
    decode_p10_tps: float | None = None
    peak_rss_mb: float | None = None
    energy_j: float | None = None
    violations: list[str] = Field(default_factory=list)

    @property
    def meets(self) -> bool:
        return self.status == "ok" and not self.violations


class Certification(Stored):
    """A pick re-measured in `len(runs)` fresh processes against one budget (`budget_key`)."""

    variant_id: str
    budget_key: str
    prompt_tokens: int
    output_tokens: int
    runs: list[CertRun]

    @property
    def passed(self) -> int:
        return sum(r.meets for r in self.runs)

    @property
    def certified(self) -> bool:
        return bool(self.runs) and self.passed == len(self.runs)


class DeviceReport(Record):
    """What `toolkit profile` writes: copy it off the device and feed it to `toolkit recommend`."""

    recipe: str
    created: str
    toolkit_version: str
    device: DeviceFingerprint
    power: DevicePower | None = None
    roofline: Roofline | None = None
    variants: list[Variant]
    not_built: list[BuildFailure] = Field(default_factory=list)
    references: list[Variant] = Field(default_factory=list)  # as in the manifest
    profiles: list[Profile]
    quality: list[Quality] = Field(default_factory=list)
    accuracy: list[EvalResult] = Field(default_factory=list)
    certifications: list[Certification] = Field(default_factory=list)
    merged_from: list[str] = Field(default_factory=list)  # reports of this same device whose repeats were pooled
    # engine.pick_key(budget, costs) -> this device's previous certified pick, kept while tied (noise.settle)
    previous_picks: dict[str, str] = Field(default_factory=dict)

    @property
    def measured(self) -> bool:
        """At least one variant was measured successfully."""
        return any(p.status == "ok" for p in self.profiles)
