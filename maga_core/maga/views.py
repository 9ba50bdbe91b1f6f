"""Magnification views of the same tissue made from one high-magnification patch.

Downsampling is antialiased: PIL's Lanczos filter, whose support widens with the reduction factor, the
same filter `slides.read_patch` uses to read a 5x patch from a 20x level, so a student meets at inference
the kind of pixels it was trained on. The result stays uint8, like pixels read from a real lower level.
Feature extraction of tile folders reuses `resize_patch`."""

from __future__ import annotations

import numpy as np
from PIL import Image


def resize_patch(patch: np.ndarray, out_px: int) -> np.ndarray:
    """uint8 HxWx3 -> uint8 out_px x out_px x3, Lanczos (antialiased when shrinking)."""
    patch = np.asarray(patch)
    if patch.dtype != np.uint8 or patch.ndim != 3 or patch.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 patch, got {patch.dtype} {patch.shape}")
    h, w = patch.shape[:2]
    if h == w == out_px:
        return patch
    return np.asarray(Image.fromarray(patch).resize((out_px, out_px), Image.Resampling.LANCZOS))


def view_px(high_px: int, high_mag: float, mag: float) -> int:
    """Edge length of the same tissue square at `mag` (256 px at 20x -> 128 at 10x -> 64 at 5x)."""
    px = high_px * mag / high_mag
    if abs(px - round(px)) > 1e-6 or px < 1:
        raise ValueError(f"{high_px} px at {high_mag}x has no whole-pixel view at {mag}x")
    return int(round(px))


def low_mag_view(patch: np.ndarray, high_mag: float, mag: float) -> np.ndarray:
    """The same tissue at a lower magnification: antialiased downsampling of the high-mag patch."""
    return resize_patch(patch, view_px(patch.shape[0], high_mag, mag))
