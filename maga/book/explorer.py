"""Patch explorer: pick a slide and a patch, switch between 20x, 5x and 5x+MAGA features, and see the
patch, how similar its features are to its own 20x features, and which tissue of the slide looks like it.

With a live kernel (JupyterLab) `show` gives ipywidgets; in the static book (papermill sets
MAGA_BOOK_STATIC) it gives, per slide, one plotly figure whose slider steps through patches and views.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from maga_core.data import manifests
from maga_core.errors import MagaError
from maga_core.slides import (TissueConfig, aligned_grid, detect_tissue, level0_square_side, open_slide,
                              read_patch)
from maga.book import viz
from maga.book.build import STATIC_ENV
from maga.experiments.tile_slides import CohortConfig, ensure_cohort
from maga.extract import embed, load_model

HIGH, LOW = 20.0, 5.0
VIEWS = ("20x", "5x", "5x+MAGA")


@dataclass
class SlideFeatures:
    """One slide's aligned patches, their images at 20x and 5x, and L2-normalised features per view."""

    name: str
    thumbnail: np.ndarray
    downsample: float  # level-0 px per thumbnail px
    coords: np.ndarray  # [N, 2] level-0 top-left corners
    side: float  # level-0 side of a patch square
    images: dict[str, np.ndarray]  # "20x" [N,256,256,3], "5x" [N,64,64,3]
    features: dict[str, np.ndarray]  # view -> [N, D], unit norm

    @property
    def views(self) -> tuple[str, ...]:
        return tuple(v for v in VIEWS if v in self.features)

    def similarity_to(self, view: str, index: int) -> np.ndarray:
        """Cosine of every patch's `view` feature to patch `index`'s: where else this tissue appears."""
        f = self.features[view]
        return f @ f[index]

    def alignment(self, view: str) -> np.ndarray:
        """Cosine of each patch's `view` feature to its own 20x feature (1 = nothing lost)."""
        return np.einsum("nd,nd->n", self.features[view], self.features["20x"])


def collect(path: str | Path, encoder: str, student: str | Path | None = None, max_patches: int = 64,
            thumb_px: int = 768, mpp: float | None = None, seed: int = 0, progress: bool = True) -> SlideFeatures:
    """Read a slide's aligned 20x/5x patches (a seeded subset of at most `max_patches`) and embed them
    with `encoder` at 20x and 5x and, given a MAGA student checkpoint, with the student at 5x."""
    with open_slide(path, mpp=mpp) as reader:
        tissue = detect_tissue(reader, TissueConfig(thumb_px=thumb_px))
        coords = aligned_grid(reader, tissue, (HIGH, LOW))
        if len(coords) > max_patches:
            keep = np.sort(np.random.default_rng(seed).choice(len(coords), max_patches, replace=False))
            coords = coords[keep]
        side = level0_square_side(reader, (HIGH, LOW))
        images = {f"{m:g}x": np.stack([read_patch(reader, (float(x), float(y)), m) for x, y in coords])
                  for m in (HIGH, LOW)}
        name = reader.path.name
    models = {"20x": load_model(encoder, HIGH), "5x": load_model(encoder, LOW)}
    if student is not None:
        models["5x+MAGA"] = load_model(encoder, student=student)
        if models["5x+MAGA"].mag != LOW:
            raise MagaError(f"the explorer compares 5x views; this student takes {models['5x+MAGA'].mag:g}x", student)
    features = {}
    for view, model in models.items():
        imgs = images["20x" if view == "20x" else "5x"]
        f = embed(list(imgs), model, num_workers=0, desc=f"{name} {view}", progress=progress)
        features[view] = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return SlideFeatures(name, tissue.thumbnail, float(tissue.downsample[0]), coords, side, images, features)


def slide_paths(fixtures: list[str], mosaic: dict | None = None, root: str | Path | None = None) -> dict[str, Path]:
    """The slides to explore: real slides of the histolab_fixtures manifest by file name, then, given
    `mosaic` (CohortConfig fields plus `show`, the number of slides), that many tumour-bearing mosaic
    slides of real tiles from a cohort built (or reused) under `root`."""
    paths = {name: manifests.fetch("histolab_fixtures", name) for name in fixtures}
    if mosaic:
        settings = dict(mosaic)
        show = int(settings.pop("show", 1))
        cohort = ensure_cohort(CohortConfig(**settings), Path(root) / "cohort", progress=False)
        table = cohort.slides.sort_values(["label", "slide"], ascending=[False, True]).head(show)
        for row in table.itertuples():
            paths[f"{row.slide} (mosaic of real tiles, {row.label_name})"] = cohort.slide_path(row.slide)
    return paths


def alignment_table(slides: Mapping[str, SlideFeatures]) -> pd.DataFrame:
    """Mean (and 10th percentile) cosine of each view's features to the 20x features, per slide."""
    rows = []
    for name, s in slides.items():
        for view in s.views:
            a = s.alignment(view)
            rows.append({"slide": name, "view": view, "patches": len(a), "mean cos to 20x": float(a.mean()),
                         "p10 cos to 20x": float(np.percentile(a, 10))})
    return pd.DataFrame(rows)


def _panel(s: SlideFeatures, index: int, view: str) -> tuple[go.Heatmap, go.Scatter, go.Image]:
    """The three traces of one (patch, view): similarity heatmap, patch marker, patch image."""
    heat = viz.heatmap_trace(s.coords, s.similarity_to(view, index), s.side, s.downsample,
                             value_name=f"cos to patch ({view})", colorscale="Viridis", zrange=(0.0, 1.0),
                             opacity=0.6)
    x, y = (s.coords[index] + s.side / 2) / s.downsample
    marker = go.Scatter(x=[x], y=[y], mode="markers", showlegend=False, hoverinfo="skip",
                        marker=dict(symbol="square-open", size=max(10, s.side / s.downsample),
                                    color="#D55E00", line=dict(width=3)))
    img = s.images["20x" if view == "20x" else "5x"][index]
    return heat, marker, go.Image(source=viz.image_data_uri(img), hoverinfo="skip")


def _title(s: SlideFeatures, index: int, view: str) -> str:
    return (f"{s.name} · patch {index} · {view} features: cosine to its own 20x feature "
            f"{s.alignment(view)[index]:.3f}")


def _layout(s: SlideFeatures) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, column_widths=[0.62, 0.38], horizontal_spacing=0.04,
                        subplot_titles=("similarity of every patch to the chosen one", "the chosen patch"))
    fig.add_trace(go.Image(source=viz.image_data_uri(s.thumbnail), hoverinfo="skip"), row=1, col=1)
    th, tw = s.thumbnail.shape[:2]
    fig.update_xaxes(range=[-0.5, tw - 0.5], showticklabels=False, showgrid=False, row=1, col=1)
    fig.update_yaxes(range=[th - 0.5, -0.5], scaleanchor="x", showticklabels=False, showgrid=False, row=1, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, row=1, col=2)
    fig.update_yaxes(scaleanchor="x2", showticklabels=False, showgrid=False, row=1, col=2)
    fig.update_layout(height=560, margin=dict(l=10, r=10, t=90, b=10))
    return fig


def panel_figure(s: SlideFeatures, index: int, view: str) -> go.Figure:
    """One (patch, view) as a figure: what the widgets redraw."""
    fig = _layout(s)
    heat, marker, img = _panel(s, index, view)
    fig.add_trace(heat, row=1, col=1)
    fig.add_trace(marker, row=1, col=1)
    fig.add_trace(img, row=1, col=2)
    fig.update_layout(title=_title(s, index, view))
    return fig


def static_figure(s: SlideFeatures, n_patches: int = 8) -> go.Figure:
    """The explorer without a kernel: a slider over (patch, view) for `n_patches` patches spread over the
    slide; each step shows that patch's image at the view's magnification and its similarity map."""
    picks = np.unique(np.linspace(0, len(s.coords) - 1, min(n_patches, len(s.coords))).round().astype(int))
    fig = _layout(s)
    steps = []
    for index in picks:
        for view in s.views:
            first = len(fig.data)
            for trace, col in zip(_panel(s, int(index), view), (1, 1, 2)):
                trace.visible = not steps
                fig.add_trace(trace, row=1, col=col)
            steps.append((first, f"{index}·{view}", _title(s, int(index), view)))
    n = len(fig.data)
    slider_steps = []
    for first, label, title in steps:
        visible = [i == 0 or first <= i < first + 3 for i in range(n)]
        slider_steps.append(dict(method="update", label=label, args=[{"visible": visible}, {"title": title}]))
    fig.update_layout(title=steps[0][2], sliders=[dict(active=0, steps=slider_steps, pad=dict(t=30),
                                                       currentvalue=dict(prefix="patch · view: "))])
    return fig


def widget(slides: Mapping[str, SlideFeatures]):
    """ipywidgets explorer: slide dropdown, patch slider, view toggle; redraws the panel figure."""
    import ipywidgets as w
    from IPython.display import display

    names = list(slides)
    pick_slide = w.Dropdown(options=names, description="slide")
    pick_patch = w.IntSlider(min=0, max=len(slides[names[0]].coords) - 1, description="patch")
    pick_view = w.ToggleButtons(options=list(slides[names[0]].views), description="features")
    out = w.Output()

    def redraw(*_):
        s = slides[pick_slide.value]
        pick_patch.max = len(s.coords) - 1
        with out:
            out.clear_output(wait=True)
            display(panel_figure(s, pick_patch.value, pick_view.value))

    for control in (pick_slide, pick_patch, pick_view):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([pick_slide, pick_view]), pick_patch, out])


def show(slides: Mapping[str, SlideFeatures], static: bool | None = None, n_patches: int = 8) -> None:
    """Widgets with a live kernel; static slider figures when building the book (or static=True)."""
    from IPython.display import display

    if static is None:
        static = os.environ.get(STATIC_ENV) == "1"
    if static:
        for s in slides.values():
            display(static_figure(s, n_patches))
    else:
        display(widget(slides))
