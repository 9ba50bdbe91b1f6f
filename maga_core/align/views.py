"""Magnification views of tile images: the one resampling that both MAGA training and feature extraction
of tile folders use, so a student meets at inference exactly the pixels it was trained on.

A tile of known MPP is resampled to the MPP of a magnification (20x = 0.5 um/px, 5x = 2.0) with
`slides.rescale`, the filter `slides.read_patch` also uses for a patch between pyramid levels. A 224 px
tile at 0.5 um/px is the teacher's 224 px 20x view and the student's 56 px 5x view; a 256 px one gives
256 / 64. Training and inference call `view_at_mag` on the same decoded tile, so the same bytes give the
same view (tests/test_maga.py checks it through both code paths)."""

from __future__ import annotations

import numpy as np
import torch

from maga_core.slides import mpp_for_mag, rescale
from maga_core.slides.resample import rescale_batch


def view_at_mag(tile: np.ndarray, tile_mpp: float, mag: float) -> np.ndarray:
    """uint8 HxWx3 tile at `tile_mpp` um/px -> the same tissue at magnification `mag`."""
    return rescale(tile, float(tile_mpp) / mpp_for_mag(mag))


def low_mag_view(patch: np.ndarray, high_mag: float, mag: float) -> np.ndarray:
    """The same tissue at a lower magnification, from a patch at `high_mag`."""
    return view_at_mag(patch, mpp_for_mag(high_mag), mag)


def views_on_device(tiles: torch.Tensor, tile_mpp: float, mag: float) -> torch.Tensor:
    """`view_at_mag` for a batch of same-size uint8 tiles [N,H,W,3] on their own device (a GPU makes a
    batch's views in two matrix products; equal to `view_at_mag` within one grey level)."""
    return rescale_batch(tiles, float(tile_mpp) / mpp_for_mag(mag))
