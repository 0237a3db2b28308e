"""Rich tables for the terminal; no logic beyond formatting."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from toolkit.catalogue import ModelCard
from toolkit.recommend.engine import Recommendation
from toolkit.records import EvalResult, Manifest, Quality

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
    table = Table(title=f"{rec.recipe} on {rec.device} - TTFT at {rec.prompt_tokens} prompt tokens", show_lines=False,
                  caption="front: on the Pareto front of the variants that meet the budget")
    cols = ["", "variant", "MB", "bpw", "TTFT p90 ms", "prefill tok/s", "decode tok/s p50/p10", "ITL p50/p90 ms",
            "peak RSS MB", "ppl", "KL", "acc", "J/resp", "USD/1k", "front", "why"]
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
            _f(m.get("kl"), 4),
            _f(m.get("accuracy"), 3),
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
    table.caption = "; ".join(sorted({c.price_source for c in rec.cloud_rows if c.price_source}))
    return table


def evaluation_table(manifest: Manifest, quality: list[Quality], accuracy: list[EvalResult]) -> Table:
    tasks = sorted({a.task for a in accuracy})
    table = Table(title="Fidelity to the base model, and accuracy through each variant's runtime")
    for col in ("variant", "runtime", "ppl", "KL mean", "KL p99", "top-1 agree", *tasks):
        table.add_column(col, justify="left" if col in ("variant", "runtime") else "right")
    q_by = {q.variant_id: q for q in quality}
    a_by = {(a.variant_id, a.task): a for a in accuracy}
    for v in manifest.variants:
        q = q_by.get(v.id)
        cells = [_f(q.perplexity, 2), _f(q.kl_mean, 4), _f(q.kl_p99, 3), _f(q.top1_agreement, 3)] if q and q.status == "ok" else [
            q.status if q else "-", "", "", ""]
        for task in tasks:
            a = a_by.get((v.id, task))
            if a and a.status == "ok":
                cells.append(f"{a.value:.3f} +/- {a.stderr or 0:.3f} (n={a.n})")
            else:
                cells.append(a.status if a else "-")
        table.add_row(v.label, v.runtime, *cells)
    return table


def tasks_table() -> Table:
    from toolkit.tasks import TASKS, size

    table = Table(title="Offline tasks (data from PyPI packages; stock lm-eval names also work with the hub)")
    for col in ("task", "what", "items", "metric", "licence", "data from"):
        table.add_column(col)
    for t in TASKS.values():
        n = size(t.name)
        table.add_row(t.name, t.description, f"{n:,}" if n else "not prepared yet", t.metric, t.licence, t.source)
    return table


def fleet_table(rows) -> Table:
    table = Table(title="Fleet summary")
    for col in ("device", "cpu", "answer", "pick", "decode tok/s", "TTFT p90 ms", "USD/1k"):
        table.add_column(col)
    for row in rows:
        table.add_row(row.device, row.cpu, row.answer, row.pick or "-", _f(row.decode_tps), _f(row.ttft_ms), _f(row.usd_per_1k, 5))
    return table


def prediction_table(rows, title: str) -> Table:
    table = Table(title=title)
    for col in ("variant", "MB", "decode tok/s predicted", "measured", "prefill tok/s predicted", "measured", "fits"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for p in rows:
        table.add_row(p.variant, _f(p.size_mb), _f(p.decode_tps), _f(p.measured_decode_tps), _f(p.prefill_tps, 0),
                      _f(p.measured_prefill_tps, 0), "yes" if p.fits else "no")
    return table


def simulation_table(results, recipe, cloud: str) -> Table:
    c = recipe.cluster
    table = Table(title=f"Cluster simulation: {c.arrival} arrivals at {c.rate_per_s:g}/s for {c.duration_s:g} s, "
                        f"{c.rpm} req per {c.window_s:g} s per device, overflow to {cloud}")
    for col in ("policy", "requests", "to cloud", "p50 s", "p95 s", "p99 s", "USD/1k", "utilisation"):
        table.add_column(col, justify="left" if col in ("policy", "utilisation") else "right")
    for x in results:
        util = ", ".join(f"{k} {v:.0%}" for k, v in x.utilisation.items())
        table.add_row(x.policy, str(x.requests), f"{x.cloud_share:.1%}", _f(x.p50_s, 2), _f(x.p95_s, 2), _f(x.p99_s, 2),
                      _f(x.usd_per_1k, 4), util)
    return table
