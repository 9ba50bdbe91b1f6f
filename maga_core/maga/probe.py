"""The real-data MAGA report: does a student trained at 5x give features as useful as the teacher's at 20x?

MAGA students (both modes) are trained on tiles that are never evaluated (LC25000 train split + TCGA
train split). On held-out tiles of two real tasks (TCGA LUAD vs LUSC, 60 test tiles from 6 cases; LC25000
adenocarcinoma vs squamous, held-out near-duplicate clusters) a logistic-regression probe is fitted on the
train split's features and scored on the test split, for: the teacher at 20x, the teacher on the 5x view
without MAGA (at 64 px, and resized back to 256 px), and the two students. AUC with stratified bootstrap
95% CIs (500 resamples), DeLong tests of student vs teacher at 5x, and the per-tile cosine similarity of each
5x feature to the teacher's 20x feature of the same tile (raw, and centred on the 20x training mean, since
post-ReLU features share a large positive mean that inflates raw cosines).

Scale: TCGA tiles are 256 px at ~0.5 um/px, i.e. 20x; 5x = 64 px. LC25000's 224 px copies have no
documented scale (camera photos, 768 px originals downsampled ~3.4x); they are treated as the 20x view of
one patch and resampled to 256 px, so their 5x view is the same image at 64 px.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from maga_core.config import atomic_path, save_config, to_jsonable, write_json
from maga_core.maga.ensure import DEFAULT_TILES, ensure_student
from maga_core.maga.student import load_student
from maga_core.maga.tilesource import read_tile
from maga_core.maga.views import low_mag_view, resize_patch

TASKS = {
    "tcga_luad_vs_lusc": "uni_tcga_luadlusc",
    "lc25000_aca_vs_scc": "lc25000_lung_224_dedup",
}
CLASSES = ("adenocarcinoma", "squamous")  # label 0, 1
ASSUMPTIONS = [
    "TCGA tiles (256 px, ~0.5 um/px by eye) are 20x; the 5x view is the 64 px antialiased (Lanczos) downsample.",
    "LC25000 224 px copies: scale undocumented; treated as the 20x view of one patch and resampled to 256 px, "
    "so their 5x view is the same image at 64 px.",
    "MAGA training tiles: LC25000 train split (all three classes, labels unused) + TCGA train split; "
    "no test tile is seen in training.",
    "AUC CIs: stratified percentile bootstrap over test tiles; TCGA test tiles come from only 6 cases, "
    "so tile-level CIs understate case-level uncertainty.",
]


@dataclass
class ProbeConfig:
    teacher: str = "efficientnet_lite0"
    mag: float = 5.0
    train_tiles: list[str] = field(default_factory=lambda: list(DEFAULT_TILES))
    max_train_tiles: int | None = None
    epochs_native: int = 15
    epochs_upsample: int = 15
    batch_size: int = 32
    seed: int = 512
    n_boot: int = 500
    probe_c: float = 1.0  # inverse L2 strength of the logistic regression (standardised features)
    max_tiles_per_class: int | None = None  # per split and class (smoke runs); None: all
    batch_infer: int = 32


def ensure_students(cfg: ProbeConfig, runs: Path, progress: bool = True) -> dict[str, Path]:
    """The native and upsample students of this configuration (trained once, cached under `runs`)."""
    return {mode: ensure_student(runs, cfg.teacher, cfg.mag, mode, cfg.train_tiles,
                                 cfg.epochs_native if mode == "native" else cfg.epochs_upsample,
                                 cfg.batch_size, cfg.seed, cfg.max_train_tiles, progress=progress)
            for mode in ("native", "upsample")}


def feature_kinds(mag: float) -> dict[str, str]:
    m = f"{mag:g}x"
    return {
        "teacher_20x": "teacher on the 20x tile (256 px)",
        f"teacher_{m}": f"teacher on the {m} view at its size (64 px at 5x), no MAGA",
        f"teacher_{m}_upsampled": f"teacher on the {m} view resized back to 256 px, no MAGA",
        f"maga_{m}_native": f"MAGA student (native) on the {m} view",
        f"maga_{m}_upsample": f"MAGA student (upsample) on the {m} view resized to 256 px",
    }


def _task_tiles(dataset: str, cfg: ProbeConfig):
    from maga_core.data.tiles import tile_table

    table = tile_table(dataset)
    table = table[table["class"].isin(CLASSES)].reset_index(drop=True)
    if cfg.max_tiles_per_class is not None:
        keep = [i for _, g in table.groupby(["split", "class"])
                for i in g.sample(min(len(g), cfg.max_tiles_per_class), random_state=cfg.seed).index]
        table = table.loc[sorted(keep)].reset_index(drop=True)
    return table


def encode(encoder, prepare, patches: np.ndarray, batch: int = 32) -> np.ndarray:
    """Pooled features [N, D] of uint8 patches [N, h, w, 3] through `prepare` (uint8 batch -> tensor)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(patches), batch):
            out.append(encoder(prepare(patches[i:i + batch])).float().numpy())
    return np.concatenate(out)


def compute_features(cfg: ProbeConfig, teacher, students: dict, high: np.ndarray, low: np.ndarray) -> dict:
    m = f"{cfg.mag:g}x"
    up = students["upsample"].prepare
    return {
        "teacher_20x": encode(teacher, teacher.transform, high, cfg.batch_infer),
        f"teacher_{m}": encode(teacher, teacher.transform, low, cfg.batch_infer),
        f"teacher_{m}_upsampled": encode(teacher, up, low, cfg.batch_infer),  # same resize as the student
        f"maga_{m}_native": encode(students["native"], students["native"].prepare, low, cfg.batch_infer),
        f"maga_{m}_upsample": encode(students["upsample"], up, low, cfg.batch_infer),
    }


def probe_scores(x_train, y_train, x_test, c: float) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))
    return model.fit(x_train, y_train).predict_proba(x_test)[:, 1]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return (a * b).sum(axis=1)


def mean_ci(values: np.ndarray, n_boot: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    boots = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    return {"mean": float(values.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "median": float(np.median(values))}


def evaluate_task(cfg: ProbeConfig, feats: dict[str, np.ndarray], y: np.ndarray, split: np.ndarray) -> tuple[dict, dict]:
    """Probe AUCs, DeLong tests and cosine similarities of one task; also the per-tile arrays."""
    from maga_core import stats

    tr, te = split == "train", split == "test"
    m = f"{cfg.mag:g}x"
    probe, scores = {}, {}
    for kind, x in feats.items():
        scores[kind] = probe_scores(x[tr], y[tr], x[te], cfg.probe_c)
        boot = stats.bootstrap_metrics(y[te], scores[kind], n_boot=cfg.n_boot, seed=cfg.seed)["metrics"]
        probe[kind] = {"auc": boot["auc"]["value"], "ci_low": boot["auc"]["ci_low"],
                       "ci_high": boot["auc"]["ci_high"], "accuracy": boot["accuracy"]["value"]}
    comparisons = [(f"maga_{m}_native", f"teacher_{m}"), (f"maga_{m}_upsample", f"teacher_{m}_upsampled"),
                   (f"maga_{m}_native", "teacher_20x"), (f"maga_{m}_upsample", "teacher_20x")]
    delong = []
    for a, b in comparisons:
        r = stats.delong_test(y[te], scores[a], scores[b])
        delong.append({"a": a, "b": b, "auc_a": r.auc_a, "auc_b": r.auc_b, "diff": r.auc_a - r.auc_b,
                       "p_value": r.p_value})
    ref = feats["teacher_20x"]
    centre = ref[tr].mean(axis=0)
    cos, cos_c, per_tile = {}, {}, {}
    for kind, x in feats.items():
        if kind == "teacher_20x":
            continue
        raw, cen = cosine(x[te], ref[te]), cosine(x[te] - centre, ref[te] - centre)
        cos[kind], cos_c[kind] = mean_ci(raw, cfg.n_boot, cfg.seed), mean_ci(cen, cfg.n_boot, cfg.seed)
        per_tile[f"cos/{kind}"], per_tile[f"cos_centered/{kind}"] = raw, cen
    per_tile.update({f"score/{k}": v for k, v in scores.items()})
    summary = {"n_train": int(tr.sum()), "n_test": int(te.sum()),
               "n_test_per_class": {c: int((y[te] == i).sum()) for i, c in enumerate(CLASSES)},
               "probe": probe, "delong": delong, "cosine_to_20x": cos, "cosine_centered_to_20x": cos_c}
    return summary, per_tile


def run_probe_study(cfg: ProbeConfig | None, runs: Path, out_dir: str | Path | None = None, force: bool = False,
                    progress: bool = True) -> dict:
    """Train (or reuse) the students, compute features, write results.json + config.json + features.npz.

    Students live under `runs`, results under `out_dir` (default <runs>/maga_probe). An existing
    results.json made with the same configuration is returned without recomputation."""
    from maga_core.encoders import build

    cfg = cfg or ProbeConfig()
    out = Path(out_dir) if out_dir else Path(runs) / "maga_probe"
    results_path = out / "results.json"
    if results_path.is_file() and not force:
        saved = json.loads(results_path.read_text())
        if saved.get("config") == to_jsonable(cfg):
            return saved
    t0 = time.perf_counter()
    paths = ensure_students(cfg, runs, progress)
    students = {mode: load_student(p) for mode, p in paths.items()}
    teacher = build(cfg.teacher).eval()
    high_px = students["native"].prepare.teacher_px

    results = {"config": to_jsonable(cfg), "kinds": feature_kinds(cfg.mag), "assumptions": ASSUMPTIONS,
               "students": {mode: {"checkpoint": str(p), "sha256": students[mode].sha256,
                                   "epochs": len(students[mode].history),
                                   "final_loss": students[mode].history[-1]["loss"],
                                   "train_seconds": sum(h["seconds"] for h in students[mode].history),
                                   "teacher": students[mode].teacher}
                            for mode, p in paths.items()},
               "tasks": {}}
    arrays = {}
    for task, dataset in TASKS.items():
        table = _task_tiles(dataset, cfg)
        high = np.stack([resize_patch(read_tile(p), high_px) for p in
                         tqdm(table["path"], desc=f"read {task}", disable=not progress, leave=False)])
        low = np.stack([low_mag_view(h, 20.0, cfg.mag) for h in high])
        feats = compute_features(cfg, teacher, students, high, low)
        y = (table["class"] == CLASSES[1]).to_numpy().astype(int)
        split = table["split"].to_numpy()
        summary, per_tile = evaluate_task(cfg, feats, y, split)
        results["tasks"][task] = {"dataset": dataset, **summary}
        arrays.update({f"{task}/features/{k}": v for k, v in feats.items()})
        arrays.update({f"{task}/{k}": v for k, v in per_tile.items()})
        arrays.update({f"{task}/label": y, f"{task}/split": split.astype(str),
                       f"{task}/path": table["relpath"].to_numpy().astype(str),
                       f"{task}/group": table["group"].to_numpy().astype(str)})
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
