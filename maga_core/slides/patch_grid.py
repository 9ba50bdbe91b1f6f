"""The aligned multi-magnification grid: ONE list of level-0 top-left corners, so patch i at 20x
(256 px), 10x (128 px) and 5x (64 px) shows the same 128 um tissue square. MAGA's alignment loss
pairs exactly these patches, and the features of every magnification share one coords array."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from maga_core.errors import MagaError
from maga_core.slides.magnification import format_mag, patch_px_for_mag
from maga_core.slides.patches import level0_extent
from maga_core.slides.reader import SlideReader
from maga_core.slides.tissue import TissueMask

DEFAULT_MAGS = (20.0, 10.0, 5.0)


def level0_square_side(reader: SlideReader, mags: Sequence[float],
                patch_px: Mapping[float, int] | None = None) -> float:
    """Level-0 side of the common square; patch sizes that cover different squares are an error."""
    sides = {m: level0_extent(reader, m, (patch_px or {}).get(m) or patch_px_for_mag(m)) for m in mags}
    lo, hi = min(sides.values()), max(sides.values())
    if hi > lo * 1.01:
        listing = ", ".join(f"{format_mag(m)}x: {s:.1f} px" for m, s in sides.items())
        raise MagaError(f"patch sizes cover different tissue squares ({listing}); choose sizes that "
                        "scale with magnification (e.g. 256/128/64 at 20/10/5x)")
    return hi


def aligned_grid(reader: SlideReader, mask: TissueMask, mags: Sequence[float] = DEFAULT_MAGS,
                 patch_px: Mapping[float, int] | None = None, min_tissue: float = 0.5) -> np.ndarray:
    """Level-0 (x, y) int64 [N, 2] of non-overlapping squares inside the slide with at least
    `min_tissue` tissue, row-major. The step is the float square side, rounded per corner, so the
    grid does not drift on slides whose MPP is not exactly 0.5."""
    side = level0_square_side(reader, mags, patch_px)
    w0, h0 = reader.dimensions
    nx, ny = int(w0 // side), int(h0 // side)
    if nx < 1 or ny < 1:
        raise MagaError(f"slide is {w0}x{h0} px, smaller than one patch ({side:.0f} px square = "
                        f"{side * reader.mpp:.0f} um at level 0)", reader.path)
    gx, gy = np.meshgrid(np.arange(nx) * side, np.arange(ny) * side)
    xs, ys = np.round(gx.ravel()), np.round(gy.ravel())
    cover = mask.coverage(xs, ys, side)
    keep = cover >= min_tissue
    if not keep.any():
        raise MagaError(f"no tissue found: none of {nx * ny} patch squares is {100 * min_tissue:.0f}% "
                        f"tissue (mask covers {100 * mask.fraction:.2f}% of the thumbnail)", reader.path)
    return np.stack([xs[keep], ys[keep]], axis=1).astype(np.int64)
