"""Trained MAGA students shared between chapters: computed once under the runs folder given, then reused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from maga_core.config import to_jsonable
from maga_core.device import without_runtime
from maga_core.maga.train import AlignConfig, train

DEFAULT_TILES = ("lc25000_lung_224_dedup:train", "uni_tcga_luadlusc:train")
# TCGA's manifest gives 0.5 um/px; LC25000's scale is undocumented and taken as 0.5 (20x) too.
DEFAULT_TILE_MPP = 0.5
# Settings that do not change what is trained, so they do not name a different student.
_NOT_IN_KEY = {"num_workers", "teacher_cache_mb"}


def student_path(cfg: AlignConfig, runs: Path) -> Path:
    """<runs>/maga_students/<teacher>_<mag>x_<mode>_<hash of the config>.pt"""
    payload = {k: v for k, v in without_runtime(to_jsonable(cfg)).items() if k not in _NOT_IN_KEY}
    key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]
    return Path(runs) / "maga_students" / f"{cfg.teacher}_{cfg.mag:g}x_{cfg.mode}_{key}.pt"


def ensure_student(runs: Path, teacher: str = "efficientnet_lite0", mag: float = 5.0, mode: str = "native",
                   tiles: list[str] | tuple[str, ...] = DEFAULT_TILES, epochs: int = AlignConfig.epochs,
                   batch_size: int = AlignConfig.batch_size, seed: int = AlignConfig.seed, max_tiles: int | None = None, progress: bool = True,
                   tile_mpp: float = DEFAULT_TILE_MPP, **kw) -> Path:
    """Checkpoint of the student with these settings: trained (or resumed) if absent, else reused."""
    cfg = AlignConfig(teacher=teacher, mag=float(mag), mode=mode, tiles=list(tiles), epochs=int(epochs),
                      batch_size=int(batch_size), seed=int(seed), max_tiles=max_tiles, tile_mpp=tile_mpp, **kw)
    return train(cfg, student_path(cfg, runs), progress=progress)
