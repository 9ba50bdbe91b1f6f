"""The magnification curve of `maga bench maga --mags` (results/maga_mags.json): where the teacher loses
most against 20x, and what each student recovers there against both baselines. One table, one figure
(AUC and cosine to 20x against magnification, with the bench's case/cluster bootstrap CIs)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from maga.alignment.baselines import from_probe
from maga.book import viz
from maga.book.baselines_text import STUDENTS

# Kinds at magnification m, by the role they play in the curve.
ROLES = {"teacher_20x": "teacher 20x", "teacher_{m}": "teacher (plain)",
         "teacher_{m}_upsampled": "teacher upsampled", "maga_{m}_native": "MAGA native",
         "maga_{m}_upsample": "MAGA upsample"}
COLORS = {"teacher 20x": viz.SETTING_COLORS["20x"], "teacher (plain)": viz.SETTING_COLORS["5x"],
          "teacher upsampled": viz.SETTING_COLORS["5x upsampled"], "MAGA native": viz.SETTING_COLORS["5x+MAGA"],
          "MAGA upsample": "#CC79A7"}


def load(path: str | Path) -> dict | None:
    """The record, or None when this checkout has not recorded it."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def _rows(record: dict) -> list[dict]:
    """One row per (task, magnification, role): AUC and cosine to 20x with their CIs."""
    rows = []
    for mag, run in record["mags"].items():
        m = f"{float(mag):g}x"
        for task, t in run["tasks"].items():
            for pattern, role in ROLES.items():
                kind = pattern.format(m=m)
                if kind not in t["auc"]:
                    continue
                cos = t["cosine_to_20x"].get(kind, [1.0, 1.0, 1.0])  # the 20x teacher is its own reference
                rows.append({"task": task, "mag": float(mag), "px": t["px"][m], "role": role,
                             "auc": t["auc"][kind][0], "auc_lo": t["auc"][kind][1], "auc_hi": t["auc"][kind][2],
                             "cos": cos[0], "cos_lo": cos[1], "cos_hi": cos[2]})
    return rows


def curve_table(record: dict | None) -> pd.DataFrame:
    """Per task and magnification: AUC [95% CI] of each kind, the teacher's loss against 20x, and each
    student's recovered gap against both baselines."""
    if record is None:
        return pd.DataFrame({"note": ["maga_mags.json is not recorded in this checkout"]})
    out = []
    for mag, run in record["mags"].items():
        m = f"{float(mag):g}x"
        for task, t in run["tasks"].items():
            row = {"task": task, "magnification": m, "view px": t["px"][m]}
            for pattern, role in ROLES.items():
                v = t["auc"].get(pattern.format(m=m))
                if v is not None:
                    row[f"AUC {role}"] = f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"
            for mode in STUDENTS:
                if f"maga_{m}_{mode}" not in t["auc"]:
                    continue
                a = from_probe(t, float(mag), mode)
                row["20x - plain"] = round(a.high - a.plain, 3)
                for b, kind in (("plain", f"teacher_{m}"), ("upsampled", f"teacher_{m}_upsampled")):
                    r = t["recovered_fraction"][f"maga_{m}_{mode}"][kind]
                    row[f"{mode}: gap recovered vs {b}"] = (f"no clear gap ({a.difference(b):+.3f} AUC)"
                                                            if a.recovered(b) is None
                                                            else f"{r[0]:.0%} [{r[1]:.0%}, {r[2]:.0%}]")
            out.append(row)
    return pd.DataFrame(out).sort_values(["task", "magnification"], key=lambda c: c if c.name == "task" else
                                         c.str.rstrip("x").astype(float), ascending=[True, False])


def curve_figure(record: dict | None) -> go.Figure:
    """AUC (top) and raw cosine to the 20x feature (bottom) against magnification, one column per task,
    one line per kind, CI whiskers."""
    fig = go.Figure()
    if record is None:
        return fig.update_layout(title="maga_mags.json is not recorded in this checkout")
    table = pd.DataFrame(_rows(record))
    tasks = list(dict.fromkeys(table["task"]))
    fig = make_subplots(rows=2, cols=len(tasks), shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[*(f"{t}: probe AUC" for t in tasks), *(f"{t}: cosine to 20x" for t in tasks)])
    for c, task in enumerate(tasks, 1):
        for role in ROLES.values():
            sub = table[(table["task"] == task) & (table["role"] == role)].sort_values("mag")
            if sub.empty:
                continue
            for r, key in ((1, "auc"), (2, "cos")):
                fig.add_trace(go.Scatter(
                    x=sub["mag"], y=sub[key], mode="lines+markers", name=role, legendgroup=role,
                    showlegend=c == 1 and r == 1, line=dict(color=COLORS[role], dash="dot" if role == "teacher 20x"
                                                           else None),
                    error_y=dict(type="data", symmetric=False, array=sub[f"{key}_hi"] - sub[key],
                                 arrayminus=sub[key] - sub[f"{key}_lo"])), row=r, col=c)
    mags = sorted(table["mag"].unique())
    fig.update_xaxes(type="log", tickvals=mags, ticktext=[f"{m:g}x" for m in mags], title_text="magnification",
                     row=2)
    fig.update_yaxes(title_text="AUC (95% CI)", row=1, col=1)
    fig.update_yaxes(title_text="cosine (95% CI)", row=2, col=1)
    fig.update_layout(title="Held-out probe AUC and cosine to 20x against the student's magnification",
                      height=640)
    return fig
