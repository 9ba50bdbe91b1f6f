"""Tile collections from the manifests as one table: path, label, split, group, source.

LC25000 carries no split upstream; one is derived here, stratified by class and grouped by
near-duplicate cluster, with a fixed seed, so that every chapter holds out the same clusters.
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
    return df


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
