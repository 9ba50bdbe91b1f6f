"""Seeded generator of large test slides: a mosaic of REAL H&E tiles (benign tissue with a tumour
region of one class) inside a smooth tissue outline on noisy glass, written as a pyramidal JPEG TIFF
with its MPP set. libvips evaluates the mosaic lazily and streams it to disk, so a 0.5-gigapixel
slide needs only the tile pool (a few tens of MB) in memory. For benchmarks and gigapixel-scale tests;
the pixel scale is nominal (the source tiles are not calibrated)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from maga_core.config import write_json
from maga_core.data.tiles import tile_table
from maga_core.errors import MagaError
from maga.slide_tools.writer import write_pyramidal_tiff

GLASS_RGB = (243, 240, 245)
BENIGN = "benign"


@dataclass
class SlideSpec:
    width: int
    height: int
    seed: int = 0
    mpp: float = 0.5
    tissue_fraction: float = 0.45  # share of the slide area inside the tissue outline
    tumour_fraction: float = 0.3  # share of tissue cells drawn from the tumour class
    tumour_class: str | None = None  # None: chosen by the seed among the source's tumour classes
    tile_source: str = "lc25000_lung_224_dedup"
    pool_size: int = 48  # distinct tiles per class (each under a random rotation/flip)
    quality: int = 90


def _tile_pool(spec: SlideSpec, rng: np.random.Generator) -> tuple[dict[str, list[np.ndarray]], str, int]:
    """{class: [uint8 tiles]}, the tumour class used, and the tile side."""
    source = Path(spec.tile_source)
    if source.is_dir():
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
        table = {"tissue": [str(p) for p in paths]}
    else:  # a dataset name: tiles come verified through the data manifests (lazy: data sits above slides)

        df = tile_table(spec.tile_source)
        table = {c: sorted(g["path"]) for c, g in df.groupby("class")}
    if not any(table.values()):
        raise MagaError("no image tiles found", spec.tile_source)
    tumour_classes = sorted(c for c in table if c != BENIGN)
    tumour = spec.tumour_class or str(rng.choice(tumour_classes))
    if tumour not in table:
        raise MagaError(f"tumour class {tumour!r} not in tile source (has {', '.join(sorted(table))})",
                        spec.tile_source)
    pool: dict[str, list[np.ndarray]] = {}
    side = 0
    for cls in sorted({tumour, BENIGN if BENIGN in table else tumour}):
        picks = rng.choice(len(table[cls]), size=min(spec.pool_size, len(table[cls])), replace=False)
        tiles = []
        for i in picks:
            with Image.open(table[cls][i]) as im:
                a = np.asarray(im.convert("RGB"))
            side = side or min(a.shape[:2])
            if a.shape[:2] != (side, side):
                a = np.asarray(Image.fromarray(a).resize((side, side), Image.Resampling.LANCZOS))
            a = np.rot90(a, k=int(rng.integers(4)))
            tiles.append(np.ascontiguousarray(a[:, ::-1] if rng.integers(2) else a))
        pool[cls] = tiles
    return pool, tumour, side


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Smooth random field (blobs a few cells wide), lowered near the border so tissue sits inside."""
    from scipy.ndimage import gaussian_filter

    ny, nx = shape
    f = gaussian_filter(rng.standard_normal(shape), sigma=max(1.0, max(nx, ny) / 8), mode="reflect")
    f = (f - f.mean()) / (f.std() + 1e-12)
    v, u = np.meshgrid(np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    return f - 2.0 * np.maximum(np.abs(u), np.abs(v)) ** 6


def generate_slide(out_path: str | Path, width: int, height: int, seed: int = 0, mpp: float = 0.5,
                   tissue_fraction: float = 0.45, tumour_fraction: float = 0.3,
                   tile_source: str | Path = "lc25000_lung_224_dedup", tumour_class: str | None = None,
                   pool_size: int = 48, quality: int = 90, progress: bool = False) -> Path:
    """Write a width x height slide to `out_path` (pyramidal TIFF, MPP `mpp`) and its spec and
    statistics to `<out_path>.json`. Same arguments, same bytes."""
    import pyvips

    spec = SlideSpec(int(width), int(height), int(seed), float(mpp), float(tissue_fraction),
                     float(tumour_fraction), tumour_class, str(tile_source), int(pool_size), int(quality))
    if spec.width < 64 or spec.height < 64:
        raise MagaError(f"slide size {spec.width}x{spec.height} too small (64 px minimum)")
    if not 0 < spec.tissue_fraction <= 1 or not 0 <= spec.tumour_fraction <= 1:
        raise MagaError("tissue_fraction must be in (0, 1] and tumour_fraction in [0, 1]")
    rng = np.random.default_rng(spec.seed)
    pool, tumour, t = _tile_pool(spec, rng)
    nx, ny = -(-spec.width // t), -(-spec.height // t)

    # Tissue outline: a soft threshold of a smooth field (ramp ~1 cell), interpolated per pixel.
    field = _smooth_field(rng, (ny, nx))
    cut = np.quantile(field, 1 - spec.tissue_fraction)
    alpha = np.clip((field - cut) / (0.25 * field.std()) + 0.5, 0, 1)
    tumour_field = _smooth_field(rng, (ny, nx))
    inside = alpha > 0
    tumour_cut = np.quantile(tumour_field[inside], 1 - spec.tumour_fraction) if spec.tumour_fraction else np.inf
    is_tumour = inside & (tumour_field >= tumour_cut)

    benign_pool = pool.get(BENIGN, pool[tumour])
    vips_pool = {cls: [pyvips.Image.new_from_memory(a.data, t, t, 3, "uchar") for a in tiles]
                 for cls, tiles in (("tumour", pool[tumour]), ("benign", benign_pool))}
    picks = rng.integers(0, 1 << 30, size=(ny, nx))
    cells = [vips_pool["tumour" if is_tumour[j, i] else "benign"][picks[j, i] % len(
        vips_pool["tumour" if is_tumour[j, i] else "benign"])] for j in range(ny) for i in range(nx)]
    mosaic = pyvips.Image.arrayjoin(cells, across=nx)

    a = np.ascontiguousarray(np.round(alpha * 255).astype(np.uint8))
    alpha_img = pyvips.Image.new_from_memory(a.data, nx, ny, 1, "uchar")
    alpha_img = alpha_img.resize(t, kernel="linear")  # smooth edge between cell centres
    glass = (pyvips.Image.gaussnoise(nx * t, ny * t, sigma=2.5, mean=0, seed=spec.seed)
             + list(GLASS_RGB)).cast("uchar")
    slide = alpha_img.ifthenelse(mosaic, glass, blend=True)  # uchar blend: mosaic where alpha=255
    slide = slide.crop(0, 0, spec.width, spec.height).copy(interpretation="srgb")

    out = write_pyramidal_tiff(slide, out_path, spec.mpp, quality=spec.quality, progress=progress)
    stats = {"tumour_class": tumour, "tile_px": t, "cells": [nx, ny],
             "tissue_cell_fraction": float(inside.mean()), "alpha_mean": float(alpha.mean()),
             "tumour_cell_fraction_of_tissue": float(is_tumour.sum() / max(inside.sum(), 1)),
             "label": tumour if is_tumour.any() else BENIGN}
    write_json({"spec": asdict(spec), "stats": stats}, Path(f"{out}.json"))
    return out
