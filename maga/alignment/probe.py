"""The real-data MAGA report: does a student trained at 5x give features as useful as the teacher's at 20x?

MAGA students (both modes) are trained without labels on tiles that are never evaluated (LC25000 train
split + TCGA train split). Evaluation uses only the held-out test splits of two real tasks (TCGA LUAD vs
LUSC: 60 tiles of 6 cases; LC25000 adenocarcinoma vs squamous: held-out near-duplicate clusters): a
logistic-regression probe is cross-validated within the held-out tiles (folds by case / cluster, the same
folds for every kind of feature, repeated with new folds and averaged, since one split of a few dozen tiles
moves an AUC by several points), so nothing the probe or the student was fitted on is scored. Kinds: the
teacher at 20x, the teacher on the 5x view (at its size, and resized back to the teacher's), and the two
students. AUCs carry 95% CIs from a bootstrap over cases (TCGA) or clusters (LC25000), paired across kinds,
which also gives the CIs of each student's recovered fraction of the gap to 20x against both baselines (the
teacher at 5x size, and upsampled: the same pixels at 16 times the compute); DeLong tests (on the per-tile scores
averaged over repeats) are clustered the same way. Cosine similarity of each 5x feature to the teacher's 20x feature of the same tile is reported raw and
centred on the mean held-out 20x feature (post-ReLU features share a large positive mean).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from maga_core import stats
from maga_core.align.student import load_student
from maga_core.align.tilesource import read_tile
from maga_core.align.train import AlignConfig, make_pipeline
from maga_core.align.views import view_at_mag
from maga_core.config import atomic_path, save_config, to_jsonable, write_json
from maga_core.data.tiles import select_split, tile_table
from maga_core.encoders import build
from maga.alignment.ensure import DEFAULT_TILES, DEFAULT_TILE_MPP, ensure_student

TASKS = {
    "tcga_luad_vs_lusc": "uni_tcga_luadlusc",
    "lc25000_aca_vs_scc": "lc25000_lung_224_dedup",
}
CLASSES = ("adenocarcinoma", "squamous")  # label 0, 1
ASSUMPTIONS = [
    "TCGA tiles (256 px, ~0.5 um/px by eye) are 20x; their 5x view is 64 px.",
    "LC25000 224 px copies: scale undocumented; taken as 0.5 um/px (20x, as `maga align --mpp 0.5` does), so "
    "their 5x view is 56 px.",
    "Views at every magnification come from `views.view_at_mag`, the resampling `maga extract` applies to tile "
    "folders: training and evaluation see the same pixels.",
    "MAGA training tiles: LC25000 train split (all three classes, labels unused) + TCGA train split; the probe "
    "is cross-validated within the test splits only.",
    "CIs resample TCGA cases (6) or LC25000 near-duplicate clusters, not tiles.",
]


@dataclass
class ProbeConfig:
    teacher: str = "efficientnet_lite0"
    mag: float = 5.0
    train_tiles: list[str] = field(default_factory=lambda: list(DEFAULT_TILES))
    tile_mpp: float = DEFAULT_TILE_MPP
    max_train_tiles: int | None = None
    epochs_native: int = AlignConfig.epochs
    epochs_upsample: int = AlignConfig.epochs
    batch_size: int = 32
    seed: int = 512
    n_boot: int = 500
    probe_c: float = 1.0  # inverse L2 strength of the logistic regression (standardised features)
    probe_folds: int = 5  # at most; fewer when a class has fewer cases
    probe_repeats: int = 10  # repeated cross-validation (new folds each time): AUCs are means over repeats
    max_tiles_per_class: int | None = None  # per class (smoke runs); None: all held-out tiles
    batch_infer: int = 32
    modes: list[str] = field(default_factory=lambda: ["native", "upsample"])  # students to train and probe
    eval_split: str = "test"  # "valK" (with train_tiles "...:fitK") when choosing settings (maga.alignment.select)
    align: dict = field(default_factory=dict)  # other AlignConfig fields (ablations: augment, taps, ...)


def ensure_students(cfg: ProbeConfig, runs: Path, progress: bool = True) -> dict[str, Path]:
    """The native and upsample students of this configuration (trained once, cached under `runs`)."""
    return {mode: ensure_student(runs, cfg.teacher, cfg.mag, mode, cfg.train_tiles,
                                 cfg.epochs_native if mode == "native" else cfg.epochs_upsample,
                                 cfg.batch_size, cfg.seed, cfg.max_train_tiles, progress=progress,
                                 tile_mpp=cfg.tile_mpp, **cfg.align)
            for mode in cfg.modes}


def feature_kinds(mag: float) -> dict[str, str]:
    m = f"{mag:g}x"
    return {
        "teacher_20x": "teacher on the 20x tile",
        f"teacher_{m}": f"teacher on the {m} view at its size, no MAGA",
        f"teacher_{m}_upsampled": f"teacher on the {m} view resized back to the 20x size, no MAGA",
        f"maga_{m}_native": f"MAGA student (native) on the {m} view",
        f"maga_{m}_upsample": f"MAGA student (upsample) on the {m} view resized to the 20x size",
    }


def task_tiles(dataset: str, cfg: ProbeConfig):
    """The evaluated tiles of the two classes: the held-out test split, or a validation fold."""
    table = select_split(tile_table(dataset), cfg.eval_split)
    table = table[table["class"].isin(CLASSES)].reset_index(drop=True)
    if cfg.max_tiles_per_class is not None:  # seeded, round-robin over cases so each class keeps several
        table = table.sample(frac=1.0, random_state=cfg.seed)
        table = table.assign(_turn=table.groupby("group").cumcount()).sort_values(["_turn", "group"])
        table = table.groupby("class").head(cfg.max_tiles_per_class).drop(columns="_turn").sort_index()
        table = table.reset_index(drop=True)
    return table


def tile_views(table, cfg: ProbeConfig, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """uint8 20x and `cfg.mag` views [N,h,w,3] of a task's tiles (`views.view_at_mag`, as training)."""
    tiles = [read_tile(p) for p in tqdm(table["path"], desc="read tiles", disable=not progress, leave=False)]
    return (np.stack([view_at_mag(t, cfg.tile_mpp, 20.0) for t in tiles]),
            np.stack([view_at_mag(t, cfg.tile_mpp, cfg.mag) for t in tiles]))


def task_labels(table) -> tuple[np.ndarray, np.ndarray]:
    """Labels (1 = squamous) and the groups (cases or clusters) the probe's folds keep whole."""
    return (table["class"] == CLASSES[1]).to_numpy().astype(int), table["group"].to_numpy().astype(str)


def encode(encoder, prepare, patches: np.ndarray, batch: int = 32) -> np.ndarray:
    """Pooled features [N, D] of uint8 patches [N, h, w, 3] through `prepare` (uint8 batch -> tensor)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(patches), batch):
            out.append(encoder(prepare(patches[i:i + batch])).float().numpy())
    return np.concatenate(out)


def compute_features(cfg: ProbeConfig, teacher, students: dict, high: np.ndarray, low: np.ndarray) -> dict:
    m = f"{cfg.mag:g}x"
    up = make_pipeline(AlignConfig(teacher=cfg.teacher, mag=cfg.mag, mode="upsample"), teacher.spec)
    feats = {
        "teacher_20x": encode(teacher, teacher.transform, high, cfg.batch_infer),
        f"teacher_{m}": encode(teacher, teacher.transform, low, cfg.batch_infer),
        f"teacher_{m}_upsampled": encode(teacher, up, low, cfg.batch_infer),  # the upsample student's resize
    }
    feats.update({f"maga_{m}_{mode}": encode(s, s.prepare, low, cfg.batch_infer) for mode, s in students.items()})
    return feats


def probe_folds(y: np.ndarray, groups: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep each case (group) whole; as many as the rarer class has cases."""
    from sklearn.model_selection import StratifiedGroupKFold

    per_class = min(len(set(groups[y == c])) for c in (0, 1))
    k = min(n_folds, per_class)
    if k < 2:
        raise ValueError(f"need at least 2 cases per class for a cross-validated probe, got {per_class}")
    return list(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(y, y, groups))


def probe_scores(x: np.ndarray, y: np.ndarray, folds, c: float) -> np.ndarray:
    """Out-of-fold positive-class probabilities of a standardised L2 logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = np.zeros(len(y))
    for tr, te in folds:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
        out[te] = model.fit(x[tr], y[tr]).predict_proba(x[te])[:, 1]
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return (a * b).sum(axis=1)


def _interval(point: float, samples: np.ndarray) -> dict[str, float]:
    lo, hi = np.nanquantile(samples, [0.025, 0.975])
    return {"value": float(point), "ci_low": float(lo), "ci_high": float(hi)}


MIN_GAP = 0.01  # AUC a baseline must lose against 20x for a recovered fraction to mean anything


def recovered_fraction(student: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(student - low) / (high - low): 1 = the whole gap between a baseline (`low`: the teacher on the
    low-magnification view at its size, or upsampled) and the 20x teacher recovered, 0 = no better than the
    baseline, negative = worse; NaN where the baseline is less than MIN_GAP AUC below 20x (no gap)."""
    gap = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gap >= MIN_GAP, (student - low) / gap, np.nan)


def evaluate_task(cfg: ProbeConfig, feats: dict[str, np.ndarray], y: np.ndarray, groups: np.ndarray
                  ) -> tuple[dict, dict]:
    """Probe AUCs, recovered fractions, clustered DeLong tests and cosine similarities of one task; also
    the per-tile arrays."""
    m = f"{cfg.mag:g}x"
    repeats = [probe_folds(y, groups, cfg.probe_folds, cfg.seed + r) for r in range(cfg.probe_repeats)]
    counts = stats.cluster_counts(y, groups, cfg.n_boot, cfg.seed)  # one set of replicates for every kind
    scores, aucs, samples = {}, {}, {}
    for kind, x in feats.items():
        runs = [probe_scores(x, y, folds, cfg.probe_c) for folds in repeats]
        scores[kind] = np.mean(runs, axis=0)  # per-tile score averaged over repeats (DeLong, figures)
        aucs[kind] = float(np.mean([stats.auc(y, r) for r in runs]))
        samples[kind] = np.mean([stats.metrics_of_counts(y, np.stack([1 - r, r], axis=1), counts)["auc"]
                                 for r in runs], axis=0)
    probe = {k: {"auc": aucs[k], **{f"ci_{e}": v for e, v in zip(("low", "high"),
                                                                   np.nanquantile(samples[k], [0.025, 0.975]))}}
             for k in feats}
    baselines = (f"teacher_{m}", f"teacher_{m}_upsampled")
    students = [k for k in (f"maga_{m}_native", f"maga_{m}_upsample") if k in feats]
    recovered = {s: {b: _interval(float(recovered_fraction(np.array(aucs[s]), np.array(aucs[b]),
                                                           np.array(aucs["teacher_20x"]))),
                                  recovered_fraction(samples[s], samples[b], samples["teacher_20x"]))
                     for b in baselines}
                 for s in students}
    delong = []
    for a, b in [(s, b) for s in students for b in (*baselines, "teacher_20x")]:
        r = stats.delong_test(y, scores[a], scores[b], groups=groups)
        delong.append({"a": a, "b": b, "auc_a": r.auc_a, "auc_b": r.auc_b, "diff": r.auc_a - r.auc_b,
                       "p_value": r.p_value})
    ref = feats["teacher_20x"]
    centre = ref.mean(axis=0)
    weights = counts / counts.sum(axis=1, keepdims=True)
    cos, cos_c, per_tile = {}, {}, {}
    for kind, x in feats.items():
        if kind == "teacher_20x":
            continue
        raw, cen = cosine(x, ref), cosine(x - centre, ref - centre)
        cos[kind] = _interval(raw.mean(), weights @ raw)
        cos_c[kind] = _interval(cen.mean(), weights @ cen)
        per_tile[f"cos/{kind}"], per_tile[f"cos_centered/{kind}"] = raw, cen
    per_tile.update({f"score/{k}": v for k, v in scores.items()})
    summary = {"n_test": len(y), "n_cases": len(set(groups)), "probe_folds": len(repeats[0]),
               "probe_repeats": len(repeats),
               "n_test_per_class": {c: int((y == i).sum()) for i, c in enumerate(CLASSES)},
               "probe": probe, "recovered": recovered, "delong": delong,
               "cosine_to_20x": cos, "cosine_centered_to_20x": cos_c}
    return summary, per_tile


def run_probe_study(cfg: ProbeConfig | None, runs: Path, out_dir: str | Path | None = None, force: bool = False,
                    progress: bool = True) -> dict:
    """Train (or reuse) the students, compute features, write results.json + config.json + features.npz.

    Students live under `runs`, results under `out_dir` (default <runs>/maga_probe). An existing
    results.json made with the same configuration and students is returned without recomputation."""
    cfg = cfg or ProbeConfig()
    out = Path(out_dir) if out_dir else Path(runs) / "maga_probe"
    results_path = out / "results.json"
    t0 = time.perf_counter()
    paths = ensure_students(cfg, runs, progress)
    students = {mode: load_student(p) for mode, p in paths.items()}
    if results_path.is_file() and not force:
        saved = json.loads(results_path.read_text())
        if saved.get("config") == to_jsonable(cfg) and all(
                saved["students"][m]["sha256"] == s.sha256 for m, s in students.items()):
            return saved
    teacher = build(cfg.teacher).eval()

    results = {"config": to_jsonable(cfg), "kinds": feature_kinds(cfg.mag), "assumptions": ASSUMPTIONS,
               "students": {mode: {"checkpoint": str(p), "sha256": students[mode].sha256,
                                   "align_config": students[mode].config,
                                   "epochs": len(students[mode].history),
                                   "final_loss": students[mode].history[-1]["loss"],
                                   "train_seconds": round(sum(h["seconds"] for h in students[mode].history), 1),
                                   "teacher": students[mode].teacher}
                            for mode, p in paths.items()},
               "tasks": {}}
    arrays = {}
    for task, dataset in TASKS.items():
        table = task_tiles(dataset, cfg)
        high, low = tile_views(table, cfg, progress)
        feats = compute_features(cfg, teacher, students, high, low)
        y, groups = task_labels(table)
        summary, per_tile = evaluate_task(cfg, feats, y, groups)
        results["tasks"][task] = {"dataset": dataset, "px": {"20x": high.shape[1], f"{cfg.mag:g}x": low.shape[1]},
                                  **summary}
        arrays.update({f"{task}/features/{k}": v for k, v in feats.items()})
        arrays.update({f"{task}/{k}": v for k, v in per_tile.items()})
        arrays.update({f"{task}/label": y, f"{task}/group": groups,
                       f"{task}/path": table["relpath"].to_numpy().astype(str)})
    results["seconds"] = round(time.perf_counter() - t0, 1)
    with atomic_path(out / "features.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    save_config(cfg, out)
    write_json(results, results_path)
    return results


def load_arrays(runs: Path, out_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The per-tile features, scores and similarities saved by `run_probe_study` (same folders)."""
    out = Path(out_dir) if out_dir else Path(runs) / "maga_probe"
    with np.load(out / "features.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
