"""Reports people read: Markdown for pull requests, one self-contained HTML page with Pareto plots."""

from __future__ import annotations

import html
from pathlib import Path

from toolkit.io import write_json, write_text
from toolkit.recommend.engine import Recommendation
from toolkit.recommend.noise import TIE_THRESHOLD

COLUMNS = [
    ("variant", lambda r: r.label),
    ("MB", lambda r: _f(r.size_mb)),
    ("bpw", lambda r: _f(r.bits_per_weight, 2)),
    ("TTFT p90 ms", lambda r: _f(r.metrics["ttft_ms"])),
    ("decode tok/s p50/p10", lambda r: f"{_f(r.detail['decode_tps_median'])}/{_f(r.metrics['decode_tps'])}"),
    ("ITL p50/p90 ms", lambda r: f"{_f(r.detail['itl_ms_p50'], 2)}/{_f(r.detail['itl_ms_p90'], 2)}"),
    ("peak RSS MB", lambda r: _f(r.metrics["memory_mb"], 0)),
    ("ppl", lambda r: _f(r.metrics["perplexity"], 2)),
    ("KL", lambda r: _f(r.metrics.get("kl"), 4)),
    ("acc", lambda r: _f(r.metrics.get("accuracy"), 3)),
    ("J/response", lambda r: _f(r.metrics.get("energy_j"), 1)),
    ("USD/1k", lambda r: _f(r.metrics.get("cost_per_1k_usd"), 5)),
    ("PCR", lambda r: _f(r.pcr, 1)),
    ("runs", lambda r: str(r.rounds) if r.rounds else "-"),
    ("win p", lambda r: _f(r.win_probability, 2)),
    ("front", lambda r: "yes" if r.on_front else ""),
    ("why", lambda r: r.verdict),
]


def _f(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def write_reports(rec: Recommendation, folder: Path) -> dict[str, Path]:
    stem = f"recommendation-{rec.device_id}"
    paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md", "html": folder / f"{stem}.html"}
    write_json(paths["json"], rec)
    write_text(paths["md"], markdown(rec))
    write_text(paths["html"], html_page(rec))
    return paths


def _budget_lines(rec: Recommendation) -> list[str]:
    b = rec.budget
    items = [
        (b.max_ttft_ms, "TTFT p90 <= {:g} ms at " + f"{rec.prompt_tokens} prompt tokens"),
        (b.min_decode_tps, "decode >= {:g} tok/s (p10)"),
        (b.max_memory_mb, "peak memory <= {:g} MB"),
        (b.max_perplexity, "perplexity <= {:g}"),
        (b.max_kl, "KL divergence <= {:g}"),
        (b.min_accuracy, "mean accuracy >= {:g}"),
        (b.max_energy_j, "energy <= {:g} J per response"),
        (b.max_cost_per_1k_usd, "cost <= ${:g} per 1,000 responses"),
    ]
    return [text.format(value) for value, text in items if value is not None] or ["none"]


FRONT_NOTE = "Front: on the Pareto front of the variants that meet the budget"


def noise_line(rec: Recommendation) -> str | None:
    """How sure the pick is: its bootstrap win probability, and the statistical tie, if any (see noise.py)."""
    if rec.pick is None or not rec.resamples:
        return None
    rows = {r.variant_id: r for r in rec.rows}
    pick = rows[rec.pick]
    win = pick.win_probability or 0.0
    if rec.tied_with:
        names = ", ".join(rows[v].label for v in rec.tied_with)
        chances = ", ".join(f"{rows[v].win_probability or 0:.2f}" for v in rec.tied_with)
        line = (f"Noise: {pick.label} (win probability {win:.2f}) is tied with {names} (win probability {chances}) "
                f"over {rec.resamples} bootstrap resamples of the timing repeats; tie broken by: {rec.tie_rule}")
    else:
        line = (f"Noise: {pick.label} is the pick in {win:.0%} of {rec.resamples} bootstrap resamples of the timing "
                f"repeats; no statistical tie (tied: another in-budget variant wins >= {TIE_THRESHOLD:.0%})")
    near = [r for r in rec.rows if r.violations and (r.win_probability or 0) >= TIE_THRESHOLD]
    if near:
        line += ("; over the budget on the measured figures but the pick in some resamples: "
                 + ", ".join(f"{r.label} ({r.win_probability:.2f})" for r in near))
    return line


RUNS_NOTE = ("Runs: fresh processes behind each variant's timings (more only for variants that can still win); "
             "win p: how often it is the pick when processes and repeats are resampled")


def certification_line(rec: Recommendation) -> str | None:
    """The pick re-measured in fresh processes at the budget's response shape, run by run."""
    cert = rec.certification
    if rec.pick is None:
        return None
    if cert is None:
        return "Certification: none for this budget (`toolkit profile` certifies the recipe's budget)"
    runs = "; ".join(
        f"run {i}: " + (f"TTFT p90 {_f(r.ttft_p90_ms)} ms, decode p10 {_f(r.decode_p10_tps)} tok/s, peak {_f(r.peak_rss_mb, 0)} MB"
                        if r.status == "ok" else r.status)
        + ("" if r.meets else " (misses: " + "; ".join(r.violations) + ")")
        for i, r in enumerate(cert.runs, 1))
    return (f"Certification: meets the budget in {cert.passed}/{len(cert.runs)} fresh runs at {cert.prompt_tokens} "
            f"prompt + {cert.output_tokens} output tokens ({runs})")


CLOUD_FORMULA = ("Cloud cost per response = (uncached prompt tokens x input price + cached prompt tokens x cached-input "
                 "price + output tokens x output price) / 1M + per-request fees; prices in USD per 1M tokens.")


def price_sources(rec: Recommendation) -> list[str]:
    return sorted({c.price_source for c in rec.cloud_rows if c.price_source})


def markdown(rec: Recommendation) -> str:
    lines = [
        f"# Recommendation: {rec.recipe} on {rec.device}",
        "",
        f"**{rec.message}**",
        "",
        f"- Answer: {rec.answer}; priority: {rec.budget.priority} (alpha {rec.budget.alpha:g})",
        f"- Response shape: {rec.prompt_tokens} prompt tokens, {rec.output_tokens} output tokens",
        f"- Budget: {'; '.join(_budget_lines(rec))}",
        f"- Energy: {rec.energy_source}; electricity ${rec.costs.electricity_usd_per_kwh:g}/kWh",
        *[f"- {line}" for line in (noise_line(rec), certification_line(rec), FRONT_NOTE, RUNS_NOTE) if line],
        *[f"- {note}" for note in rec.notes],
        "",
        "| " + " | ".join(name for name, _ in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    for row in rec.rows:
        cells = [get(row).replace("|", "\\|") for _, get in COLUMNS]
        if row.variant_id == rec.pick:
            cells[0] = f"**{cells[0]} (pick)**"
        lines.append("| " + " | ".join(cells) + " |")
    if rec.cloud_rows:
        lines += ["", "## Cloud options", "", CLOUD_FORMULA, *[f"- Prices: {s}" for s in price_sources(rec)], "",
                  "| provider | model | TTFT ms | tok/s | USD/1k responses | USD per response = | meets budget |",
                  "|---|---|---|---|---|---|---|"]
        for c in rec.cloud_rows:
            ok = "yes" if not c.violations else "no: " + "; ".join(c.violations)
            mark = " (fallback)" if c.id == rec.cloud_pick else ""
            lines.append(f"| {c.provider} | {c.model}{mark} | {c.ttft_ms:g} | {c.decode_tps:g} | {c.cost_per_1k_usd:.4f} | "
                         f"{c.formula or '-'} | {ok} |")
    return "\n".join(lines) + "\n"


# --- HTML with inline SVG scatter plots (no JavaScript, no external files) ---

PLOTS = [("ttft_ms", "TTFT p90 (ms)", "max_ttft_ms"), ("memory_mb", "peak memory (MB)", "max_memory_mb"), ("energy_j", "energy per response (J)", "max_energy_j")]


def _scatter(rec: Recommendation, x_metric: str, x_name: str, x_budget: str) -> str:
    rows = [r for r in rec.rows if r.metrics.get(x_metric) is not None and r.metrics.get("perplexity") is not None]
    if not rows:
        return f'<div class="plot empty">{html.escape(x_name)}: not measured</div>'
    w, h, pad = 420, 300, 50
    xs, ys = [r.metrics[x_metric] for r in rows], [r.metrics["perplexity"] for r in rows]
    xb, yb = getattr(rec.budget, x_budget), rec.budget.max_perplexity
    x0, x1 = _span(xs + ([xb] if xb else []))
    y0, y1 = _span(ys + ([yb] if yb else []))

    def px(v: float) -> float:
        return pad + (v - x0) / (x1 - x0) * (w - 1.5 * pad)

    def py(v: float) -> float:
        return h - pad - (v - y0) / (y1 - y0) * (h - 1.5 * pad)

    parts = [
        f'<svg class="plot" viewBox="0 0 {w} {h}" role="img" aria-label="perplexity vs {html.escape(x_name)}">',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad / 2}" y2="{h - pad}" class="axis"/>',
        f'<line x1="{pad}" y1="{pad / 2}" x2="{pad}" y2="{h - pad}" class="axis"/>',
        f'<text x="{w / 2}" y="{h - 12}" class="label">{html.escape(x_name)}</text>',
        f'<text x="14" y="{h / 2}" class="label" transform="rotate(-90 14 {h / 2})">perplexity (lower is better)</text>',
    ]
    for v in (x0, (x0 + x1) / 2, x1):
        parts.append(f'<text x="{px(v):.1f}" y="{h - pad + 16}" class="tick">{v:,.3g}</text>')
    for v in (y0, (y0 + y1) / 2, y1):
        parts.append(f'<text x="{pad - 6}" y="{py(v) + 4:.1f}" class="tick end">{v:,.3g}</text>')
    if xb:
        parts.append(f'<line x1="{px(xb):.1f}" y1="{pad / 2}" x2="{px(xb):.1f}" y2="{h - pad}" class="budget"/>')
    if yb:
        parts.append(f'<line x1="{pad}" y1="{py(yb):.1f}" x2="{w - pad / 2}" y2="{py(yb):.1f}" class="budget"/>')
    for r in rows:
        cls = "pick" if r.variant_id == rec.pick else ("front" if r.on_front else "other")
        x, y = px(r.metrics[x_metric]), py(r.metrics["perplexity"])
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{7 if cls == "pick" else 4.5}" class="{cls}"><title>{html.escape(r.label)}</title></circle>')
        parts.append(f'<text x="{x + 7:.1f}" y="{y - 6:.1f}" class="point">{html.escape(r.quant)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _span(values: list[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    margin = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    return lo - margin, hi + margin


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}
.verdict{font-size:16px;padding:10px;background:#eef7ee;border-left:4px solid #2a7}
.verdict.fallback{background:#fdf1e6;border-color:#d80}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plot{width:420px;height:300px;border:1px solid #ddd;background:#fff}
.axis{stroke:#444}.budget{stroke:#d33;stroke-dasharray:5 4}
circle.other{fill:#bbb}circle.front{fill:#27a}circle.pick{fill:#2a7;stroke:#000;stroke-width:2}
.label{font-size:12px;text-anchor:middle}.tick{font-size:10px;text-anchor:middle;fill:#555}.tick.end{text-anchor:end}
.point{font-size:10px;fill:#333}table{border-collapse:collapse;font-size:12px;margin-top:16px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,td:last-child,th{text-align:left}
tr.pick{background:#e4f6e4;font-weight:bold}tr.front td:first-child{color:#27a}
"""


def html_page(rec: Recommendation) -> str:
    esc = html.escape
    plots = "".join(_scatter(rec, *p) for p in PLOTS)
    header = "".join(f"<th>{esc(name)}</th>" for name, _ in COLUMNS)
    body = []
    for row in rec.rows:
        cls = "pick" if row.variant_id == rec.pick else ("front" if row.on_front else "")
        body.append(f'<tr class="{cls}">' + "".join(f"<td>{esc(get(row))}</td>" for _, get in COLUMNS) + "</tr>")
    cloud = ""
    if rec.cloud_rows:
        cells = "".join(
            f"<tr class=\"{'pick' if c.id == rec.cloud_pick else ''}\"><td>{esc(c.provider)} {esc(c.model)}</td><td>{c.ttft_ms:g}</td>"
            f"<td>{c.decode_tps:g}</td><td>{c.cost_per_1k_usd:.4f}</td><td>{esc('yes' if not c.violations else '; '.join(c.violations))}</td></tr>"
            for c in rec.cloud_rows
        )
        sources = "".join(f"<li>Prices: {esc(s)}</li>" for s in price_sources(rec))
        cloud = f"<h2>Cloud options</h2><p>{esc(CLOUD_FORMULA)}</p><ul>{sources}</ul><table><tr><th>model</th><th>TTFT ms</th><th>tok/s</th><th>USD/1k</th><th>meets budget</th></tr>{cells}</table>"
    facts = "".join(
        f"<li>{esc(t)}</li>"
        for t in [
            f"Answer: {rec.answer}; priority {rec.budget.priority} (alpha {rec.budget.alpha:g})",
            f"Response: {rec.prompt_tokens} prompt tokens, {rec.output_tokens} output tokens",
            "Budget: " + "; ".join(_budget_lines(rec)),
            f"Energy: {rec.energy_source}",
            *[line for line in (noise_line(rec),) if line],
            *rec.notes,
        ]
    )
    verdict_cls = "verdict" if rec.answer == "edge" else "verdict fallback"
    return (
        f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(rec.recipe)} recommendation</title>"
        f"<style>{STYLE}</style></head><body><h1>{esc(rec.recipe)} on {esc(rec.device)}</h1>"
        f'<p class="{verdict_cls}">{esc(rec.message)}</p><ul>{facts}</ul>'
        f"<h2>Pareto plots</h2><p>Blue: on the Pareto front of the variants that meet the budget (over all objectives, so a 2-D view can show front points above others); grey: dominated or over budget; green ring: pick; dashed red: budget.</p><div class=\"plots\">{plots}</div>"
        f"<h2>All variants</h2><table><tr>{header}</tr>{''.join(body)}</table>{cloud}</body></html>\n"
    )




def simulation_reports(results, title: str, folder: Path) -> dict[str, Path]:
    """The cluster simulation as Markdown and a self-contained HTML page with a latency bar chart."""
    rows = [(x.policy, x.requests, x.cloud_share, x.p50_s, x.p95_s, x.p99_s, x.usd_per_1k,
             ", ".join(f"{k} {v:.0%}" for k, v in x.utilisation.items())) for x in results]
    md = [f"# {title}", "", "| policy | requests | to cloud | p50 s | p95 s | p99 s | USD/1k | utilisation |",
          "|---|---|---|---|---|---|---|---|"]
    md += [f"| {p} | {n} | {c:.1%} | {a:.2f} | {b:.2f} | {d:.2f} | {u:.4f} | {ut} |" for p, n, c, a, b, d, u, ut in rows]
    peak = max((x.p99_s for x in results), default=1.0) or 1.0
    w, h, pad, group = 520, 260, 40, 150
    bars = []
    for i, x in enumerate(results):
        for j, (name, value, color) in enumerate((("p50", x.p50_s, "#8bc"), ("p95", x.p95_s, "#27a"), ("p99", x.p99_s, "#135"))):
            height = value / peak * (h - 2 * pad)
            left = pad + i * group + j * 36
            bars.append(f'<rect x="{left}" y="{h - pad - height:.1f}" width="30" height="{height:.1f}" fill="{color}">'
                        f"<title>{html.escape(x.policy)} {name}: {value:.2f} s</title></rect>")
            bars.append(f'<text x="{left + 15}" y="{h - pad - height - 4:.1f}" class="tick">{value:.1f}</text>')
        bars.append(f'<text x="{pad + i * group + 51}" y="{h - pad + 16}" class="label">{html.escape(x.policy)} '
                    f"({x.cloud_share:.0%} cloud)</text>")
    svg = (f'<svg class="plot" viewBox="0 0 {w} {h}" role="img" aria-label="latency by policy">'
           f'<line x1="{pad}" y1="{h - pad}" x2="{w - 10}" y2="{h - pad}" class="axis"/>{"".join(bars)}'
           f'<text x="{w / 2}" y="14" class="label">latency p50 / p95 / p99 (s) by selection policy</text></svg>')
    table = "".join("<tr>" + "".join(f"<td>{html.escape(str(c if not isinstance(c, float) else round(c, 4)))}</td>" for c in row) + "</tr>" for row in rows)
    page = (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1><div class=\"plots\">{svg}</div>"
            "<table><tr><th>policy</th><th>requests</th><th>to cloud</th><th>p50 s</th><th>p95 s</th><th>p99 s</th>"
            f"<th>USD/1k</th><th>utilisation</th></tr>{table}</table></body></html>\n")
    paths = {"md": folder / "simulation.md", "html": folder / "simulation.html"}
    write_text(paths["md"], "\n".join(md) + "\n")
    write_text(paths["html"], page)
    return paths
