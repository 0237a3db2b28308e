"""Plotly figures for the reports: Pareto scatter with axis pickers (one panel per device), latency by policy.

Every report page loads `plotly.min.js` from beside itself (written once per reports folder), so each page
stays small and works offline. Static PNG copies for the Markdown reports need kaleido and a Chrome or
Chromium; without them the Markdown reports simply have no images.
"""

from __future__ import annotations

import contextlib
import math
import textwrap
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from toolkit.io import write_text
from toolkit.recommend.engine import Recommendation, Row, budget_limits
from toolkit.recommend.metrics import METRICS as TABLE

PLOTLY_JS = "plotly.min.js"
# metric -> (axis title, +1 when higher is better, -1 when lower is better)
METRICS: dict[str, tuple[str, int]] = {
    **{m.key: (m.axis, 1 if m.direction == "max" else -1) for m in TABLE},
    "size_mb": ("file size (MB)", -1),
}
DEFAULT_AXES = ("ttft_ms", "perplexity")  # y: bits per byte when the rows span several models (default_axes)
SYMBOLS = {"gguf": "circle", "onnx": "square", "gptq": "diamond", "hf": "triangle-up"}
BAND = "rgba(214,39,40,0.10)"
# Recomputes each panel's 2-D front (in-budget variants, on the axes shown) after an axis picker changes.
FRONT_JS = """
var gd = document.getElementById('{plot_id}');
function edgefirstFront() {
  var m = gd.layout.meta, sx = m.better[m.x], sy = m.better[m.y], xs = [], ys = [], idx = [];
  gd.data.forEach(function (t, k) {
    if (t.meta.role !== 'front') return;
    var pts = [];
    gd.data.forEach(function (p) {
      if (p.meta.role !== 'points' || p.meta.panel !== t.meta.panel) return;
      p.x.forEach(function (x, j) {
        if (p.customdata[j][0] && x !== null && p.y[j] !== null) pts.push([x, p.y[j]]);
      });
    });
    var front = pts.filter(function (a) {
      return !pts.some(function (b) {
        return sx * b[0] >= sx * a[0] && sy * b[1] >= sy * a[1] && (sx * b[0] > sx * a[0] || sy * b[1] > sy * a[1]);
      });
    }).sort(function (a, b) { return a[0] - b[0]; });
    idx.push(k); xs.push(front.map(function (p) { return p[0]; })); ys.push(front.map(function (p) { return p[1]; }));
  });
  Plotly.restyle(gd, {x: xs, y: ys}, idx);
}
gd.on('plotly_update', edgefirstFront);
"""


def value(row: Row, metric: str) -> float | None:
    return row.size_mb if metric == "size_mb" else row.metrics.get(metric)


def default_axes(recs: list[Recommendation]) -> tuple[str, str]:
    """TTFT against perplexity for one model's variants; against bits per byte (which compares across
    tokenizers) when the rows span several models."""
    several = len({model_of(r) for rec in recs for r in rec.rows}) > 1
    return DEFAULT_AXES[0], "bits_per_byte" if several else DEFAULT_AXES[1]


def model_of(row: Row) -> str:
    """The candidate model a row's variant comes from (reports written before rows named it: the label's first word)."""
    return row.model or row.label.split(" ", 1)[0]


def in_budget(row: Row) -> bool:
    return row.status == "ok" and not row.violations


def front_2d(points: list[tuple[float, float]], sx: int, sy: int) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (sx, sy: +1 when higher is better), sorted by x."""
    def beats(b, a):
        return sx * b[0] >= sx * a[0] and sy * b[1] >= sy * a[1] and (sx * b[0] > sx * a[0] or sy * b[1] > sy * a[1])

    return sorted(a for a in points if not any(beats(b, a) for b in points))


def _axis(values: list[float], limit: float | None) -> dict:
    """Axis type and range: log when every value is positive and they span 20x or more."""
    span = [v for v in [*values, limit] if v is not None]
    if not span:
        return {"type": "linear", "range": None}
    lo, hi = min(span), max(span)
    if lo > 0 and hi / lo >= 20:
        a, b = math.log10(lo), math.log10(hi)
        pad = (b - a) * 0.06
        return {"type": "log", "range": [a - pad, b + pad]}
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    return {"type": "linear", "range": [lo - pad, hi + pad]}


def _edge(axis: dict, end: int) -> float:
    v = axis["range"][end]
    return 10**v if axis["type"] == "log" else v


def _hover(row: Row, pick: str | None, tied: list[str]) -> str:
    role = " (pick)" if row.variant_id == pick else " (tied with the pick)" if row.variant_id in tied else ""
    lines = [f"<b>{row.label}{role}</b>", f"format {row.format}, {row.quant}; status {row.status}"]
    for metric, (title, _) in METRICS.items():
        v = value(row, metric)
        lines.append(f"{title}: {'-' if v is None else f'{v:,.4g}'}")
    lines.append(f"on the front: {'yes' if row.on_front else 'no'}"
                 + (f"; win p {row.win_probability:.2f}" if row.win_probability is not None else ""))
    lines += textwrap.wrap(f"verdict: {row.verdict}", 70)
    return "<br>".join(lines)


def _metrics(recs: list[Recommendation]) -> list[str]:
    return [m for m in METRICS if any(value(r, m) is not None for rec in recs for r in rec.rows)]


def _band(metric: str, rec: Recommendation, axis: dict, along: str, suffix: str) -> dict:
    """The over-budget side of `metric`'s limit on one axis, shaded (invisible when there is no limit)."""
    limit = next((lim for lim in budget_limits(rec.budget) if lim.metric == metric), None)
    other = "y" if along == "x" else "x"
    shape = {"type": "rect", "xref": f"{along}{suffix}", "yref": f"{other}{suffix} domain", "fillcolor": BAND,
             "line": {"width": 0}, "layer": "below", "visible": limit is not None}
    if limit is None or axis["range"] is None:
        shape.update(visible=False, x0=0, x1=0, y0=0, y1=1)
        return _swap(shape, along)
    start, end = (limit.bound, _edge(axis, 1)) if limit.kind == "max" else (_edge(axis, 0), limit.bound)
    shape.update(x0=start, x1=end, y0=0, y1=1,
                 label={"text": f"over budget ({limit.kind} {limit.bound:g})", "font": {"size": 10, "color": "#b22"},
                        "textangle": -90 if along == "x" else 0, "textposition": "middle center"})
    return _swap(shape, along)


def _swap(shape: dict, along: str) -> dict:
    if along == "x":
        return shape
    return shape | {"x0": shape["y0"], "x1": shape["y1"], "y0": shape["x0"], "y1": shape["x1"],
                    "xref": shape["yref"], "yref": shape["xref"]}


def pareto_figure(recs: list[Recommendation], titles: list[str] | None = None) -> go.Figure:
    """Scatter of every variant (colour: model, symbol: format), the 2-D front of the in-budget ones as a
    line, the pick and its statistical ties marked, the budget as shaded regions; one panel per device,
    axis pickers over every measured objective."""
    n = len(recs)
    cols = min(n, 2)
    rows_n = math.ceil(n / cols)
    fig = make_subplots(rows=rows_n, cols=cols, subplot_titles=titles, horizontal_spacing=0.08,
                        vertical_spacing=0.12 if rows_n > 1 else 0.1)
    metrics = _metrics(recs)
    models = sorted({model_of(r) for rec in recs for r in rec.rows})
    colours = {m: qualitative.D3[i % len(qualitative.D3)] for i, m in enumerate(models)}
    x0, y0 = (m if m in metrics else metrics[0] for m in default_axes(recs))
    roles: list[tuple[int, str, list[Row]]] = []  # per trace: panel, role, rows behind its points
    shown: set[str] = set()
    for p, rec in enumerate(recs):
        where = {"row": p // cols + 1, "col": p % cols + 1}
        groups: dict[tuple[str, str], list[Row]] = {}
        for r in rec.rows:
            groups.setdefault((model_of(r), r.format), []).append(r)
        for (model, fmt), group in sorted(groups.items()):
            name = f"{model} {fmt}"
            fig.add_trace(go.Scatter(
                x=[value(r, x0) for r in group], y=[value(r, y0) for r in group], mode="markers", name=name,
                legendgroup=name, showlegend=name not in shown, customdata=[[in_budget(r)] for r in group],
                text=[_hover(r, rec.pick, rec.tied_with) for r in group], hovertemplate="%{text}<extra></extra>",
                marker={"color": colours[model], "symbol": SYMBOLS.get(fmt, "x"), "size": 10,
                        "opacity": [1.0 if in_budget(r) else 0.45 for r in group], "line": {"width": 1, "color": "#fff"}},
                legendrank=500, meta={"panel": p, "role": "points"}), **where)
            shown.add(name)
            roles.append((p, "points", group))
        ok = [r for r in rec.rows if in_budget(r) and value(r, x0) is not None and value(r, y0) is not None]
        front = front_2d([(value(r, x0), value(r, y0)) for r in ok], METRICS[x0][1], METRICS[y0][1])
        fig.add_trace(go.Scatter(
            x=[a for a, _ in front], y=[b for _, b in front], mode="lines+markers", name="front (in budget, these axes)",
            legendgroup="front", showlegend=p == 0, hoverinfo="skip", line={"color": "#2ca02c", "width": 2, "dash": "dot"},
            marker={"color": "#2ca02c", "size": 4},
            meta={"panel": p, "role": "front"}), **where)
        roles.append((p, "front", []))
        for role, ids, marker in (
            ("pick", [rec.pick] if rec.pick else [], {"symbol": "circle-open", "size": 22, "color": "#000", "line": {"width": 3}}),
            ("tied with the pick", rec.tied_with, {"symbol": "circle-open-dot", "size": 18, "color": "#ff7f0e", "line": {"width": 2}}),
        ):
            marked = [r for r in rec.rows if r.variant_id in ids]
            fig.add_trace(go.Scatter(
                x=[value(r, x0) for r in marked], y=[value(r, y0) for r in marked], mode="markers", name=role,
                legendgroup=role, showlegend=p == 0, hoverinfo="skip", marker=marker, meta={"panel": p, "role": role}), **where)
            roles.append((p, role, marked))
    axes = {(p, along, m): _axis([v for r in rec.rows if (v := value(r, m)) is not None],
                                 next((lim.bound for lim in budget_limits(rec.budget) if lim.metric == m), None))
            for p, rec in enumerate(recs) for along in "xy" for m in metrics}

    def suffix(p: int) -> str:
        return "" if p == 0 else str(p + 1)

    def layout_for(along: str, metric: str) -> dict:
        out = {f"meta.{along}": metric}
        for p, rec in enumerate(recs):
            axis = axes[(p, along, metric)]
            out |= {f"{along}axis{suffix(p)}.title.text": METRICS[metric][0], f"{along}axis{suffix(p)}.type": axis["type"],
                    f"{along}axis{suffix(p)}.range": axis["range"],
                    f"shapes[{2 * p + (along == 'y')}]": _band(metric, rec, axis, along, suffix(p))}
        return out

    updatable = [k for k, (_, role, _) in enumerate(roles) if role != "front"]
    height, bottom = (500, 50) if n == 1 else (430 * rows_n + 80, 80)
    top = 1 + 24 / (height - 70 - bottom)  # the pickers sit just above the plot area
    menus = []
    for i, along in enumerate("xy"):
        buttons = [{"label": METRICS[m][0], "method": "update",
                    "args": [{along: [[value(r, m) for r in roles[k][2]] for k in updatable]}, layout_for(along, m), updatable]}
                   for m in metrics]
        active = metrics.index(x0 if along == "x" else y0)
        menus.append({"buttons": buttons, "active": active, "direction": "down", "showactive": True,
                      "x": 0.04 + 0.3 * i, "xanchor": "left", "y": top, "yanchor": "bottom", "pad": {"t": 4}})
    fig.update_layout(updatemenus=menus, template="plotly_white", height=height,
                      margin={"t": 70, "l": 60, "r": 20, "b": bottom}, hoverlabel={"align": "left"},
                      legend={"orientation": "h", "y": -0.12, "yanchor": "top"} if n > 1 else {},
                      meta={"x": x0, "y": y0, "better": {m: METRICS[m][1] for m in metrics}},
                      annotations=[*fig.layout.annotations,
                                   *({"text": f"{a}:", "x": 0.005 + 0.3 * i, "y": top, "xref": "paper", "yref": "paper",
                                      "yanchor": "bottom", "xanchor": "left", "showarrow": False, "yshift": 6,
                                      "name": "picker"}
                                     for i, a in enumerate(("x", "y")))])
    shapes = []
    for p, rec in enumerate(recs):
        for along, metric in (("x", x0), ("y", y0)):
            axis = axes[(p, along, metric)]
            fig.update_layout({f"{along}axis{suffix(p)}": {"title": {"text": METRICS[metric][0]}, "type": axis["type"],
                                                           "range": axis["range"]}})
            shapes.append(_band(metric, rec, axis, along, suffix(p)))
    fig.update_layout(shapes=shapes)
    return fig


def latency_figure(results) -> go.Figure:
    """The cluster simulation's latency percentiles by selection policy, with cloud share and cost in hover."""
    fig = go.Figure()
    for name, colour in (("p50", "#9ecae1"), ("p95", "#3182bd"), ("p99", "#08519c")):
        fig.add_trace(go.Bar(
            name=name, x=[x.policy for x in results], y=[getattr(x, f"{name}_s") for x in results], marker_color=colour,
            text=[f"{getattr(x, f'{name}_s'):.1f}" for x in results], textposition="outside",
            customdata=[[x.cloud_share, x.usd_per_1k, x.requests] for x in results],
            hovertemplate=f"%{{x}} {name}: %{{y:.2f}} s<br>to cloud: %{{customdata[0]:.1%}}<br>"
                          "USD/1k: %{customdata[1]:.4f}<br>requests: %{customdata[2]}<extra></extra>"))
    fig.update_layout(barmode="group", template="plotly_white", height=420, margin={"t": 50, "l": 60, "r": 20, "b": 50},
                      title="latency p50 / p95 / p99 by selection policy", yaxis_title="seconds",
                      xaxis={"ticktext": [f"{x.policy} ({x.cloud_share:.0%} cloud)" for x in results],
                             "tickvals": [x.policy for x in results]})
    return fig


def figure_html(fig: go.Figure, div_id: str) -> str:
    """The figure as a <div> and its script; the page must load plotly.min.js first (see page_head)."""
    post = FRONT_JS if any((t.meta or {}).get("role") == "front" for t in fig.data) else None
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id, post_script=post,
                       config={"displaylogo": False, "responsive": True}, default_height=f"{fig.layout.height}px")


def page_head() -> str:
    return f'<script src="{PLOTLY_JS}"></script>'


def write_plotly_js(folder: Path) -> Path:
    """plotly.js beside the reports (about 4.8 MB, once per folder, rewritten only when it changes)."""
    target = folder / PLOTLY_JS
    script = get_plotlyjs()
    if not target.exists() or target.stat().st_size != len(script.encode()):
        write_text(target, script)
    return target


def write_images(figs: dict[Path, go.Figure]) -> list[Path]:
    """Static PNG copies (no dropdowns) when kaleido and a Chrome/Chromium are installed; else none."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return []
    static = []
    for fig in figs.values():
        copy = go.Figure(fig)
        copy.layout.updatemenus = ()
        copy.layout.annotations = [a for a in copy.layout.annotations if a.name != "picker"]
        static.append(copy)
    with contextlib.suppress(Exception):  # no browser, or a kaleido failure: the reports go without images
        pio.write_images(static, list(figs), scale=1, width=1000)
        return list(figs)
    return []
