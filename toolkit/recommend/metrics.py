"""Every metric a recommendation weighs, in one table (llama-bench style: one field list for every output).

Selection (objectives, directions, limits), the budget's limits and flags, violation messages, report and
terminal columns and plot axes all read this table. A new budget metric is one `Metric` row here, one field
on `recipe.Budget` named by `budget`, and its value in `recommend/options.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Metric:
    key: str  # the key in Option.metrics / Row.metrics
    name: str  # in sentences ("deploy memory 1401.8 MB > 1024 MB")
    unit: str
    direction: Literal["min", "max"]  # which way is better
    digits: int  # decimals in tables
    column: str  # report and --wide header
    short: str  # compact terminal header
    axis: str  # plot axis label
    budget: str | None = None  # the Budget field that limits it ("max_..." or "min_...")
    budget_text: str = ""  # the budget line, "{bound:g}" for the bound
    better: str | None = None  # why a dominator wins on it; None: not a Pareto objective
    limit_digits: int = 1  # decimals in violation messages
    missing: str = ""  # why it can be missing, where one reason is the only one (after "not measured")

    @property
    def limit_kind(self) -> Literal["max", "min"]:
        """A limit caps a lower-is-better metric from above and a higher-is-better one from below."""
        return "max" if self.direction == "min" else "min"


NO_ENERGY = " (no energy meter read here, and no device.power in the recipe to estimate it from)"
METRICS: tuple[Metric, ...] = (
    Metric("ttft_ms", "TTFT p90", "ms", "min", 1, "TTFT p90 ms", "TTFT p90 ms", "TTFT p90 (ms)",
           "max_ttft_ms", "TTFT p90 <= {bound:g} ms at {prompt} prompt tokens", "lower TTFT"),
    Metric("decode_tps", "decode (p10)", "tok/s", "max", 1, "decode p10", "decode p10", "decode p10 (tok/s)",
           "min_decode_tps", "decode >= {bound:g} tok/s (p10)", "faster decode"),
    Metric("memory_mb", "deploy memory", "MB", "min", 0, "deploy MB", "deploy MB", "deploy memory (MB)",
           "max_memory_mb", "deploy memory <= {bound:g} MB", "less memory"),
    Metric("perplexity", "perplexity", "", "min", 2, "ppl", "ppl", "perplexity",
           "max_perplexity", "perplexity <= {bound:g}", "lower perplexity"),
    Metric("bits_per_byte", "bits per byte", "bits", "min", 3, "bits/byte", "bpb", "bits per byte (lower is better)",
           "max_bits_per_byte", "bits per byte <= {bound:g}", "fewer bits per byte", 3),
    Metric("kl", "KL divergence", "nats", "min", 4, "KL", "KL", "KL divergence (nats)",
           "max_kl", "KL divergence <= {bound:g}", None, 4),
    Metric("accuracy", "mean accuracy", "", "max", 3, "acc", "acc", "mean accuracy",
           "min_accuracy", "mean accuracy >= {bound:g}", "higher accuracy", 3),
    Metric("energy_j", "energy per response", "J", "min", 1, "J/response", "J/resp", "energy per response (J)",
           "max_energy_j", "energy <= {bound:g} J per response", "less energy", missing=NO_ENERGY),
    Metric("cost_per_1k_usd", "cost per 1,000 responses", "USD", "min", 5, "USD/1k", "USD/1k", "USD per 1,000 responses",
           "max_cost_per_1k_usd", "cost <= ${bound:g} per 1,000 responses", "cheaper", 4, missing=NO_ENERGY),
)
BY_KEY: dict[str, Metric] = {m.key: m for m in METRICS}
BY_BUDGET: dict[str, Metric] = {m.budget: m for m in METRICS if m.budget}
OBJECTIVES: dict[str, str] = {m.key: m.direction for m in METRICS if m.better}  # the Pareto objectives


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def cell(key: str, value: float | None) -> str:
    """A metric's value as every table shows it."""
    return fmt(value, BY_KEY[key].digits)
