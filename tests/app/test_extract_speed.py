"""The faster extraction path (row-wise reads) gives the same pixels as the plain one."""

from __future__ import annotations

import numpy as np
import pytest

from maga.extract import SlidePatches
from maga_core.slides import aligned_grid, detect_tissue, open_slide


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from maga.slide_tools.generator import generate_slide

    return generate_slide(tmp_path_factory.mktemp("rows") / "s.tif", 1536, 1024, seed=3, tissue_fraction=0.8,
                          pool_size=6)


@pytest.mark.parametrize("mag", [20.0, 5.0])
def test_row_reads_equal_patch_reads(generated, mag):
    path = generated
    with open_slide(path) as reader:
        coords = aligned_grid(reader, detect_tissue(reader), (20.0, 5.0))
    px = 256 if mag == 20 else 64
    rows, plain = SlidePatches(path, coords, mag, px), SlidePatches(path, coords, mag, px, row_reads=False)
    idx = list(range(len(coords)))
    assert rows._level() is not None  # whole level pixels: the row path is really taken
    got, want = rows.read_rows(idx), plain.read_rows(idx)
    assert len(got) == len(coords) > 4
    assert all(a.shape == (px, px, 3) and np.array_equal(a, b) for a, b in zip(got, want))


def test_row_reads_fall_back_when_resampling(cmu):
    """CMU-1-Small-Region is 0.499 um/px: patches are resampled, so each is read on its own."""
    with open_slide(cmu) as reader:
        coords = aligned_grid(reader, detect_tissue(reader), (20.0,))[:6]
    ds = SlidePatches(cmu, coords, 20.0, 256)
    assert ds._level() is None
    assert all(np.array_equal(a, ds[i]) for i, a in enumerate(ds.read_rows(list(range(len(coords))))))
