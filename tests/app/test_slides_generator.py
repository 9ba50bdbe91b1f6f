"""The large-slide generator, at a small size for speed: deterministic per seed, MPP set, real tiles
inside a tissue outline that tissue detection finds, and usable by the tiling pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maga_core.slides import TissueConfig, aligned_grid, detect_tissue, open_slide
from maga.slide_tools.generator import generate_slide


@pytest.fixture(scope="module")
def tiles_available(data_file):
    data_file("lc25000_lung_224_dedup", "lung_n/lungn14.jpeg")  # skip (or fail in CI) without the tiles


def test_generated_slide(tmp_path, tiles_available):
    a = generate_slide(tmp_path / "a.tif", 2400, 1800, seed=3, mpp=0.5, tissue_fraction=0.5)
    b = generate_slide(tmp_path / "b.tif", 2400, 1800, seed=3, mpp=0.5, tissue_fraction=0.5)
    c = generate_slide(tmp_path / "c.tif", 2400, 1800, seed=4, mpp=0.5, tissue_fraction=0.5)
    assert a.read_bytes() == b.read_bytes()  # same seed, same bytes
    assert a.read_bytes() != c.read_bytes()
    meta = json.loads((tmp_path / "a.tif.json").read_text())
    assert meta["spec"]["seed"] == 3 and meta["stats"]["tile_px"] == 224
    assert meta["stats"]["label"] in {"adenocarcinoma", "squamous"}
    with open_slide(a) as r:
        assert r.dimensions == (2400, 1800) and r.mpp == pytest.approx(0.5) and r.level_count >= 3
        tissue = detect_tissue(r, TissueConfig(thumb_px=1024))
        # the soft outline is ~half the slide; the detector should find a comparable share
        assert 0.25 < tissue.fraction < 0.75
        coords = aligned_grid(r, tissue)
        assert len(coords) > 10
        thumb = tissue.thumbnail.astype(float)
        assert thumb[~tissue.mask].mean() > 225  # background is near-white glass
        assert thumb[tissue.mask].mean() < 200 and np.std(thumb[tissue.mask]) > 15  # stained tissue


def test_generator_rejects_bad_sizes(tmp_path, tiles_available):
    from maga_core.errors import MagaError

    with pytest.raises(MagaError, match="too small"):
        generate_slide(tmp_path / "x.tif", 10, 10)
    assert not (tmp_path / "x.tif").exists()
