"""Tile collections from the manifests as one table: path, label, split, group, source.

LC25000 carries no split upstream; one is derived here, stratified by class and grouped by
near-duplicate cluster, with a fixed seed, so that every chapter holds out the same clusters. Settings are
chosen on validation folds of the train split (`select_split`: "valK" / "fitK"), never on the test split.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from maga_core.data import manifests

SOURCES = {"uni_tcga_luadlusc": "tcga", "lc25000_lung_224_dedup": "lc25000"}
# One vocabulary for the two collections that both hold the two carcinoma subtypes.
CANONICAL_LABEL = {"LUAD": "adenocarcinoma", "LUSC": "squamous", "lung_aca": "adenocarcinoma",
                   "lung_scc": "squamous", "lung_n": "benign"}
LC25000_TEST_FRACTION = 0.25
SPLIT_SEED = 2024
VALIDATION_FOLDS = 3  # of the train split, grouped and stratified like the test split


def tile_table(dataset: str) -> pd.DataFrame:
    """All image tiles of a tile dataset, fetched and verified; one row per tile."""
    manifest = manifests.load(dataset)
    rows = [
        {"path": str(manifests.fetch(dataset, f.path)), "relpath": f.path, "label": f.meta["label"],
         "split": f.meta.get("split", ""), "group": str(f.meta.get("group", f.path)),
         "source": SOURCES.get(dataset, dataset)}
        for f in manifest.files if "label" in f.meta
    ]
    df = pd.DataFrame(rows)
    df["class"] = df["label"].map(CANONICAL_LABEL).fillna(df["label"])
    if (df["split"] == "").all():
        df["split"] = _grouped_split(df)
    df["val_fold"] = _validation_folds(df)
    return df


def select_split(table: pd.DataFrame, name: str) -> pd.DataFrame:
    """Rows of one split: "train", "test", or a validation fold of the train split, "valK" (fold K) or
    "fitK" (the train split without fold K), K < VALIDATION_FOLDS."""
    if name in set(table["split"]):
        return table[table["split"] == name]
    kind, k = name[:3], name[3:]
    if kind not in ("val", "fit") or not k.isdigit() or int(k) >= VALIDATION_FOLDS:
        raise ValueError(f"no split {name!r} (has {sorted(set(table['split']))}, "
                         f"val0..val{VALIDATION_FOLDS - 1}, fit0..fit{VALIDATION_FOLDS - 1})")
    fold = table["val_fold"] == int(k)
    return table[fold] if kind == "val" else table[(table["split"] == "train") & ~fold]


def _grouped_split(df: pd.DataFrame) -> pd.Series:
    """Hold out LC25000_TEST_FRACTION of the groups of each class (seeded, deterministic)."""
    rng = np.random.default_rng(SPLIT_SEED)
    split = pd.Series("train", index=df.index)
    for _, sub in df.groupby("label", sort=True):
        groups = np.array(sorted(sub["group"].unique()))
        rng.shuffle(groups)
        test = set(groups[: int(round(len(groups) * LC25000_TEST_FRACTION))])
        split[sub.index[sub["group"].isin(test)]] = "test"
    return split


def _validation_folds(df: pd.DataFrame) -> pd.Series:
    """Fold 0..VALIDATION_FOLDS-1 of each train tile (-1 for others): the groups of each class dealt in
    turn after a seeded shuffle, so every fold holds cases of both classes and a case stays in one fold."""
    rng = np.random.default_rng(SPLIT_SEED + 1)
    fold = pd.Series(-1, index=df.index)
    train = df[df["split"] == "train"]
    for _, sub in train.groupby("class", sort=True):
        groups = np.array(sorted(sub["group"].unique()))
        rng.shuffle(groups)
        for i, g in enumerate(groups):
            fold[sub.index[sub["group"] == g]] = i % VALIDATION_FOLDS
    return fold
