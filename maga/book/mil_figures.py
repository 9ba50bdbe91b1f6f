"""Figures of chapters 04 (cross-validation) and 05 (interpretability), drawn from the evidence run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from maga_core.mil.cv import load_results
from maga.alignment.baselines import from_settings
from maga.book import baselines_text, viz
from maga.book.baselines_text import fraction
from maga.experiments.mil import ExperimentConfig, SETTINGS, cv_dir, fold_aucs, roc_curves
from maga.experiments.mil_maps import SlideMaps


def auc_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table of the chapter: mean AUC [95% CI] over folds, pooled AUC, and the paper's figure."""
    def ci(v, lo, hi):
        return "" if pd.isna(v) else (f"{v:.3f}" if pd.isna(lo) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]")

    return pd.DataFrame({
        "model": table["model"], "setting": table["setting"],
        "AUC mean over folds [95% CI]": [ci(*r) for r in table[["auc_mean", "auc_ci_low", "auc_ci_high"]].to_numpy()],
        "AUC pooled [95% CI]": [ci(*r) for r in table[["auc_pooled", "auc_pooled_ci_low", "auc_pooled_ci_high"]].to_numpy()],
        "macro F1": table["f1_mean"].round(3),
        "paper": [ci(*r) for r in table[["paper_auc", "paper_ci_low", "paper_ci_high"]].to_numpy()],
        "paper figure": table["paper_key"].fillna(""),
    })


def fold_predictions(bags: list, pred: dict, classes: list[str]) -> pd.DataFrame:
    """One fold's test slides as `predict_bags(..., scores=True)` scored them: label, the positive class's
    probability, the instance count and the shape of the per-instance scores."""
    return pd.DataFrame({"slide": [b.slide for b in bags], "label": [classes[b.label] for b in bags],
                         f"P({classes[-1]})": pred["probs"][:, -1].round(3),
                         "instances": [len(b.features) for b in bags],
                         "instance scores": [tuple(s.shape) for s in pred["scores"]],
                         "top instance score": [float(s.max()) for s in pred["scores"]]})


def evidence_table(auc: pd.DataFrame, delong: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean AUC over folds [patient-level 95% CI] in every setting, then the patient-clustered
    DeLong p-value of 5x+MAGA against each other setting (pooled test predictions)."""
    def ci(v, lo, hi):
        return f"{v:.3f} [{lo:.3f}, {hi:.3f}]"

    cells = auc.assign(cell=[ci(*r) for r in auc[["auc_mean", "auc_ci_low", "auc_ci_high"]].to_numpy()])
    wide = cells.pivot(index="model", columns="setting", values="cell")
    wide = wide[list(dict.fromkeys(auc["setting"]))].reindex(list(dict.fromkeys(auc["model"]))).fillna("")
    maga = delong[delong["a"] == "5x+MAGA"] if len(delong) else delong
    for b in dict.fromkeys(maga["b"]) if len(maga) else []:
        p = maga[maga["b"] == b].set_index("model")["p_value"]
        wide[f"p: 5x+MAGA vs {b}"] = p.reindex(wide.index).map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    return wide.reset_index().rename_axis(columns=None)


def cohort_text(facts: dict, cfg: ExperimentConfig) -> str:
    """The cohort in words (chapter 04): slides, patients, folds, where the tiles came from, and the leak
    check of the MAGA student's training tiles (`experiment.cohort_facts`)."""
    import json

    f = facts
    text = (
        f"{f['slides']} slides of {f['patients']} patients in {f['folds']} patient-level folds: each fold tests "
        f"{' or '.join(map(str, f['test_slides_per_fold']))} slides of "
        f"{' or '.join(map(str, f['test_patients_per_fold']))} patients. The slides hold {f['tile_placements']} "
        f"tile placements ({f['placements_per_slide']} per slide, {f['lesion_placements']} of them lesion) of "
        f"{f['source_tiles']} distinct source tiles from the {', '.join(f['tile_splits'])} split(s), "
        f"{f['source_tiles_per_patient']} per patient, each placed in one of the 8 orientations of the square. ")
    if "student_tiles" in f:
        text += (f"The MAGA student trained on {f['student_tiles']} tiles, of which {f['student_tiles_on_slides']} "
                 "are on a slide.")
    return (text + f"\n\nTraining settings that differ from the papers' (per model; `*`: all): "
            f"`{json.dumps(cfg.train)}`. Chosen per fold on validation: `{json.dumps(cfg.candidates)}`.")


def maga_gain_text(tables: dict[str, pd.DataFrame]) -> str:
    """Per model, the mean AUC of 5x+MAGA and its difference to 5x, 5x upsampled and 20x, with the
    patient-clustered DeLong p of each difference (chapter 04's evidence tables), the recovered gap against
    both baselines and which one 5x+MAGA does not beat."""
    auc = tables["auc"].set_index(["model", "setting"])["auc_mean"]
    ci_low = tables["auc"].set_index(["model", "setting"])["auc_ci_low"]
    delong = tables["delong"]
    p_of = delong.set_index(["model", "a", "b"])["p_value"] if len(delong) else pd.Series(dtype=float)
    lines = []
    for m in dict.fromkeys(tables["auc"]["model"]):
        if (m, "5x+MAGA") not in auc.index:
            continue
        parts = []
        for b in ("5x", "5x upsampled", "20x"):
            if (m, b) in auc.index:
                p = p_of.get((m, "5x+MAGA", b))
                parts.append(f"{auc[m, '5x+MAGA'] - auc[m, b]:+.3f} against {b}"
                             + (f" (p = {p:.2g})" if p is not None else ""))
        rest = ", ".join(parts) if parts else "run at 5x+MAGA only (see the placement comparison)"
        both = from_settings({k: auc[m, k] for k in ("20x", "5x", "5x upsampled", "5x+MAGA") if (m, k) in auc.index}, m,
                             ci_low.get((m, "20x")))
        verdict = (f" Gap to 20x recovered: {fraction(both, 'plain')} against plain 5x, "
                   f"{fraction(both, 'upsampled')} against 5x upsampled; {baselines_text.verdict(both)}"
                   if both is not None else "")
        lines.append(f"* **{m}**: 5x+MAGA {auc[m, '5x+MAGA']:.3f}; {rest}.{verdict}")
    return ("Mean AUC of 5x+MAGA and its difference to each other setting (patient-clustered DeLong p on pooled "
            "predictions), and the recovered fraction of the gap to 20x against both baselines:\n\n"
            + "\n".join(lines))


def auc_bars(table: pd.DataFrame, title: str = "Mean AUC over folds (95% CI)") -> go.Figure:
    """Bars per model, one colour per setting, CI whiskers; the paper's figure as a grey diamond."""
    fig = go.Figure()
    for setting in dict.fromkeys(table["setting"]):
        sub = table[table["setting"] == setting]
        fig.add_trace(go.Bar(x=sub["model"], y=sub["auc_mean"], name=setting,
                             marker_color=viz.SETTING_COLORS.get(setting),
                             error_y=dict(type="data", symmetric=False, array=sub["auc_ci_high"] - sub["auc_mean"],
                                          arrayminus=sub["auc_mean"] - sub["auc_ci_low"], color="#444")))
    paper = table.dropna(subset=["paper_auc"])
    if len(paper):
        fig.add_trace(go.Scatter(x=paper["model"], y=paper["paper_auc"], mode="markers", name="paper",
                                 text=paper["setting"] + ": " + paper["paper_key"],
                                 marker=dict(symbol="diamond", size=11, color=viz.SETTING_COLORS["paper"])))
    fig.update_layout(title=title, barmode="group", yaxis_title="AUC", yaxis_range=[0, 1.05], height=460)
    return fig


def fold_boxes(root: str | Path, cfg: ExperimentConfig) -> go.Figure:
    """Per-fold test AUCs of every model x setting (the paper's box plots)."""
    return viz.box_plot(fold_aucs(root, cfg), title="Test AUC per fold", yaxis_title="AUC")


def bootstrap_boxes(root: str | Path, cfg: ExperimentConfig, model: str) -> go.Figure:
    """For one model: each fold's 500 resampled test AUCs, per setting (the paper's Fig. 2d-f)."""
    fig = go.Figure()
    for setting in cfg.settings:
        boot = load_results(cv_dir(root, cfg, setting, model))["bootstrap"]
        name = SETTINGS[setting]
        fig.add_trace(go.Box(x=boot["fold"].astype(str), y=boot["auc"], name=name, boxpoints=False,
                             marker_color=viz.SETTING_COLORS.get(name)))
    fig.update_layout(title=f"{model}: resampled test AUC per fold", boxmode="group", xaxis_title="fold",
                      yaxis_title="AUC", height=440)
    return fig


def roc_figure(root: str | Path, cfg: ExperimentConfig, model: str) -> go.Figure:
    """Mean ROC over folds with a band (2.5-97.5 percentile over folds), per setting, for one model."""
    curves = roc_curves(root, cfg, model)
    aucs = {SETTINGS[s]: fold_aucs(root, cfg)[f"{model} {SETTINGS[s]}"] for s in cfg.settings}
    return viz.roc_band(curves, aucs=aucs, title=f"{model}: ROC over folds")


def heatmaps(maps: dict[str, SlideMaps], thumbnail: np.ndarray, downsample: float, region: tuple | None = None,
             what: str = "scores") -> go.Figure:
    """One panel per setting: instance scores (normalised to [0, 1] per slide) or K-means clusters over
    the thumbnail; `region` (x0, y0, x1, y1 level-0) outlines the planted lesion."""
    names = list(maps)
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[
        f"{n} (p={maps[n].prob:.2f})" if what == "scores" else n for n in names], horizontal_spacing=0.02)
    for i, name in enumerate(names, start=1):
        m = maps[name]
        fig.add_trace(go.Image(source=viz.image_data_uri(thumbnail), hoverinfo="skip"), row=1, col=i)
        if what == "scores":
            v = m.scores.astype(float)
            v = (v - v.min()) / (np.ptp(v) or 1.0)
            trace = viz.heatmap_trace(m.coords, v, m.patch_size0, downsample, "score", "Inferno", (0, 1))
        else:
            k = int(m.clusters.max()) + 1
            trace = viz.heatmap_trace(m.coords, m.clusters, m.patch_size0, downsample, "cluster",
                                      categories=[str(j) for j in range(k)])
        trace.showscale = i == len(names)
        fig.add_trace(trace, row=1, col=i)
        if region is not None and region[0] >= 0:
            x0, y0, x1, y1 = (c / downsample for c in region)
            fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line=dict(color="#00FF7F", width=2),
                          row=1, col=i)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    fig.update_layout(height=380, margin=dict(l=10, r=10, t=50, b=10))
    return fig
