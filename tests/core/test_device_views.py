"""Magnification views made on a device (`views.views_on_device`, what `maga align` uses on a GPU) equal
the host's `view_at_mag` (PIL) within one grey level: on the real tiles, at every magnification of the
study and at the small non-integer rescales of tiles whose MPP is not exactly 0.5 um/px."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maga_core.align.tilesource import read_tile, resolve_tiles
from maga_core.align.train import decode_views
from maga_core.align.views import view_at_mag, views_on_device
from maga_core.slides.patches import rescale
from maga_core.slides.resample import rescale_batch


def _max_diff(a: np.ndarray, b: torch.Tensor) -> int:
    assert a.shape == tuple(b.shape)
    return int(np.abs(a.astype(np.int16) - b.numpy().astype(np.int16)).max())


@pytest.mark.parametrize("tiles", ["lc25000_lung_224_dedup:test", "uni_tcga_luadlusc:test"])
@pytest.mark.parametrize("tile_mpp", [0.5, 0.499, 0.2527])
def test_device_views_equal_host_views_within_one_grey_level(tiles, tile_mpp):
    batch = np.stack([read_tile(p) for p in resolve_tiles([tiles], max_tiles=4, seed=0)])
    x = torch.from_numpy(batch)
    for mag in (20.0, 10.0, 5.0, 2.5, 1.25):
        made = views_on_device(x, tile_mpp, mag)
        for tile, view in zip(batch, made):
            assert _max_diff(view_at_mag(tile, tile_mpp, mag), view) <= 1


def test_box_reductions_are_exact_and_noise_stays_within_one_grey_level():
    noise = np.random.default_rng(0).integers(0, 256, (2, 96, 80, 3), dtype=np.uint8)
    x = torch.from_numpy(noise)
    for scale in (0.5, 0.25, 0.0625):  # whole-pixel box averages: the same integer arithmetic
        assert all(_max_diff(rescale(im, scale), out) == 0 for im, out in zip(noise, rescale_batch(x, scale)))
    for scale in (0.73, 0.999, 1.3, 4.0):  # Lanczos (negative lobes clipped), fixed vs floating point
        assert all(_max_diff(rescale(im, scale), out) <= 1 for im, out in zip(noise, rescale_batch(x, scale)))
    assert rescale_batch(x, 1.0) is x


def test_align_views_made_on_a_device_match_the_host_ones():
    paths = resolve_tiles(["lc25000_lung_224_dedup:test"], max_tiles=5, seed=3)
    host = decode_views(paths, 0.5, 20.0, 5.0)[3]
    device = decode_views(paths, 0.5, 20.0, 5.0, device="cpu")[3]  # the device path, run on the host's torch
    for (h1, l1), (h2, l2) in zip(host, device):
        assert _max_diff(h1, torch.from_numpy(h2)) <= 1 and _max_diff(l1, torch.from_numpy(l2)) <= 1
