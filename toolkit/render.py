"""Rich tables for the terminal; no logic beyond formatting.

In a terminal the tables have light box art; when output goes to a file or a pipe (rich knows) they are
plain columns without box characters, and cells wrap at word boundaries, never letter by letter.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from toolkit.catalogue import ModelCard
from toolkit.recommend.engine import Recommendation, Row, budget_limits
from toolkit.recommend.metrics import BY_KEY, cell
from toolkit.records import EvalResult, Manifest, Quality

console = Console()
COMPACT_WIDTH = 100


def plain() -> bool:
    return not console.is_terminal


def new_table(*args: Any, plain_text: bool | None = None, **kwargs: Any) -> RichTable:
    """rich's Table with box art in a terminal and none in a file or pipe."""
    is_plain = plain() if plain_text is None else plain_text
    kwargs.setdefault("box", None if is_plain else box.SIMPLE_HEAD)
    kwargs.setdefault("show_edge", False)
    kwargs.setdefault("pad_edge", False)
    kwargs.setdefault("collapse_padding", not is_plain)
    if is_plain:
        kwargs.setdefault("title_justify", "left")
        kwargs.setdefault("caption_justify", "left")
    return RichTable(*args, **kwargs)


def show(table: RichTable, wide: bool = False) -> None:
    """Print a table: compact ones within 100 columns; wide ones, in a file or pipe, as wide as they need."""
    if console.is_terminal:
        console.print(table, width=None if wide else min(console.width, COMPACT_WIDTH))
        return
    saved = console.width
    console.width = 400 if wide else COMPACT_WIDTH  # a file or pipe has no width of its own
    try:
        with console.capture() as captured:
            console.print(table)
    finally:
        console.width = saved
    console.file.write("\n".join(line.rstrip() for line in captured.get().splitlines()) + "\n")


def _f(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def models_table(cards: list[ModelCard]) -> RichTable:
    table = new_table(title="Model catalogue (models/*.yaml)")
    for col in ("id", "name", "params", "arch", "licence", "hub id", "source"):
        table.add_column(col)
    for c in cards:
        source = "PyPI (offline)" if c.offline else "HF hub"
        table.add_row(c.id, c.name, f"{c.params_m:g}M", c.architecture, c.license, c.hub_id, source)
    return table


def manifest_table(manifest: Manifest) -> RichTable:
    bases = "; ".join(f"{r.label}, {r.format} (every variant of {r.model} is quantized)" for r in manifest.references)
    table = new_table(title=f"Variants of {manifest.recipe}", caption=f"fidelity base, no candidate: {bases}" if bases else None)
    for col in ("variant", "format", "quant", "size MB", "bits/weight", "seconds", "sha256"):
        table.add_column(col, justify="right" if col in ("size MB", "bits/weight", "seconds") else "left")
    for v in manifest.variants:
        table.add_row(v.label, v.format, v.quant, _f(v.size_bytes / 2**20), _f(v.bits_per_weight, 2), _f(v.seconds), v.sha256[:12])
    return table


def _short(row: Row, prefix: str) -> str:
    return row.label.removeprefix(prefix) or row.label


def recommendation_table(rec: Recommendation, wide: bool = False, plain_text: bool | None = None) -> RichTable:
    """Compact (variant, the budget's metrics, verdict; fits 100 columns) or wide (every column)."""
    if wide:
        return _wide_table(rec, plain_text)
    models = {r.label.split(" ", 1)[0] for r in rec.rows}
    prefix = f"{next(iter(models))} " if len(models) == 1 else ""
    metrics = list(dict.fromkeys(lim.metric for lim in budget_limits(rec.budget))) or ["ttft_ms", "decode_tps", "memory_mb", "perplexity"]
    title = f"{prefix.strip() or rec.recipe} on {rec.device}"
    table = new_table(title=title, caption=f"TTFT at {rec.prompt_tokens} prompt tokens; * pick; --wide for every column",
                  plain_text=plain_text)
    table.add_column("", no_wrap=True, min_width=1)
    table.add_column("variant", no_wrap=True, max_width=26, overflow="ellipsis")
    for m in metrics:
        table.add_column(BY_KEY[m].short, justify="right")
    table.add_column("verdict", ratio=1, min_width=16)
    for r in rec.rows:
        mark = "[bold green]*[/]" if r.variant_id == rec.pick else ("~" if r.variant_id in rec.tied_with else "")
        table.add_row(mark, _short(r, prefix), *(cell(m, r.metrics.get(m)) for m in metrics), r.verdict)
    return table


def _wide_table(rec: Recommendation, plain_text: bool | None) -> RichTable:
    table = new_table(title=f"{rec.recipe} on {rec.device} - TTFT at {rec.prompt_tokens} prompt tokens", show_lines=False,
                  caption="front: on the Pareto front of the variants that meet the budget", plain_text=plain_text)
    cols = ["", "variant", "MB", "bpw", "TTFT p90 ms", "prefill tok/s", "decode tok/s p50/p10", "ITL p50/p90 ms",
            "deploy MB", "process MB", "ppl", "bpb", "KL", "acc", "J/resp", "USD/1k", "front", "why"]
    for col in cols:
        table.add_column(col, no_wrap=col != "why", justify="left" if col in ("variant", "why", "") else "right")
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
            _f(d.get("process_peak_mb"), 0),
            *(cell(k, m.get(k)) for k in ("perplexity", "bits_per_byte", "kl", "accuracy", "energy_j", "cost_per_1k_usd")),
            "yes" if r.on_front else "",
            r.verdict,
        )
    return table


def cloud_table(rec: Recommendation) -> RichTable:
    table = new_table(title=f"Cloud options for {rec.prompt_tokens} in / {rec.output_tokens} out tokens")
    for col in ("", "provider", "model", "TTFT ms", "tok/s", "USD/1k responses", "budget"):
        table.add_column(col)
    for c in sorted(rec.cloud_rows, key=lambda c: c.cost_per_1k_usd):
        mark = "[bold yellow]*[/]" if c.id == rec.cloud_pick else ""
        table.add_row(mark, c.provider, c.model, _f(c.ttft_ms, 0), _f(c.decode_tps, 0), f"{c.cost_per_1k_usd:.4f}",
                      "meets" if not c.violations else "; ".join(c.violations))
    table.caption = "; ".join(sorted({c.price_source for c in rec.cloud_rows if c.price_source}))
    return table


def evaluation_table(manifest: Manifest, quality: list[Quality], accuracy: list[EvalResult]) -> RichTable:
    tasks = sorted({a.task for a in accuracy})
    table = new_table(title="Fidelity to the base model, and accuracy through each variant's runtime")
    for col in ("variant", "runtime", "ppl", "bits/byte", "KL mean", "KL p99", "top-1 agree", *tasks):
        table.add_column(col, justify="left" if col in ("variant", "runtime") else "right")
    q_by = {q.variant_id: q for q in quality}
    a_by = {(a.variant_id, a.task): a for a in accuracy}
    for v in manifest.variants:
        q = q_by.get(v.id)
        cells = _quality_cells(q)
        for task in tasks:
            a = a_by.get((v.id, task))
            if a and a.status == "ok":
                cells.append(f"{a.value:.3f} +/- {a.stderr or 0:.3f} (n={a.n})")
            else:
                cells.append(a.status if a else "-")
        table.add_row(v.label, v.runtime, *cells)
    return table


def _quality_cells(q: Quality | None) -> list[str]:
    """ppl, bits/byte, KL mean, KL p99 and top-1 cells; a score stopped early shows its lower bounds."""
    if q and q.status == "ok":
        return [_f(q.perplexity, 2), _f(q.bits_per_byte, 3), _f(q.kl_mean, 4), _f(q.kl_p99, 3), _f(q.top1_agreement, 3)]
    if q and q.status == "stopped" and q.lower_bounds:
        low = q.lower_bounds
        return [f">={low['perplexity']:.2f}", f">={low['bits_per_byte']:.3f}",
                f">={low['kl']:.4f}" if "kl" in low else "", f"stopped after {q.chunks} chunks", ""]
    return [q.status if q else "-", "", "", "", ""]


def tasks_table() -> RichTable:
    from toolkit.tasks import TASKS, size

    table = new_table(title="Offline tasks (data from PyPI packages; stock lm-eval names also work with the hub)")
    for col in ("task", "what", "items", "metric", "licence", "data from"):
        table.add_column(col)
    for t in TASKS.values():
        n = size(t.name)
        table.add_row(t.name, t.description, f"{n:,}" if n else "not prepared yet", t.metric, t.licence, t.source)
    return table


def fleet_table(rows) -> RichTable:
    table = new_table(title="Fleet summary")
    for col in ("device", "cpu", "answer", "pick", "decode tok/s", "TTFT p90 ms", "USD/1k"):
        table.add_column(col)
    for row in rows:
        table.add_row(row.device, row.cpu, row.answer, row.pick or "-", _f(row.decode_tps), _f(row.ttft_ms), _f(row.usd_per_1k, 5))
    return table


def prediction_table(rows, title: str) -> RichTable:
    table = new_table(title=title)
    for col in ("variant", "MB", "decode tok/s predicted", "measured", "prefill tok/s predicted", "measured", "fits"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for p in rows:
        table.add_row(p.variant, _f(p.size_mb), _f(p.decode_tps), _f(p.measured_decode_tps), _f(p.prefill_tps, 0),
                      _f(p.measured_prefill_tps, 0), "yes" if p.fits else "no")
    return table


def simulation_table(results, recipe, cloud: str) -> RichTable:
    c = recipe.cluster
    table = new_table(title=f"Cluster simulation: {c.arrival} arrivals at {c.rate_per_s:g}/s for {c.duration_s:g} s, "
                        f"{c.rpm} req per {c.window_s:g} s per device, overflow to {cloud}")
    for col in ("policy", "requests", "to cloud", "p50 s", "p95 s", "p99 s", "USD/1k", "utilisation"):
        table.add_column(col, justify="left" if col in ("policy", "utilisation") else "right")
    for x in results:
        util = ", ".join(f"{k} {v:.0%}" for k, v in x.utilisation.items())
        table.add_row(x.policy, str(x.requests), f"{x.cloud_share:.1%}", _f(x.p50_s, 2), _f(x.p95_s, 2), _f(x.p99_s, 2),
                      _f(x.usd_per_1k, 4), util)
    return table
