"""Plotly figures shared by the chapters, and the renderer that makes them work in the offline book.

Why a renderer of our own: plotly's default in a papermill kernel is a mimetype that Jupyter Book does
not draw, "notebook_connected" loads plotly.js from a CDN, and "notebook" adds a MathJax CDN script to
every figure. `setup()` registers "maga_offline": each figure is output both as the plotly mimetype
(JupyterLab draws it with its plotly extension) and as HTML whose first figure in a kernel embeds
plotly.js inline (~4.8 MB once per chapter), so built pages draw their figures with no network.
"""

from __future__ import annotations

import base64
import io
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

RENDERER = "maga_offline"
# Categorical colours (cluster maps, classes): colour-blind-safe Okabe-Ito order.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
# One colour per input setting, used by every chapter so that 20x / 5x / 5x+MAGA read the same way.
SETTING_COLORS = {"20x": "#0072B2", "10x": "#56B4E9", "5x": "#D55E00", "5x upsampled": "#E69F00", "5x+MAGA": "#009E73",
                  "10x+MAGA": "#00A087", "paper": "#7F7F7F", "ours": "#0072B2"}


# Whether this kernel already output plotly.js (module state: plotly copies renderers before use).
_plotlyjs_sent = False


class OfflineRenderer(pio.base_renderers.MimetypeRenderer):
    """Plotly mimetype + self-contained HTML (plotly.js inlined with the first figure of the kernel)."""

    def __init__(self, config: dict | None = None):
        self.config = dict(config or {})

    def to_mimebundle(self, fig_dict: dict) -> dict:
        global _plotlyjs_sent
        bundle = pio.base_renderers.PlotlyRenderer(config=self.config).to_mimebundle(dict(fig_dict))
        html = pio.to_html(
            fig_dict, config=self.config, include_plotlyjs=not _plotlyjs_sent, include_mathjax=False,
            full_html=False, default_width="100%", default_height=fig_dict.get("layout", {}).get("height", 500),
            validate=False,
        )
        _plotlyjs_sent = True
        bundle["text/html"] = html
        return bundle


def setup() -> None:
    """Make every figure shown in this kernel draw offline (idempotent; call once per notebook)."""
    if RENDERER not in pio.renderers:
        pio.renderers[RENDERER] = OfflineRenderer(config={"displaylogo": False, "responsive": True})
    pio.renderers.default = RENDERER
    pio.templates.default = "plotly_white"


def image_data_uri(image: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> str:
    """uint8 HxW or HxWx3 image -> JPEG (photographs) or PNG (flat colours) data URI: far smaller in
    the page than plotly's per-pixel z arrays."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(image))
    if fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format="PNG", optimize=True)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_axes(fig: go.Figure) -> None:
    """Image conventions for a single-panel figure: y down, square pixels, no ticks."""
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x")


def image_grid(rows: Mapping[str, Sequence[np.ndarray]], col_titles: Sequence[str] | None = None,
               title: str = "", cell_px: int = 180) -> go.Figure:
    """Images in a grid, each stretched to the same display size (so a 64 px 5x patch shows next to the
    256 px 20x patch of the same tissue). rows: row label -> images (one per column)."""
    labels = list(rows)
    n_cols = max(len(v) for v in rows.values())
    titles = [f"{lab} · {t}" if col_titles else lab for lab in labels
              for t in (col_titles or [""] * n_cols)]
    fig = make_subplots(rows=len(labels), cols=n_cols, subplot_titles=titles,
                        horizontal_spacing=0.02, vertical_spacing=0.06)
    for r, lab in enumerate(labels, 1):
        for c, img in enumerate(rows[lab], 1):
            h, w = img.shape[:2]
            fig.add_trace(go.Image(source=image_data_uri(img), dx=1, dy=1,
                                   hovertemplate=f"{lab}: {w}x{h} px<extra></extra>"), row=r, col=c)
            idx = (r - 1) * n_cols + c
            fig.update_xaxes(range=[-0.5, w - 0.5], constrain="domain", row=r, col=c)
            fig.update_yaxes(range=[h - 0.5, -0.5], constrain="domain", row=r, col=c,
                             scaleanchor="x" if idx == 1 else f"x{idx}")
    _image_axes_all(fig)
    fig.update_layout(title=title, height=int(cell_px * len(labels) + 90), margin=dict(l=10, r=10, t=70, b=10))
    fig.update_annotations(font_size=11)
    return fig


def _image_axes_all(fig: go.Figure) -> None:
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)


def patch_grid_values(coords: np.ndarray, values: np.ndarray, patch_size0: float) -> tuple[np.ndarray, float, float]:
    """Scatter per-patch values onto their grid: returns (grid [rows, cols] with NaN where no patch,
    x of the first column's left edge, y of the first row's top edge), all in level-0 pixels."""
    coords = np.asarray(coords, dtype=np.float64)
    values = np.asarray(values)
    x0, y0 = coords[:, 0].min(), coords[:, 1].min()
    cols = np.rint((coords[:, 0] - x0) / patch_size0).astype(int)
    rows = np.rint((coords[:, 1] - y0) / patch_size0).astype(int)
    grid = np.full((rows.max() + 1, cols.max() + 1), np.nan)
    grid[rows, cols] = values
    return grid, x0, y0


def heatmap_trace(coords: np.ndarray, values: np.ndarray, patch_size0: float, downsample: float,
                  value_name: str = "value", colorscale: str | list = "RdBu_r",
                  zrange: tuple[float, float] | None = None, categories: Sequence[str] | None = None,
                  opacity: float = 0.55) -> go.Heatmap:
    """Per-patch values as a heatmap in thumbnail pixel coordinates (to lay over the thumbnail).

    coords: level-0 top-left corners [N, 2]; patch_size0: patch side in level-0 pixels; downsample:
    level-0 pixels per thumbnail pixel. With `categories`, values are integer ids drawn in PALETTE."""
    grid, x0, y0 = patch_grid_values(coords, values, patch_size0)
    step = patch_size0 / downsample
    heat = dict(z=grid, x0=x0 / downsample + step / 2, dx=step, y0=y0 / downsample + step / 2, dy=step,
                opacity=opacity, hoverongaps=False, name=value_name)
    if categories is not None:
        k = len(categories)
        scale = [[(j + edge) / k, PALETTE[j % len(PALETTE)]] for j in range(k) for edge in (0, 1)]
        heat.update(colorscale=scale, zmin=-0.5, zmax=k - 0.5,
                    colorbar=dict(title=value_name, tickvals=list(range(k)), ticktext=list(categories)),
                    hovertemplate=f"{value_name}: %{{z}}<extra></extra>")
    else:
        lo, hi = zrange if zrange else (np.nanmin(grid), np.nanmax(grid))
        heat.update(colorscale=colorscale, zmin=lo, zmax=hi, colorbar=dict(title=value_name),
                    hovertemplate=f"{value_name}: %{{z:.3f}}<extra></extra>")
    return go.Heatmap(**heat)


def slide_overlay(thumbnail: np.ndarray, downsample: float, coords: np.ndarray, values: np.ndarray,
                  patch_size0: float, title: str = "", value_name: str = "value",
                  colorscale: str | list = "RdBu_r", zrange: tuple[float, float] | None = None,
                  categories: Sequence[str] | None = None, opacity: float = 0.55, height: int = 520) -> go.Figure:
    """Per-patch values (similarity, attention, cluster id) as a heatmap over a slide thumbnail
    (arguments as in heatmap_trace)."""
    th, tw = thumbnail.shape[:2]
    fig = go.Figure(go.Image(source=image_data_uri(thumbnail), hoverinfo="skip"))
    fig.add_trace(heatmap_trace(coords, values, patch_size0, downsample, value_name, colorscale, zrange,
                                categories, opacity))
    _image_axes(fig)
    fig.update_xaxes(range=[-0.5, tw - 0.5])
    fig.update_yaxes(range=[th - 0.5, -0.5])
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=60, b=10))
    return fig


def roc_band(curves: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
             aucs: Mapping[str, Sequence[float]] | None = None, band: tuple[float, float] = (2.5, 97.5),
             title: str = "ROC", colors: Mapping[str, str] | None = None, height: int = 480) -> go.Figure:
    """Mean ROC per model with a percentile band over folds (or bootstrap resamples).

    curves: model -> [(fpr, tpr), ...]; aucs: model -> per-fold AUCs (legend shows mean [band])."""
    grid = np.linspace(0, 1, 201)
    fig = go.Figure()
    for i, (name, pairs) in enumerate(curves.items()):
        color = (colors or {}).get(name) or SETTING_COLORS.get(name) or PALETTE[i % len(PALETTE)]
        tprs = np.stack([np.interp(grid, np.asarray(f), np.asarray(t)) for f, t in pairs])
        tprs[:, 0] = 0.0
        lo, hi = np.percentile(tprs, band, axis=0)
        label = name
        if aucs and name in aucs:
            a = np.asarray(aucs[name], dtype=float)
            alo, ahi = np.percentile(a, band)
            label = f"{name}: AUC {a.mean():.3f} [{alo:.3f}, {ahi:.3f}]"
        fig.add_trace(go.Scatter(x=grid, y=lo, line=dict(width=0), showlegend=False, hoverinfo="skip",
                                 legendgroup=name))
        fig.add_trace(go.Scatter(x=grid, y=hi, line=dict(width=0), fill="tonexty", fillcolor=_rgba(color, 0.18),
                                 showlegend=False, hoverinfo="skip", legendgroup=name))
        fig.add_trace(go.Scatter(x=grid, y=tprs.mean(0), name=label, line=dict(color=color, width=2),
                                 legendgroup=name, hovertemplate="FPR %{x:.2f} · TPR %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], line=dict(color="#999", dash="dot"), showlegend=False,
                             hoverinfo="skip"))
    fig.update_layout(title=title, height=height, xaxis_title="false positive rate",
                      yaxis_title="true positive rate", legend=dict(x=0.98, y=0.02, xanchor="right"))
    fig.update_xaxes(range=[0, 1], constrain="domain")
    fig.update_yaxes(range=[0, 1.01], scaleanchor="x")
    return fig


def box_plot(values: Mapping[str, Sequence[float]], reference: Mapping[str, float] | None = None,
             title: str = "", yaxis_title: str = "AUC", colors: Mapping[str, str] | None = None,
             height: int = 460) -> go.Figure:
    """Box plot per group (e.g. per-fold AUCs of each aggregator x setting), every point shown, with an
    optional reference value per group (e.g. the paper's mean) as a grey diamond."""
    fig = go.Figure()
    for i, (name, vals) in enumerate(values.items()):
        color = (colors or {}).get(name) or _setting_color(name) or PALETTE[i % len(PALETTE)]
        fig.add_trace(go.Box(y=list(map(float, vals)), name=name, boxpoints="all", jitter=0.35, pointpos=0,
                             marker=dict(color=color, size=5), line=dict(color=color), showlegend=False))
    if reference:
        names = [n for n in values if n in reference]
        fig.add_trace(go.Scatter(x=names, y=[reference[n] for n in names], mode="markers", name="paper",
                                 marker=dict(symbol="diamond", size=11, color=SETTING_COLORS["paper"],
                                             line=dict(color="white", width=1))))
    fig.update_layout(title=title, height=height, yaxis_title=yaxis_title)
    return fig


def paired_bars(labels: Sequence[str], series: Mapping[str, Sequence[float | None]],
                errors: Mapping[str, Sequence[tuple[float, float] | None]] | None = None,
                title: str = "", yaxis_title: str = "", height: int = 460) -> go.Figure:
    """Grouped bars (e.g. paper vs ours per figure) with optional [lo, hi] intervals; None = not run
    (the bar is left out and the label says so)."""
    fig = go.Figure()
    for i, (name, vals) in enumerate(series.items()):
        color = SETTING_COLORS.get(name) or PALETTE[i % len(PALETTE)]
        y = [np.nan if v is None else float(v) for v in vals]
        kw = {}
        if errors and name in errors:
            ci = errors[name]
            plus = [np.nan if c is None or v is None else c[1] - v for c, v in zip(ci, vals)]
            minus = [np.nan if c is None or v is None else v - c[0] for c, v in zip(ci, vals)]
            kw["error_y"] = dict(type="data", symmetric=False, array=plus, arrayminus=minus, color="#444")
        text = ["not run" if v is None else f"{v:.3g}" for v in vals]
        fig.add_trace(go.Bar(x=list(labels), y=y, name=name, marker_color=color, text=text,
                             textposition="outside", cliponaxis=False, **kw))
    fig.update_layout(title=title, barmode="group", height=height, yaxis_title=yaxis_title,
                      xaxis_tickangle=-30, margin=dict(b=140))
    return fig


def _setting_color(name: str) -> str | None:
    """'clam_sb 5x+MAGA' -> the 5x+MAGA colour: the setting decides the colour, whatever the model."""
    for key in sorted(SETTING_COLORS, key=len, reverse=True):
        if name.endswith(key) or name.endswith(key.replace("+", "_").lower()):
            return SETTING_COLORS[key]
    return None


def _rgba(color: str, alpha: float) -> str:
    c = color.lstrip("#")
    r, g, b = (int(c[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"
