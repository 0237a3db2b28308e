"""Reports people read: Markdown for pull requests, HTML pages with interactive Plotly figures (see plots.py)."""

from __future__ import annotations

import html
from pathlib import Path

from toolkit.fleet import fleet_summary
from toolkit.io import write_json, write_text
from toolkit.plots import (
    METRICS,
    default_axes,
    figure_html,
    latency_figure,
    page_head,
    pareto_figure,
    write_images,
    write_plotly_js,
)
from toolkit.recommend.engine import Recommendation
from toolkit.recommend.keys import FAILED_CERTIFICATION
from toolkit.recommend.metrics import BY_BUDGET, BY_KEY, cell
from toolkit.recommend.noise import EQUIVALENT_UTILITY, TIE_THRESHOLD

COLUMNS = [
    ("variant", lambda r: r.label),
    ("MB", lambda r: _f(r.size_mb)),
    ("bpw", lambda r: _f(r.bits_per_weight, 2)),
    ("TTFT p90 ms", lambda r: cell("ttft_ms", r.metrics["ttft_ms"])),
    ("decode tok/s p50/p10", lambda r: f"{_f(r.detail['decode_tps_median'])}/{_f(r.metrics['decode_tps'])}"),
    ("ITL p50/p90 ms", lambda r: f"{_f(r.detail['itl_ms_p50'], 2)}/{_f(r.detail['itl_ms_p90'], 2)}"),
    ("deploy MB", lambda r: cell("memory_mb", r.metrics["memory_mb"])),
    ("process peak MB", lambda r: _f(r.detail.get("process_peak_mb"), 0)),
    *((BY_KEY[k].column, lambda r, k=k: cell(k, r.metrics.get(k))) for k in ("perplexity", "bits_per_byte", "kl", "accuracy", "energy_j",
                                                                          "cost_per_1k_usd")),
    ("PCR", lambda r: _f(r.pcr, 1)),
    ("runs", lambda r: str(r.rounds) if r.rounds else "-"),
    ("win p", lambda r: _f(r.win_probability, 2)),
    ("front", lambda r: "yes" if r.on_front else ""),
    ("why", lambda r: r.verdict),
]


def _f(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def write_reports(rec: Recommendation, folder: Path, images: bool = True, recipe: str | None = None) -> dict[str, Path]:
    """JSON, Markdown (with a static plot when kaleido can draw one) and HTML, plus plotly.min.js beside them.
    `recipe`: the folder's; a device report from another recipe gets its own files, not this recipe's."""
    stem = f"recommendation-{rec.device_id}" + (f"-from-{rec.recipe}" if recipe and rec.recipe != recipe else "")
    paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md", "html": folder / f"{stem}.html"}
    write_json(paths["json"], rec)
    image = write_images({folder / f"{stem}.png": pareto_figure([rec])}) if images else []
    write_text(paths["md"], markdown(rec, image[0].name if image else None))
    write_text(paths["html"], html_page(rec))
    paths["plotly"] = write_plotly_js(folder)
    return paths | ({"png": image[0]} if image else {})


def _budget_lines(rec: Recommendation) -> list[str]:
    bounds = ((m, getattr(rec.budget, field)) for field, m in BY_BUDGET.items())
    return [m.budget_text.format(bound=bound, prompt=rec.prompt_tokens) for m, bound in bounds if bound is not None] or ["none"]


FRONT_NOTE = "Front: on the Pareto front of the variants that meet the budget"


RESAMPLED = "the timing repeats (and the accuracy items, where scored)"


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
                f"over {rec.resamples} bootstrap resamples of {RESAMPLED}; tie broken by: {rec.tie_rule}")
        if rec.tie_equivalence is not None:
            line += (f"; their utilities lie within {EQUIVALENT_UTILITY} of each other in {rec.tie_equivalence:.0%} of "
                     "the resamples (practically the same answer when that is most of them)")
    else:
        line = (f"Noise: {pick.label} is the pick in {win:.0%} of {rec.resamples} bootstrap resamples of {RESAMPLED}"
                f"; no statistical tie (tied: another in-budget variant wins >= {TIE_THRESHOLD:.0%})")
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
    failed = [r.label for r in rec.rows if any(v.startswith(FAILED_CERTIFICATION) for v in r.violations)]
    if cert is None and failed:
        return f"Certification: none; the time for it ran out after {', '.join(failed)} failed it"
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


def markdown(rec: Recommendation, image: str | None = None) -> str:
    lines = [
        f"# Recommendation: {rec.recipe} on {rec.device}",
        "",
        f"**{rec.message}**",
        "",
        *([f"![Pareto plot: {' vs '.join(METRICS[a][0] for a in default_axes([rec]))}]({image})", ""] if image else []),
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


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}h1{font-size:20px}
.verdict{font-size:16px;padding:10px;background:#eef7ee;border-left:4px solid #2a7}
.verdict.fallback{background:#fdf1e6;border-color:#d80}.fig{max-width:1100px;border:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin-top:16px}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child,td:last-child,th{text-align:left}
tr.pick{background:#e4f6e4;font-weight:bold}tr.front td:first-child{color:#27a}
"""
PLOT_HELP = ("Pick the axes above the plot. Colour: model; symbol: format (circle GGUF, square ONNX, diamond GPTQ); "
             "faded: over the budget; shaded: over a budget limit; dotted line: the front of the in-budget variants on "
             "the two axes shown; black ring: the pick; orange ring: statistically tied with it. Hover a point for every "
             "metric and its verdict.")
NO_PLOTLY = ("<script>if(!window.Plotly)document.querySelectorAll('.fig').forEach(function(e){e.textContent="
             "'The plots need plotly.min.js beside this page (toolkit report writes it).'})</script>")


def _page(title: str, body: str) -> str:
    esc = html.escape
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>{page_head()}"
            f"<style>{STYLE}</style></head><body>{body}{NO_PLOTLY}</body></html>\n")


def _variants_table(rec: Recommendation) -> str:
    esc = html.escape
    header = "".join(f"<th>{esc(name)}</th>" for name, _ in COLUMNS)
    body = []
    for row in rec.rows:
        cls = "pick" if row.variant_id == rec.pick else ("front" if row.on_front else "")
        body.append(f'<tr class="{cls}">' + "".join(f"<td>{esc(get(row))}</td>" for _, get in COLUMNS) + "</tr>")
    return f"<table><tr>{header}</tr>{''.join(body)}</table>"


def html_page(rec: Recommendation) -> str:
    """One page: verdict, the interactive Pareto plot, facts, every variant and the cloud options."""
    esc = html.escape
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
            *[line for line in (noise_line(rec), certification_line(rec), FRONT_NOTE) if line],
            *rec.notes,
        ]
    )
    verdict_cls = "verdict" if rec.answer == "edge" else "verdict fallback"
    return _page(
        f"{rec.recipe} recommendation",
        f"<h1>{esc(rec.recipe)} on {esc(rec.device)}</h1><p class=\"{verdict_cls}\">{esc(rec.message)}</p>"
        f"<div class=\"fig\">{figure_html(pareto_figure([rec]), 'pareto')}</div><p>{esc(PLOT_HELP)}</p><ul>{facts}</ul>"
        f"<h2>All variants</h2>{_variants_table(rec)}{cloud}",
    )


def fleet_reports(recs: list[Recommendation], folder: Path, images: bool = True) -> dict[str, Path]:
    """Several devices at once: a summary table and one Pareto panel per device (fleet.md, fleet.html)."""
    rows = fleet_summary(recs)
    fig = pareto_figure(recs, [f"{r.device_id[:10]}: {r.device.split(': ', 1)[-1]}"[:60] for r in recs])
    paths = {"md": folder / "fleet.md", "html": folder / "fleet.html", "plotly": write_plotly_js(folder)}
    image = write_images({folder / "fleet.png": fig}) if images else []
    md = [f"# Fleet: {recs[0].recipe}, {len(recs)} devices", "", *(["![Pareto plots, one panel per device](fleet.png)", ""] if image else []),
          "| device | cpu | answer | pick | decode tok/s | TTFT p90 ms | USD/1k |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r.device} | {r.cpu} | {r.answer} | {r.pick or '-'} | {_f(r.decode_tps)} | {_f(r.ttft_ms)} | {_f(r.usd_per_1k, 5)} |" for r in rows]
    esc = html.escape
    table = "".join(f"<tr><td>{esc(r.device)}</td><td>{esc(r.cpu)}</td><td>{esc(r.answer)}</td><td>{esc(r.pick or '-')}</td>"
                    f"<td>{_f(r.decode_tps)}</td><td>{_f(r.ttft_ms)}</td><td>{_f(r.usd_per_1k, 5)}</td></tr>" for r in rows)
    body = (f"<h1>Fleet: {esc(recs[0].recipe)}, {len(recs)} devices</h1><div class=\"fig\">{figure_html(fig, 'fleet')}</div>"
            f"<p>{esc(PLOT_HELP)}</p><table><tr><th>device</th><th>cpu</th><th>answer</th><th>pick</th><th>decode tok/s</th>"
            f"<th>TTFT p90 ms</th><th>USD/1k</th></tr>{table}</table>")
    write_text(paths["md"], "\n".join(md) + "\n")
    write_text(paths["html"], _page(f"{recs[0].recipe} fleet", body))
    return paths | ({"png": image[0]} if image else {})


def simulation_reports(results, title: str, folder: Path, images: bool = True) -> dict[str, Path]:
    """The cluster simulation as Markdown and an HTML page with an interactive latency chart."""
    rows = [(x.policy, x.requests, x.cloud_share, x.p50_s, x.p95_s, x.p99_s, x.usd_per_1k,
             ", ".join(f"{k} {v:.0%}" for k, v in x.utilisation.items())) for x in results]
    fig = latency_figure(results)
    image = write_images({folder / "simulation.png": fig}) if images else []
    md = [f"# {title}", "", *(["![latency by policy](simulation.png)", ""] if image else []),
          "| policy | requests | to cloud | p50 s | p95 s | p99 s | USD/1k | utilisation |", "|---|---|---|---|---|---|---|---|"]
    md += [f"| {p} | {n} | {c:.1%} | {a:.2f} | {b:.2f} | {d:.2f} | {u:.4f} | {ut} |" for p, n, c, a, b, d, u, ut in rows]
    table = "".join("<tr>" + "".join(f"<td>{html.escape(str(c if not isinstance(c, float) else round(c, 4)))}</td>" for c in row) + "</tr>" for row in rows)
    body = (f"<h1>{html.escape(title)}</h1><div class=\"fig\">{figure_html(fig, 'latency')}</div>"
            "<table><tr><th>policy</th><th>requests</th><th>to cloud</th><th>p50 s</th><th>p95 s</th><th>p99 s</th>"
            f"<th>USD/1k</th><th>utilisation</th></tr>{table}</table>")
    paths = {"md": folder / "simulation.md", "html": folder / "simulation.html", "plotly": write_plotly_js(folder)}
    write_text(paths["md"], "\n".join(md) + "\n")
    write_text(paths["html"], _page(title, body))
    return paths | ({"png": image[0]} if image else {})
