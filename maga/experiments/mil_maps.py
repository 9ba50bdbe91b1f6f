"""Chapter 5's reading of the evidence run: per-patch instance scores and feature clusters of one slide in
every setting, and how well the scores find the lesion planted in a slide of the tile cohort."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from maga_core.data.features import read_features
from maga_core.errors import MagaError
from maga_core.mil.cv import load_results
from maga_core.mil.train import load_checkpoint, torch_threads
from maga_core.slides import mpp_for_mag
from maga.experiments.mil import SETTINGS, ExperimentConfig, cv_dir
from maga.experiments.tile_slides import load_cohort


@dataclass
class SlideMaps:
    """Per-patch maps of one slide in one setting: coords, instance scores, K-means cluster ids."""

    slide: str
    setting: str
    coords: np.ndarray
    scores: np.ndarray
    clusters: np.ndarray
    prob: float
    label: int
    patch_size0: int


MIN_OVERLAP = 0.25  # share of a patch's square on the lesion for the patch to count as lesion


def fold_model(root: str | Path, cfg: ExperimentConfig, setting: str, model: str, slide: str
               ) -> tuple[int, Path, pd.Series]:
    """The fold whose test part held `slide`, that fold's checkpoint and the slide's prediction row."""
    where = cv_dir(root, cfg, setting, model)
    pred = load_results(where)["predictions"]
    row = pred.loc[pred["slide"] == slide]
    if row.empty:
        raise MagaError(f"slide {slide!r} was never tested", where)
    fold = int(row["fold"].iloc[0])
    return fold, where / f"fold_{fold:02d}" / "checkpoint.pt", row.iloc[0]


def patch_size0(attrs) -> int:
    """A feature file's patch side in level-0 pixels (its patch_px at its magnification, on the slide's mpp)."""
    return int(round(float(attrs["patch_px"]) * mpp_for_mag(float(attrs["magnification"])) / float(attrs["mpp"])))


def lesion_tiles(cohort, slide: str) -> pd.DataFrame:
    """The carcinoma tiles planted in one slide of the cohort (their level-0 boxes x, y, w, h)."""
    tiles = cohort.tiles
    return tiles[(tiles["slide"] == slide) & (tiles["role"] == "lesion")]


def slide_maps(root: str | Path, cfg: ExperimentConfig, slide: str, model: str = "gltrans", k: int = 4,
               seed: int = 0) -> dict[str, SlideMaps]:
    """Instance scores from the fold model that tested `slide`, and K-means (k) clusters of its patch
    features, in every setting. Cluster ids are matched to the 20x clustering (Hungarian on overlap)
    so that one colour means the same group of patches across settings."""
    import torch
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans

    root = Path(root)
    maps: dict[str, SlideMaps] = {}
    ref: np.ndarray | None = None
    for setting in cfg.settings:
        _, checkpoint, row = fold_model(root, cfg, setting, model, slide)
        net, tcfg = load_checkpoint(checkpoint)
        ff = read_features(root / "features" / setting / f"{slide}.h5")
        with torch_threads(tcfg.threads):
            out = net(torch.from_numpy(ff.features), coords=torch.from_numpy(ff.coords))
            scores = out.scores
        clusters = KMeans(n_clusters=min(k, len(ff)), n_init=10, random_state=seed).fit_predict(ff.features)
        if ref is None:
            ref, ref_coords = clusters, ff.coords
        elif np.array_equal(ff.coords, ref_coords):
            overlap = np.zeros((k, k))
            np.add.at(overlap, (clusters, ref), 1)
            rows, cols = linear_sum_assignment(-overlap)
            mapping = np.empty(k, dtype=int)
            mapping[rows] = cols
            clusters = mapping[clusters]
        maps[SETTINGS[setting]] = SlideMaps(slide, SETTINGS[setting], ff.coords, scores.detach().numpy(), clusters,
                                            float(row["prob_1"]), int(row["label"]), patch_size0(ff.attrs))
    return maps


def lesion_fraction(coords: np.ndarray, patch_size0: int, lesion_tiles: pd.DataFrame) -> np.ndarray:
    """Share of each patch's square covered by the slide's lesion tiles (cohort manifest geometry)."""
    frac = np.zeros(len(coords))
    for t in lesion_tiles.itertuples():
        ox = np.clip(np.minimum(coords[:, 0] + patch_size0, t.x + t.w) - np.maximum(coords[:, 0], t.x), 0, None)
        oy = np.clip(np.minimum(coords[:, 1] + patch_size0, t.y + t.h) - np.maximum(coords[:, 1], t.y), 0, None)
        frac += ox * oy
    return frac / float(patch_size0) ** 2


def lesion_localisation(root: str | Path, cfg: ExperimentConfig, model: str = "gltrans", k: int = 4,
                        max_slides: int | None = None, min_overlap: float = MIN_OVERLAP) -> pd.DataFrame:
    """How well instance scores find the planted lesion: per lesion slide and setting, the AUC of the
    scores for patches covering >= `min_overlap` lesion versus the rest (0.5 = no better than chance)."""
    from sklearn.metrics import roc_auc_score

    cohort = load_cohort(Path(root) / "cohort")
    pos = cohort.slides[cohort.slides["label"] == 1]["slide"].tolist()[:max_slides]
    rows = []
    for slide in pos:
        lesion = lesion_tiles(cohort, slide)
        for setting, m in slide_maps(root, cfg, slide, model, k).items():
            inside = lesion_fraction(m.coords, m.patch_size0, lesion) >= min_overlap
            auc = roc_auc_score(inside, m.scores) if 0 < inside.sum() < len(inside) else float("nan")
            rows.append({"slide": slide, "setting": setting, "lesion_patches": int(inside.sum()),
                         "patches": len(inside), "instance_auc": auc, "slide_prob": m.prob})
    return pd.DataFrame(rows)
