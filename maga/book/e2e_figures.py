"""Figures of the end-to-end chapter: the 1 + N process scheme, gradient equivalence, K sweeps and
memory per tile (plotly, drawn offline by maga.book.viz)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from maga.book.viz import PALETTE
from maga.e2e.sampling import split_counts

MODE_COLORS = {"end-to-end": PALETTE[0], "frozen": PALETTE[1]}


def _box(fig: go.Figure, x0: float, y0: float, x1: float, y1: float, text: str, color: str) -> None:
    fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line={"color": color, "width": 2},
                  fillcolor=color, opacity=0.15, layer="below")
    fig.add_annotation(x=(x0 + x1) / 2, y=(y0 + y1) / 2, text=text, showarrow=False, font={"size": 12})


def _arrow(fig: go.Figure, x0: float, y0: float, x1: float, y1: float, text: str, color: str) -> None:
    fig.add_annotation(x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", showarrow=True,
                       arrowhead=3, arrowwidth=2, arrowcolor=color, text="")
    fig.add_annotation(x=(x0 + x1) / 2, y=(y0 + y1) / 2, text=text, showarrow=False,
                       font={"size": 11, "color": color}, bgcolor="rgba(255,255,255,0.85)")


def scheme_figure(n_encoder_ranks: int = 2, k: int = 64) -> go.Figure:
    """Rank 0 (aggregator) above the N encoder ranks (DDP group); gather up, scatter down."""
    counts = split_counts(k, n_encoder_ranks)
    fig = go.Figure()
    width = 10.0
    _box(fig, 2.5, 6.2, 7.5, 8.2, "<b>rank 0: aggregator only</b><br>concat features [K, D] -> MIL forward"
         "<br>loss, backward -> dL/dfeatures, split by rank", PALETTE[2])
    _box(fig, 0.1, 0.0, width - 0.1, 3.4, "", PALETTE[0])
    fig.add_annotation(x=width / 2, y=0.25, text="<b>encoder process group (dist.new_group), "
                       "DistributedDataParallel</b>", showarrow=False, font={"size": 11})
    step = (width - 0.4) / n_encoder_ranks
    for r in range(n_encoder_ranks):
        x0 = 0.3 + r * step
        x1 = x0 + step - 0.3
        _box(fig, x0, 0.7, x1, 3.1, f"<b>rank {r + 1}: encoder</b><br>{counts[r]} of K={k} tiles<br>"
             f"f = encoder(tiles)<br>backward of<br>N * sum(f * grad)", PALETTE[4])
        cx = (x0 + x1) / 2
        _arrow(fig, cx - 0.35, 3.2, cx - 0.35 + (5 - cx) * 0.35, 6.1, "gather f", PALETTE[0])
        _arrow(fig, cx + 0.35 + (5 - cx) * 0.35, 6.1, cx + 0.35, 3.2, "scatter grad", PALETTE[5])
    fig.add_annotation(x=width / 2, y=4.65, text="DDP all-reduce averages over N ranks: the factor N makes it the sum",
                       showarrow=False, font={"size": 11, "color": "#555"})
    fig.update_xaxes(visible=False, range=[0, width])
    fig.update_yaxes(visible=False, range=[-0.2, 8.5])
    fig.update_layout(height=460, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title=f"One training step: 1 aggregator rank + {n_encoder_ranks} encoder ranks")
    return fig


def equivalence_figure(result: dict[str, Any]) -> go.Figure:
    """Per step: absolute loss difference and the largest normalised gradient difference."""
    steps = pd.DataFrame(result["steps"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=("|loss single - loss multi|",
                                                       "normalised L1 gradient difference"))
    fig.add_trace(go.Bar(x=steps["step"], y=steps["loss_abs_diff"], marker_color=PALETTE[0], name="loss"), 1, 1)
    fig.add_trace(go.Scatter(x=steps["step"], y=steps["grad_max_norm_diff"], mode="lines+markers",
                             name="worst tensor", line={"color": PALETTE[5]}), 1, 2)
    fig.add_trace(go.Scatter(x=steps["step"], y=steps["grad_model_norm_diff"], mode="lines+markers",
                             name="whole model", line={"color": PALETTE[2]}), 1, 2)
    fig.update_yaxes(type="log", exponentformat="e")
    fig.update_xaxes(title_text="step", dtick=1)
    fig.update_layout(height=360, title=f"1 process vs 1 + {result['n_encoder_ranks']} processes "
                      f"({result['backend']}, {result['dtype']}, K={result['k']})")
    return fig


def k_figure(curves: pd.DataFrame, study: pd.DataFrame) -> go.Figure:
    """Final training loss and validation AUC against K, end-to-end and frozen."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("training loss (last epoch)", "validation AUC"))
    for mode, sub in study.sort_values("k").groupby("mode", sort=False):
        color = MODE_COLORS.get(mode, PALETTE[3])
        fig.add_trace(go.Scatter(x=sub["k"], y=sub["final_train_loss"], mode="lines+markers", name=mode,
                                 line={"color": color}, legendgroup=mode), 1, 1)
        fig.add_trace(go.Scatter(x=sub["k"], y=sub["val_auc"], mode="lines+markers", name=mode,
                                 line={"color": color}, legendgroup=mode, showlegend=False), 1, 2)
    fig.update_xaxes(title_text="K tiles per slide", type="log", tickvals=sorted(study["k"].unique()))
    fig.update_layout(height=380)
    return fig


def curves_figure(curves: pd.DataFrame) -> go.Figure:
    """Training loss per epoch for every K (end-to-end solid, frozen dashed)."""
    fig = go.Figure()
    ks = sorted(curves["k"].unique())
    for j, k in enumerate(ks):
        for mode, dash in (("end-to-end", "solid"), ("frozen", "dash")):
            sub = curves[(curves["k"] == k) & (curves["mode"] == mode)]
            if len(sub):
                fig.add_trace(go.Scatter(x=sub["epoch"], y=sub["train_loss"], mode="lines+markers",
                                         name=f"K={k} {mode}", line={"color": PALETTE[j % len(PALETTE)], "dash": dash}))
    fig.update_layout(height=360, xaxis_title="epoch", yaxis_title="mean training loss",
                      title="Training loss by epoch")
    return fig


def memory_figure(rows: list[dict[str, Any]]) -> go.Figure:
    """Training memory per tile by magnification (and by checkpointing, when measured)."""
    df = pd.DataFrame(rows)
    df["setting"] = df.apply(lambda r: f"{r['magnification']:g}x, {r['px']} px", axis=1)
    fig = go.Figure()
    for j, (ck, sub) in enumerate(df.groupby("checkpoint")):
        fig.add_trace(go.Bar(x=sub["setting"], y=sub["mib_per_tile"], marker_color=PALETTE[j],
                             name="activation checkpointing" if ck else "plain",
                             text=[f"{v:.1f} MiB" for v in sub["mib_per_tile"]], textposition="outside"))
    fig.update_layout(barmode="group", height=360, yaxis_title="MiB per tile (training)",
                      title=f"Encoder training memory per tile ({df['encoder'].iloc[0]}, {df['device'].iloc[0]})")
    return fig


def recorded_sweep_text(path) -> str:
    """What the recorded K sweep (results/e2e_k_sweep.json, `maga bench e2e-k`) can and cannot say, in
    words formatted from the record: a validation AUC inside the interval that uninformative scores reach
    on the same slides says nothing about K."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return f"*{path.name} is not recorded in this checkout.*"
    r = json.loads(path.read_text())
    lo, hi = r["chance_auc_95"]
    inside = sum(x["val_auc_within_chance_95"] for x in r["runs"])
    counts = ", ".join(f"{n} of class {c}" for c, n in r["val_class_counts"].items())
    trend = "; ".join(f"{mode}: Spearman of the final training loss with K {s['loss_spearman_vs_k']:+.2f}"
                      for mode, s in r["summary"].items() if isinstance(s, dict) and "k" in s)
    verdict = ("so this cohort cannot rank K or the two modes by validation AUC"
               if inside == len(r["runs"]) else "so only the runs outside it carry evidence")
    return (f"`{path.name}` (preset {r['preset']}): {r['n_train_slides']} training and {r['n_val_slides']} "
            f"validation slides ({counts}). Uninformative scores reach validation AUCs from {lo:.2f} to {hi:.2f} "
            f"(95%) on these slides; {inside} of {len(r['runs'])} runs fall inside that interval, {verdict}. "
            f"{trend}.")
