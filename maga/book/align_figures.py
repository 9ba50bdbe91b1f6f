"""Plotly figures and tables of the MAGA chapters (training curves, probe AUCs, similarities, t-SNE,
slide heatmaps). Built from the saved results and arrays, so a chapter only calls and shows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from maga.alignment.baselines import clear_gap, from_probe
from maga.book import viz
from maga.book.baselines_text import fraction, sentence

MODE_COLORS = {"native": viz.SETTING_COLORS["5x+MAGA"], "upsample": "#CC79A7"}
KIND_COLORS = {"teacher_20x": viz.SETTING_COLORS["20x"], "teacher_5x": viz.SETTING_COLORS["5x"],
               "teacher_5x_upsampled": "#E69F00", "maga_5x_native": MODE_COLORS["native"],
               "maga_5x_upsample": MODE_COLORS["upsample"]}
KIND_LABELS = {"teacher_20x": "20x teacher", "teacher_5x": "5x teacher (at 5x size)",
               "teacher_5x_upsampled": "5x teacher (upsampled)", "maga_5x_native": "5x+MAGA native",
               "maga_5x_upsample": "5x+MAGA upsample"}


def _label(kind: str) -> str:
    return KIND_LABELS.get(kind, kind)


def loss_curves(histories: dict[str, list[dict]], title: str = "MAGA training loss per epoch") -> go.Figure:
    """One panel per logged term (total, then the unweighted L1 of each tap), one line per mode."""
    terms = ["loss"] + sorted({k for h in histories.values() for k in h[0] if k.startswith("l1/")})
    fig = make_subplots(rows=1, cols=len(terms), subplot_titles=[
        "total (weighted)" if t == "loss" else t[3:] + " L1" for t in terms])
    for mode, hist in histories.items():
        epochs = [h["epoch"] for h in hist]
        for c, term in enumerate(terms, 1):
            fig.add_trace(go.Scatter(x=epochs, y=[h[term] for h in hist], mode="lines+markers", name=mode,
                                     legendgroup=mode, showlegend=c == 1,
                                     line=dict(color=MODE_COLORS.get(mode))), row=1, col=c)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title=title, height=360, margin=dict(t=80))
    return fig


def training_text(students: dict) -> str:
    """What this build's training did, in words (chapter 02), from each student's checkpoint history."""
    lines = []
    for mode, s in students.items():
        first, last = s.history[0], s.history[-1]
        pooled = s.loss_weights.get("pooled", 0.0) * last.get("l1/pooled", 0.0) / last["loss"]
        lines.append(
            f"- **{mode}**: {len(s.history)} epochs on {s.n_tiles} tiles (augmentation: {s.config['augment']}); "
            f"the weighted loss went from {first['loss']:.4g} (epoch 1) to {last['loss']:.4g}, of which the pooled "
            f"term is {pooled:.0%}; the pooled feature's L1 went from {first['l1/pooled']:.4f} to "
            f"{last['l1/pooled']:.4f}; {sum(h['seconds'] for h in s.history):.0f} s in all.")
    return "\n".join(lines)


def _scalar(x) -> float:
    """A float from a number or a (possibly graph-carrying) one-element tensor."""
    return float(x.detach()) if hasattr(x, "detach") else float(x)


def step_table(weights: dict[str, float], before: tuple, after: tuple) -> pd.DataFrame:
    """One batch's MAGA loss per tap before and after one optimiser step: the unweighted L1 of each tap,
    its weight, and the weighted total (`before`/`after`: what `train_step`/`batch_loss` return)."""
    (total_before, parts_before), (total_after, parts_after) = before, after
    rows = {tap: {"weight": w, "L1 before": _scalar(parts_before[tap]), "L1 after": _scalar(parts_after[tap])}
            for tap, w in weights.items()}
    rows["loss (weighted sum)"] = {"weight": float("nan"), "L1 before": _scalar(total_before),
                                   "L1 after": _scalar(total_after)}
    table = pd.DataFrame(rows).T
    return table.assign(change=table["L1 after"] - table["L1 before"])


def timing_table(histories: dict[str, list[dict]]) -> pd.DataFrame:
    return pd.DataFrame({mode: {"epochs": len(h), "seconds per epoch": np.mean([r["seconds"] for r in h]),
                                "first loss": h[0]["loss"], "last loss": h[-1]["loss"]}
                         for mode, h in histories.items()}).T


def auc_table(results: dict) -> pd.DataFrame:
    """Probe AUC [95% CI] per feature kind (rows) and task (columns)."""
    cols = {}
    for task, t in results["tasks"].items():
        cols[f"{task} (n test={t['n_test']})"] = {
            _label(k): f"{v['auc']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" for k, v in t["probe"].items()}
    return pd.DataFrame(cols)


def delong_table(results: dict) -> pd.DataFrame:
    rows = [{"task": task, "comparison": f"{_label(d['a'])} vs {_label(d['b'])}", "AUC a": d["auc_a"],
             "AUC b": d["auc_b"], "difference": d["diff"], "DeLong p": d["p_value"]}
            for task, t in results["tasks"].items() for d in t["delong"]]
    return pd.DataFrame(rows).round(4)


def cosine_table(results: dict) -> pd.DataFrame:
    rows = {}
    for task, t in results["tasks"].items():
        for key, name in (("cosine_to_20x", "raw"), ("cosine_centered_to_20x", "centred")):
            rows[f"{task} {name}"] = {_label(k): f"{v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"
                                      for k, v in t[key].items()}
    return pd.DataFrame(rows)


def recovery_table(results: dict) -> pd.DataFrame:
    """Per task, student and baseline (teacher at its size, teacher upsampled): the gap to 20x it closes,
    with the case/cluster bootstrap CI."""
    rows = []
    for task, t in results["tasks"].items():
        for student, per_baseline in t["recovered"].items():
            for baseline, r in per_baseline.items():
                high, low = t["probe"]["teacher_20x"], t["probe"][baseline]["auc"]
                rows.append({"task": task, "student": _label(student), "baseline": _label(baseline),
                             "20x AUC": high["auc"], "baseline AUC": low, "student AUC": t["probe"][student]["auc"],
                             "gap recovered": f"{r['value']:.0%} [{r['ci_low']:.0%}, {r['ci_high']:.0%}]"
                             if clear_gap(high["auc"], low, high["ci_low"]) else
                             f"no clear gap ({t['probe'][student]['auc'] - low:+.3f} AUC)"})
    return pd.DataFrame(rows).round(3)


def recovery_text(results: dict, flops: dict[str, int]) -> str:
    """What this build measured, in words (chapter 03): per task and student, the AUCs against both
    baselines and which one it does not beat, and the cost per tile (`flops`: forward FLOPs per tile for
    "native" and "upsample")."""
    m = f"{results['config']['mag']:g}x"
    secs = {mode: s["train_seconds"] for mode, s in results["students"].items()}
    lines = [f"- {sentence(from_probe(t, results['config']['mag'], mode, f'{task}, {mode} student'), 'MAGA')}"
             for task, t in results["tasks"].items() for mode in results["students"]]
    lines.append(
        f"- Cost: the native student needs {flops['native'] / 1e9:.3f} GFLOPs per tile, the upsample student and "
        f"the upsampled teacher {flops['upsample'] / 1e9:.3f} ({flops['upsample'] / flops['native']:.1f}x more, as "
        f"much as the teacher at 20x); training took "
        + ", ".join(f"{s:.0f} s ({mode})" for mode, s in secs.items()) + f" here, at {m}.")
    return "\n".join(lines)


def _point(v) -> float:
    """A bench value: a number, or [value, ci_low, ci_high] (records since cosines carry CIs)."""
    return v[0] if isinstance(v, list) else v


def ablation_table(path) -> pd.DataFrame:
    """The recorded `maga bench maga` runs (results/maga_ablation.json: {"runs": {name: bench JSON}}): per
    run and task, the loss setting, the native student's AUC against the teacher's (20x, 5x, 5x upsampled),
    and the gap recovered against each baseline (from the AUCs: the records predate per-baseline CIs)."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return pd.DataFrame({"note": [f"{path.name} not recorded in this checkout"]})
    rows = []
    for name, run in json.loads(path.read_text())["runs"].items():
        align = run["align_config"]["native"]
        for task, t in run["tasks"].items():
            kinds, a = t["auc"], from_probe(t, 5.0)
            rows.append({"run": name, "task": task, "augment": align["augment"],
                         "taps": "default" if align["taps"] is None else ", ".join(align["taps"]),
                         "pooled weight": align["pooled_weight"] or "default",
                         "epochs, lr decay": f"{align['epochs']}, {align['lr_decay']:g}",
                         "teacher 20x": kinds["teacher_20x"][0], "teacher 5x": kinds["teacher_5x"][0],
                         "MAGA native": kinds["maga_5x_native"][0],
                         "teacher 5x upsampled": kinds["teacher_5x_upsampled"][0],
                         **{f"gap recovered vs {b} teacher": fraction(a, b) for b in ("plain", "upsampled")},
                         "cosine to 20x (teacher 5x -> MAGA)":
                             f"{_point(t['cosine_to_20x']['teacher_5x']):.3f} -> "
                             f"{_point(t['cosine_to_20x']['maga_5x_native']):.3f}",
                         "train s": run["train_seconds"]["native"]})
    return pd.DataFrame(rows)


def selection_table(path) -> pd.DataFrame:
    """The recorded `maga bench maga-select` run (results/maga_selection.json): per candidate, the native
    student's validation AUC per task (mean over folds) beside the teacher's, the score that chose the
    defaults, and which candidate won."""
    import json
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return pd.DataFrame({"note": [f"{path.name} not recorded in this checkout"]})
    record = json.loads(path.read_text())
    rows = pd.DataFrame(record["rows"])
    means = rows.groupby(["candidate", "task"], sort=False)[["teacher_20x", "teacher_5x", "student"]].mean()
    table = means["student"].unstack("task").add_prefix("MAGA native AUC: ")
    teacher = means[["teacher_20x", "teacher_5x"]].groupby("task").first()
    for task, t in teacher.iterrows():
        table[f"teacher 20x / 5x: {task}"] = f"{t['teacher_20x']:.3f} / {t['teacher_5x']:.3f}"
    table["score (mean AUC)"] = pd.Series(record["score"])
    table["settings"] = [", ".join(f"{k}={v}" for k, v in record["candidates"][c].items()) or "(defaults then)"
                         for c in table.index]
    table["chosen"] = ["yes" if c == record["chosen"] else "" for c in table.index]
    return table.round(4)


def auc_figure(results: dict) -> go.Figure:
    tasks = list(results["tasks"])
    kinds = list(next(iter(results["tasks"].values()))["probe"])
    fig = go.Figure()
    for kind in kinds:
        vals = [results["tasks"][t]["probe"][kind] for t in tasks]
        fig.add_trace(go.Bar(
            x=tasks, y=[v["auc"] for v in vals], name=_label(kind), marker_color=KIND_COLORS.get(kind),
            error_y=dict(type="data", symmetric=False, array=[v["ci_high"] - v["auc"] for v in vals],
                         arrayminus=[v["auc"] - v["ci_low"] for v in vals], color="#444"),
            text=[f"{v['auc']:.3f}" for v in vals], textposition="outside", cliponaxis=False))
    fig.update_layout(title="Linear-probe AUC on held-out tiles (95% bootstrap CI)", barmode="group",
                      yaxis=dict(title="AUC", range=[0.4, 1.05]), height=460)
    return fig


def cosine_figure(arrays: dict, task: str, centred: bool = False) -> go.Figure:
    key = "cos_centered/" if centred else "cos/"
    values = {_label(k.split("/", 2)[2]): arrays[k] for k in arrays if k.startswith(f"{task}/{key}")}
    colors = {_label(k): c for k, c in KIND_COLORS.items()}
    return viz.box_plot(values, title=f"{task}: per-tile cosine similarity to the 20x feature"
                        + (" (centred)" if centred else ""), yaxis_title="cosine", colors=colors)


def tsne_figure(arrays: dict, task: str, kinds: list[str], seed: int = 0,
                classes: tuple[str, str] = ("adenocarcinoma", "squamous")) -> go.Figure:
    """t-SNE of the held-out tiles' features of several kinds embedded jointly (each kind standardised by
    the 20x teacher's statistics): colour = class, symbol = magnification / model."""
    from sklearn.manifold import TSNE

    sel = np.ones(len(arrays[f"{task}/label"]), dtype=bool)
    ref = arrays[f"{task}/features/teacher_20x"][sel]
    mu, sd = ref.mean(0), ref.std(0) + 1e-6
    feats = np.concatenate([(arrays[f"{task}/features/{k}"][sel] - mu) / sd for k in kinds])
    emb = TSNE(n_components=2, perplexity=float(min(30, max(5, len(feats) // 5))), random_state=seed,
               init="pca").fit_transform(feats)
    labels = np.tile(arrays[f"{task}/label"][sel], len(kinds))
    kind_of = np.repeat(kinds, sel.sum())
    fig = go.Figure()
    symbols = ["circle", "x", "diamond", "square", "triangle-up"]
    for j, kind in enumerate(kinds):
        for c, cname in enumerate(classes):
            m = (kind_of == kind) & (labels == c)
            fig.add_trace(go.Scatter(x=emb[m, 0], y=emb[m, 1], mode="markers", name=f"{_label(kind)} · {cname}",
                                     marker=dict(symbol=symbols[j % len(symbols)], size=7, opacity=0.8,
                                                 color=viz.PALETTE[c])))
    fig.update_layout(title=f"{task}: t-SNE of held-out tile features (colour = class, symbol = input)",
                      height=520, xaxis=dict(showticklabels=False), yaxis=dict(showticklabels=False))
    return fig


def similarity_maps(sim, zrange: tuple[float, float] = (0.0, 1.0)) -> go.Figure:
    """Side-by-side slide heatmaps of per-patch cosine(5x feature, 20x feature), one per setting."""
    names = list(sim.cosine)
    cols = 2 if len(names) % 2 == 0 else len(names)
    rows = len(names) // cols
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.02, vertical_spacing=0.06, subplot_titles=[
        f"{n}: mean {sim.cosine[n].mean():.2f}" for n in names])
    th, tw = sim.thumbnail.shape[:2]
    for i, name in enumerate(names):
        r, c = i // cols + 1, i % cols + 1
        fig.add_trace(go.Image(source=viz.image_data_uri(sim.thumbnail), hoverinfo="skip"), row=r, col=c)
        trace = viz.heatmap_trace(sim.coords, sim.cosine[name], sim.patch_size0, sim.downsample,
                                  value_name="cosine", colorscale="Viridis", zrange=zrange, opacity=0.7)
        trace.update(showscale=i == 0)
        fig.add_trace(trace, row=r, col=c)
        fig.update_xaxes(range=[-0.5, tw - 0.5], row=r, col=c)
        fig.update_yaxes(range=[th - 0.5, -0.5], scaleanchor=f"x{'' if i == 0 else i + 1}", row=r, col=c)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(title=f"{sim.slide}: similarity of {sim.mag:g}x patch features to 20x features",
                      height=int(rows * 420 * th / max(tw, 1) * 2 / cols) + 120)
    return fig
