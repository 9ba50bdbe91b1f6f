"""The tiling job behind `maga tile`: tissue mask -> aligned grid -> coords HDF5, sample patches per
magnification as PNG, tissue overlay and a JSON summary. Everything is built in a hidden staging
folder and renamed into place only when whole, so a failure leaves nothing half-written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from maga_core.config import atomic_path, save_config, write_json
from maga_core.errors import MagaError
from maga_core.slides.magnification import format_mag, patch_px_for_mag
from maga_core.slides.opener import open_slide
from maga_core.slides.patch_grid import DEFAULT_MAGS, aligned_grid, level0_square_side
from maga_core.slides.patches import read_patch
from maga_core.slides.reader import SLIDE_SUFFIXES
from maga_core.slides.tissue import TissueConfig, detect_tissue, overlay

SUMMARY = "summary.json"
COORDS = "coords.h5"
OVERLAY_PX = 1024


@dataclass
class TileConfig:
    mags: list[float] = field(default_factory=lambda: list(DEFAULT_MAGS))
    save_patches: int = 0  # first N patches of each magnification as PNG
    min_tissue: float = 0.5  # tissue share a grid square needs
    mpp: float | None = None  # level-0 MPP override
    tissue: TissueConfig = field(default_factory=TissueConfig)


def write_coords(path: Path, coords, attrs: dict[str, Any]) -> Path:
    import h5py

    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("coords", data=coords)
            for k, v in attrs.items():
                h5.attrs[k] = v
    return path


def _is_tile_result(folder: Path) -> bool:
    try:
        return json.loads((folder / SUMMARY).read_text()).get("kind") == "tile"
    except (OSError, ValueError):
        return False


def tile_slide(slide: str | Path, out_dir: str | Path, cfg: TileConfig | None = None,
               overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Tile one slide into `out_dir`; returns the summary. A finished `out_dir` is kept (resume)
    unless `overwrite`; a non-empty folder that is not a tile result is never touched."""
    cfg = cfg or TileConfig()
    out = Path(out_dir)
    if _is_tile_result(out) and not overwrite:
        return {**json.loads((out / SUMMARY).read_text()), "skipped": True}
    if out.exists() and not out.is_dir():
        raise MagaError("output exists and is not a folder", out)
    if out.is_dir() and any(out.iterdir()) and not _is_tile_result(out):
        raise MagaError("output folder is not empty and holds no tile result; choose another --out", out)
    t0 = time.perf_counter()
    with open_slide(slide, mpp=cfg.mpp) as reader:
        tissue = detect_tissue(reader, cfg.tissue)
        coords = aligned_grid(reader, tissue, cfg.mags, min_tissue=cfg.min_tissue)
        side = level0_square_side(reader, cfg.mags)
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        stage.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result is an ordinary folder
        try:
            patch_px = [patch_px_for_mag(m) for m in cfg.mags]
            write_coords(stage / COORDS, coords, {
                "slide": str(reader.path), "mpp": reader.mpp, "magnifications": cfg.mags,
                "patch_px": patch_px, "level0_side": side, "min_tissue": cfg.min_tissue})
            preview = Image.fromarray(overlay(tissue))
            preview.thumbnail((OVERLAY_PX, OVERLAY_PX))
            preview.save(stage / "tissue.png")
            n_save = min(cfg.save_patches, len(coords))
            jobs = [(m, i) for m in cfg.mags for i in range(n_save)]
            for mag, i in tqdm(jobs, desc=f"{reader.path.name} patches", unit="patch",
                               disable=not progress or not jobs):
                folder = stage / f"{format_mag(mag)}x"
                folder.mkdir(exist_ok=True)
                Image.fromarray(read_patch(reader, coords[i], mag)).save(folder / f"{i}.png")
            summary = {
                "kind": "tile", **reader.info(), "magnifications": cfg.mags, "patch_px": patch_px,
                "level0_side": side, "n_patches": int(len(coords)), "saved_patches": n_save,
                "tissue_fraction": tissue.fraction, "tissue_threshold": tissue.threshold,
                "tissue_regions": len(tissue.contours), "seconds": round(time.perf_counter() - t0, 3),
                "files": {"coords": COORDS, "overlay": "tissue.png",
                          "patches": [f"{format_mag(m)}x/<i>.png" for m in cfg.mags] if n_save else []},
            }
            save_config(cfg, stage)
            write_json(summary, stage / SUMMARY)
            if out.is_dir():  # empty, or an earlier tile result being overwritten
                shutil.rmtree(out)
            os.replace(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return summary


def tile_folder(folder: str | Path, out_dir: str | Path, cfg: TileConfig | None = None,
                overwrite: bool = False) -> dict[str, Any]:
    """Tile every slide in `folder` into out_dir/<stem>/; skip finished ones, report failures."""
    folder = Path(folder)
    slides = sorted(p for p in folder.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SLIDE_SUFFIXES)
    if not slides:
        raise MagaError(f"no slide files in folder (looked for {', '.join(sorted(SLIDE_SUFFIXES))})", folder)
    done, skipped, failed = [], [], {}
    for path in tqdm(slides, desc="slides", unit="slide"):
        try:
            s = tile_slide(path, Path(out_dir) / path.stem, cfg, overwrite=overwrite, progress=False)
            (skipped if s.get("skipped") else done).append(path.name)
        except MagaError as exc:
            failed[path.name] = str(exc)
    return {"kind": "tile-folder", "folder": str(folder), "tiled": done, "skipped": skipped,
            "failed": failed, "config": asdict(cfg or TileConfig())}
