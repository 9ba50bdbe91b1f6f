"""Slides: one reader interface over OpenSlide / tifffile / plain images, magnification as MPP,
tissue detection, the aligned multi-magnification grid and patch reading. (Writing slides, tiling and
the test-slide generator are tools of the application: `maga.slide_tools`.)"""

from maga_core.slides.magnification import (
    MAG_TO_MPP,
    PATCH_PX,
    Resolution,
    format_mag,
    mag_for_mpp,
    mpp_for_mag,
    parse_mags,
    patch_px_for_mag,
)
from maga_core.slides.patch_grid import DEFAULT_MAGS, aligned_grid, level0_square_side
from maga_core.slides.patches import level0_extent, read_patch, read_scaled, rescale
from maga_core.slides.opener import open_slide
from maga_core.slides.reader import SlideReader
from maga_core.slides.tissue import TissueConfig, TissueMask, detect_tissue, overlay, plot_tissue

__all__ = [
    "DEFAULT_MAGS", "TissueConfig", "TissueMask", "aligned_grid", "detect_tissue", "overlay",
    "plot_tissue", "level0_square_side",
    "MAG_TO_MPP", "PATCH_PX", "Resolution", "SlideReader", "format_mag",
    "level0_extent", "mag_for_mpp", "mpp_for_mag", "open_slide", "parse_mags", "patch_px_for_mag",
    "read_patch", "read_scaled", "rescale",
]
