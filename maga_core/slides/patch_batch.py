"""A batch of patches at one magnification in one call: the same pixels as `read_patch` on each, but
patches that are whole pixels of a stored level come from the union of their tiles decoded once, in
parallel (`TileReader.read_regions`), and resampled patches are made on the decode threads."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from maga_core.slides.patches import level0_extent, read_patch
from maga_core.slides.reader import SlideReader
from maga_core.slides.tile_reader import TileReader


def stored_level(reader: SlideReader, mag: float, patch_px: int) -> tuple[int, float] | None:
    """(level, downsample) when a `patch_px` patch at `mag` is exactly `patch_px` pixels of a level."""
    side = level0_extent(reader, mag, patch_px)
    level = reader.best_level_for_downsample(side / patch_px)
    ds = float(reader.level_downsamples[level])
    return (level, ds) if abs(side / ds - patch_px) < 1e-9 else None


def read_patches(reader: SlideReader, coords: Sequence[Sequence[float]] | np.ndarray, mag: float,
                 patch_px: int) -> np.ndarray:
    """uint8 [N, patch_px, patch_px, 3]: `read_patch(reader, c, mag, patch_px)` for every level-0 corner c."""
    coords = np.asarray(coords).reshape(-1, 2)
    out = np.empty((len(coords), patch_px, patch_px, 3), np.uint8)
    found = stored_level(reader, mag, patch_px)
    fast = isinstance(reader, TileReader) and found is not None and reader.fast_level(found[0])
    exact = np.zeros(len(coords), bool)
    if fast:
        level, ds = found
        exact = (coords[:, 0] % ds == 0) & (coords[:, 1] % ds == 0)
        if exact.any():
            locs = [(int(x), int(y)) for x, y in coords[exact]]
            out[exact] = reader.read_regions(locs, level, (patch_px, patch_px))
    rest = np.flatnonzero(~exact)
    if len(rest):
        def one(k: int) -> np.ndarray:
            return read_patch(reader, (float(coords[k, 0]), float(coords[k, 1])), mag, patch_px)

        pieces = reader.map(one, list(rest)) if isinstance(reader, TileReader) else [one(k) for k in rest]
        out[rest] = np.stack(pieces)
    return out
