"""Choosing MAGA's training settings without looking at the test tiles.

Each candidate (AlignConfig fields that differ from the defaults) trains a native student on two of the three
validation folds of the train splits (data.tiles.select_split: "fitK") and is probed, exactly as
`maga bench maga` probes the test split, on the third ("valK"), for both tasks. The candidate with the
highest student AUC, averaged over folds and tasks, is the one to make the default; the test split is then
scored once, with `maga bench maga`. The teacher's AUCs do not depend on the candidate, so the highest AUC
is also the largest recovered share of the 20x-vs-5x gap on the validation tiles.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from maga_core.align.train import AlignConfig
from maga_core.data.tiles import VALIDATION_FOLDS
from maga.alignment.ensure import DEFAULT_TILES
from maga.alignment.probe import ProbeConfig, run_probe_study

# Settings tried (AlignConfig fields, "epochs" included; the rest at AlignConfig's defaults). The recorded
# run (results/maga_selection.json) chose "30 epochs, lr x0.95", which became the default.
_BEFORE = {"epochs": 15, "lr_decay": 0.9}  # the defaults the other candidates were varied from
CANDIDATES: dict[str, dict[str, Any]] = {
    "defaults": _BEFORE,
    "pooled x200": {**_BEFORE, "pooled_weight": 200.0},
    "pooled x10": {**_BEFORE, "pooled_weight": 10.0},
    "lr 3e-4": {**_BEFORE, "lr": 3e-4},
    "30 epochs, lr x0.95": {"epochs": 30, "lr_decay": 0.95},
    "rotations and flips": {**_BEFORE, "augment": "dihedral"},
}


def fold_config(settings: dict[str, Any], fold: int, teacher: str = "efficientnet_lite0",
                max_train_tiles: int | None = None, max_tiles_per_class: int | None = None,
                n_boot: int = 200) -> ProbeConfig:
    """The probe study of one candidate on one validation fold: trained on fitK, scored on valK."""
    align = dict(settings)
    epochs = align.pop("epochs", AlignConfig().epochs)
    tiles = [f"{source.partition(':')[0]}:fit{fold}" for source in DEFAULT_TILES]
    return ProbeConfig(teacher=teacher, train_tiles=tiles, eval_split=f"val{fold}", epochs_native=epochs,
                       modes=["native"], align=align, max_train_tiles=max_train_tiles,
                       max_tiles_per_class=max_tiles_per_class, n_boot=n_boot)


def run_selection(runs: Path, candidates: dict[str, dict[str, Any]] | None = None, folds: int = VALIDATION_FOLDS,
                  progress: bool = True, **kw) -> dict[str, Any]:
    """Per candidate, fold and task: validation AUCs, recovered fraction, centred cosine; and the winner.
    Students and per-fold results are cached under <runs>/maga_select, so an interrupted run resumes."""
    candidates = CANDIDATES if candidates is None else candidates
    rows = []
    for name, settings in candidates.items():
        for fold in range(folds):
            cfg = fold_config(settings, fold, **kw)
            out = Path(runs) / "maga_select" / name.replace(" ", "_").replace(",", "") / f"fold{fold}"
            res = run_probe_study(cfg, runs, out_dir=out, progress=progress)
            student = res["students"]["native"]
            for task, t in res["tasks"].items():
                probe = t["probe"]
                rows.append({"candidate": name, "fold": fold, "task": task, "n_val": t["n_test"],
                             "teacher_20x": probe["teacher_20x"]["auc"], "teacher_5x": probe["teacher_5x"]["auc"],
                             "student": probe["maga_5x_native"]["auc"],
                             "recovered": t["recovered"]["maga_5x_native"]["value"],
                             "cosine_centered": t["cosine_centered_to_20x"]["maga_5x_native"]["value"],
                             "train_seconds": student["train_seconds"]})
    table = pd.DataFrame(rows)
    score = table.groupby("candidate", sort=False)["student"].mean()
    return {"candidates": candidates, "folds": folds, "criterion": "mean validation AUC of the native student",
            "score": score.round(4).to_dict(), "chosen": str(score.idxmax()), "rows": table.to_dict("records")}
