"""Rich tables for the terminal; no logic beyond formatting."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from toolkit.catalogue import ModelCard
from toolkit.recommend.engine import Recommendation
from toolkit.records import Manifest

console = Console()


def _f(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def models_table(cards: list[ModelCard]) -> Table:
    table = Table(title="Model catalogue (models/*.yaml)")
    for col in ("id", "name", "params", "arch", "licence", "hub id", "source"):
        table.add_column(col)
    for c in cards:
        source = "PyPI (offline)" if c.offline else "HF hub"
        table.add_row(c.id, c.name, f"{c.params_m:g}M", c.architecture, c.license, c.hub_id, source)
    return table


def manifest_table(manifest: Manifest) -> Table:
    table = Table(title=f"Variants of {manifest.recipe}")
    for col in ("variant", "format", "quant", "size MB", "bits/weight", "seconds", "sha256"):
        table.add_column(col, justify="right" if col in ("size MB", "bits/weight", "seconds") else "left")
    for v in manifest.variants:
        table.add_row(v.label, v.format, v.quant, _f(v.size_bytes / 2**20), _f(v.bits_per_weight, 2), _f(v.seconds), v.sha256[:12])
    return table


def recommendation_table(rec: Recommendation) -> Table:
    table = Table(title=f"{rec.recipe} on {rec.device} - TTFT at {rec.prompt_tokens} prompt tokens", show_lines=False)
    cols = ["", "variant", "MB", "bpw", "TTFT p90 ms", "prefill tok/s", "decode tok/s p50/p10", "ITL p50/p90 ms",
            "peak RSS MB", "ppl", "J/resp", "USD/1k", "front", "why"]
    for col in cols:
        table.add_column(col, overflow="fold", justify="left" if col in ("variant", "why", "") else "right")
    for r in rec.rows:
        m, d = r.metrics, r.detail
        mark = "[bold green]*[/]" if r.variant_id == rec.pick else ""
        table.add_row(
            mark,
            r.label,
            _f(r.size_mb),
            _f(r.bits_per_weight, 2),
            _f(m["ttft_ms"]),
            _f(d["prefill_tps_median"], 0),
            f"{_f(d['decode_tps_median'])}/{_f(m['decode_tps'])}",
            f"{_f(d['itl_ms_p50'], 2)}/{_f(d['itl_ms_p90'], 2)}",
            _f(m["memory_mb"], 0),
            _f(m["perplexity"], 2),
            _f(m.get("energy_j"), 1),
            _f(m.get("cost_per_1k_usd"), 5),
            "yes" if r.on_front else "",
            r.verdict,
        )
    return table


def cloud_table(rec: Recommendation) -> Table:
    table = Table(title=f"Cloud options for {rec.prompt_tokens} in / {rec.output_tokens} out tokens")
    for col in ("", "provider", "model", "TTFT ms", "tok/s", "USD/1k responses", "budget"):
        table.add_column(col)
    for c in sorted(rec.cloud_rows, key=lambda c: c.cost_per_1k_usd):
        mark = "[bold yellow]*[/]" if c.id == rec.cloud_pick else ""
        table.add_row(mark, c.provider, c.model, _f(c.ttft_ms, 0), _f(c.decode_tps, 0), f"{c.cost_per_1k_usd:.4f}",
                      "meets" if not c.violations else "; ".join(c.violations))
    return table
