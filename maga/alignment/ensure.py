"""Trained MAGA students shared between chapters: computed once under the runs folder given, then reused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maga_core.config import to_jsonable
from maga_core.device import without_runtime
from maga_core.align.train import AlignConfig, train
from maga_core.slides import patch_px_for_mag
from maga import records
from maga.runs import run_key

DEFAULT_TILES = ("lc25000_lung_224_dedup:train", "uni_tcga_luadlusc:train")
# TCGA's manifest gives 0.5 um/px; LC25000's scale is undocumented and taken as 0.5 (20x) too.
DEFAULT_TILE_MPP = 0.5
# Settings that do not change what is trained, so they do not name a different student.
_NOT_IN_KEY = {"num_workers", "teacher_cache_mb"}


def student_path(cfg: AlignConfig, runs: Path) -> Path:
    """<runs>/maga_students/<teacher>_<mag>x_<mode>_<hash of the config>.pt"""
    payload = {k: v for k, v in without_runtime(to_jsonable(cfg)).items() if k not in _NOT_IN_KEY}
    return Path(runs) / "maga_students" / f"{cfg.teacher}_{cfg.mag:g}x_{cfg.mode}_{run_key(payload)}.pt"


def ensure_student(runs: Path, teacher: str = "efficientnet_lite0", mag: float = 5.0, mode: str = "native",
                   tiles: list[str] | tuple[str, ...] = DEFAULT_TILES, epochs: int = AlignConfig.epochs,
                   batch_size: int = AlignConfig.batch_size, seed: int = AlignConfig.seed, max_tiles: int | None = None, progress: bool = True,
                   tile_mpp: float = DEFAULT_TILE_MPP, **kw) -> Path:
    """Checkpoint of the student with these settings: trained (or resumed) if absent, else reused."""
    cfg = AlignConfig(teacher=teacher, mag=float(mag), mode=mode, tiles=list(tiles), epochs=int(epochs),
                      batch_size=int(batch_size), seed=int(seed), max_tiles=max_tiles, tile_mpp=tile_mpp, **kw)
    return train(cfg, student_path(cfg, runs), progress=progress)


def save_summary(students: dict[str, Any], runs: Path) -> Path:
    """Hand the MAGA training settings (chapter 02's students, from load_student) to the reproduction
    summary (chapter 09), beside the paper's, with what differs."""
    first = next(iter(students.values()))
    cfg = first.config
    taps = ", ".join(f"{t} x{w:g}" for t, w in first.loss_weights.items())
    tiles = "; ".join(f"{mode}: {s.n_tiles} tiles, {len(s.history)} epochs" for mode, s in students.items())
    figures = {"maga_training": {
        "patch_px": {f"x{m}": patch_px_for_mag(m) for m in (20, 10, 5)},
        "optimizer": {"name": "adam", "lr": cfg["lr"], "decay": "exponential", "decay_coefficient": cfg["lr_decay"]},
        "loss": f"weighted sum over taps of L1(teacher, student): {taps} ({cfg['teacher']})"}}
    return records.save_results(
        "02_maga_training", runs=runs, figures=figures,
        notes={"maga_training": f"students of this build ({tiles}) on {', '.join(cfg['tiles'])}",
               "maga_training.patches": f"the paper aligns on millions of cohort patches; this build's students "
                                        f"saw {tiles}",
               "maga_training.optimizer.decay": "lr x decay_coefficient per epoch (the public code: 0.95 per epoch)",
               "maga_training.loss": "the public code weights its blocks [1, 5, 10] and the pooled output 200; "
                                     "EfficientNet-Lite taps stand in for the ResNet50 blocks"})
