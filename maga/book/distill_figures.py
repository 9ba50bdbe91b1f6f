"""Plotly figures of the distillation chapter, from a `study.run_study` result dict."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = {"teacher": "#1f77b4", "distilled student": "#d62728", "undistilled student": "#7f7f7f"}


def _color(model: str) -> str | None:
    return COLORS.get(model)


def loss_curve(result: dict) -> go.Figure:
    """Mean training loss per epoch of the distilled student."""
    h = result["history"]
    fig = go.Figure(go.Scatter(x=[e["epoch"] + 1 for e in h], y=[e["loss"] for e in h], mode="lines+markers",
                               line={"color": _color("distilled student")}, name="train loss"))
    fig.update_layout(title="Distillation loss (cosine + smooth-L1 on standardised teacher features)",
                      xaxis_title="epoch", yaxis_title="loss", height=350)
    return fig


def auc_bars(result: dict) -> go.Figure:
    """Probe AUC with bootstrap 95% CI per model, pooled and per held-out source."""
    groups = list(result["rows"][0]["auc"])
    fig = go.Figure()
    for r in result["rows"]:
        a = [r["auc"][g] for g in groups]
        fig.add_bar(name=r["model"], x=groups, y=[v["auc"] for v in a], marker_color=_color(r["model"]),
                    error_y={"type": "data", "symmetric": False,
                             "array": [v["auc_high"] - v["auc"] for v in a],
                             "arrayminus": [v["auc"] - v["auc_low"] for v in a]})
    fig.update_layout(barmode="group", title="Adenocarcinoma vs squamous: linear-probe AUC on held-out tiles",
                      yaxis={"title": "AUC (95% bootstrap CI)", "range": [0, 1.02]},
                      xaxis_title="held-out tiles", height=400)
    return fig


def robustness_curves(result: dict) -> go.Figure:
    """Robustness index against k; 1 is where biology and source weigh the same."""
    fig = go.Figure()
    for model, curve in result["robustness_curves"].items():
        fig.add_scatter(x=[c["k"] for c in curve], y=[c["index"] for c in curve], mode="lines+markers",
                        name=model, line={"color": _color(model)})
    fig.add_hline(y=1.0, line_dash="dash", line_color="black", annotation_text="biology = source")
    fig.update_layout(title="Robustness index (TCGA scans vs LC25000 photos)", xaxis_title="k neighbours",
                      yaxis_title="same class, other source / other class, same source", height=400)
    return fig


def cost_bars(result: dict) -> go.Figure:
    """Parameters, FLOPs per tile, tiles/s and peak-memory rise, each relative to the teacher."""
    rows = result["rows"]
    t = rows[0]
    metrics = [("params", "parameters"), ("gflops_per_tile", "FLOPs / tile"), ("tiles_per_s", "tiles / s"),
               ("rss_rise_mb", "peak memory rise")]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[m[1] for m in metrics])
    for i, (key, _) in enumerate(metrics, start=1):
        for r in rows:
            fig.add_bar(x=[r["model"]], y=[r[key] / t[key]], marker_color=_color(r["model"]), showlegend=False,
                        text=[f"{r[key] / t[key]:.2f}x"], textposition="outside", row=1, col=i)
    fig.update_yaxes(title_text="relative to the teacher", row=1, col=1)
    fig.update_layout(title=f"Cost at batch size {t['batch_size']} on {t['device']} ({t['threads']} thread(s))",
                      height=420)
    return fig
