"""The fast read path (the slide's own JPEG tiles decoded here, in parallel) gives exactly the pixels of
the reader of record (OpenSlide / tifffile), and falls back to it where it cannot decode."""

from __future__ import annotations

import numpy as np
import pytest

from maga.extract import SlidePatches, extract_slide
from maga_core.slides import aligned_grid, detect_tissue, open_slide, read_patch
from maga_core.slides.patch_batch import read_patches, stored_level
from maga_core.slides.tile_reader import TileReader, fast_reader


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    from maga.slide_tools.generator import generate_slide

    return generate_slide(tmp_path_factory.mktemp("tiles") / "s.tif", 1536, 1024, seed=3, tissue_fraction=0.8,
                          pool_size=6)


@pytest.mark.parametrize("mag", [20.0, 5.0])
def test_batches_equal_reader_of_record(generated, mag):
    px = 256 if mag == 20 else 64
    with open_slide(generated) as plain, fast_reader(open_slide(generated), threads=2) as fast:
        assert isinstance(fast, TileReader) and set(fast.pages) == set(range(plain.level_count))
        coords = aligned_grid(plain, detect_tissue(plain), (20.0, 5.0))
        assert stored_level(plain, mag, px) is not None  # whole level pixels: the tile path is really taken
        got = read_patches(fast, coords, mag, px)
        want = np.stack([read_patch(plain, tuple(c), mag, px) for c in coords])
        assert len(coords) > 4 and fast.decode_seconds > 0
        level = stored_level(plain, mag, px)[0]
        cached = sum(lvl == level for lvl, _ in fast._cache)  # a tile that is exactly one patch is not kept
        assert cached == 0 if px == fast.pages[level].tilewidth else cached > 0
        assert np.array_equal(got, want)
        # regions off the tile grid, across tile borders and past the slide's edge (white there)
        for loc, level, size in [((100, 36), 0, (300, 290)), ((1400, 900), 0, (300, 300)), ((512, 256), 1, (400, 200))]:
            assert np.array_equal(fast.read_region(loc, level, size), plain.read_region(loc, level, size))
        assert np.array_equal(fast.thumbnail(300), plain.thumbnail(300))


def test_resampled_patches_and_svs(cmu):
    """CMU-1-Small-Region is a real Aperio SVS at 0.499 um/px: its JPEG tiles decode here to OpenSlide's
    pixels, and its patches (resampled) equal read_patch on OpenSlide."""
    with open_slide(cmu) as plain, fast_reader(open_slide(cmu), threads=2) as fast:
        assert isinstance(fast, TileReader) and 0 in fast.pages
        assert np.array_equal(fast.read_region((0, 0), 0, (700, 600)), plain.read_region((0, 0), 0, (700, 600)))
        coords = aligned_grid(plain, detect_tissue(plain), (20.0,))[:6]
        assert stored_level(plain, 20.0, 256) is None
        want = np.stack([read_patch(plain, tuple(c), 20.0, 256) for c in coords])
        assert np.array_equal(read_patches(fast, coords, 20.0, 256), want)
        assert np.array_equal(np.stack(SlidePatches(cmu, coords, 20.0, 256).read_rows(range(6))), want)


def test_jpeg2000_falls_back_to_openslide(tcga):
    """The TCGA frozen section stores JPEG 2000 tiles: nothing to decode here, the reader is returned as is."""
    reader = open_slide(tcga, mpp=0.5)
    with fast_reader(reader) as same:
        assert same is reader


def test_extract_fast_equals_reader_of_record(generated, tmp_path):
    from maga.bench.datapath import null_model
    from maga_core.data.features import read_features
    from maga.extract import load_model

    model = load_model("efficientnet_lite0", mag=5.0, weights="random")
    a = extract_slide(generated, model, tmp_path / "fast.h5", batch_size=6, num_workers=2, progress=False)
    b = extract_slide(generated, model, tmp_path / "plain.h5", batch_size=6, progress=False, fast=False)
    fa, fb = read_features(tmp_path / "fast.h5"), read_features(tmp_path / "plain.h5")
    assert a.n_patches == b.n_patches > 6 and np.array_equal(fa.coords, fb.coords)
    np.testing.assert_allclose(fa.features, fb.features, rtol=0, atol=1e-5)
    assert set(a.stages) >= {"open", "tissue_grid", "read_decode", "preprocess", "network", "write"}
    null = extract_slide(generated, null_model(20.0), tmp_path / "null.h5", progress=False)
    assert null.n_patches > 0 and not read_features(tmp_path / "null.h5").features.any()


def _decode_threads_alive() -> int:
    import threading

    return sum(t.name.startswith(("maga-decode", "maga-prepare")) for t in threading.enumerate())


def test_extract_slides_prefetches_in_order_reports_bad_slides_and_closes_what_it_opened(generated, cmu, tmp_path):
    """A batch gives what extract_slide gives slide by slide, in order; a bad slide becomes its own one-line
    error without stopping the others; a batch left early closes the slide it had opened ahead."""
    from maga.bench.datapath import null_model
    from maga_core.data.features import read_features
    from maga.extract import extract_slides

    bad = tmp_path / "truncated.svs"
    bad.write_bytes(cmu.read_bytes()[:4096])
    model = null_model(5.0)
    before = _decode_threads_alive()
    jobs = [(generated, tmp_path / "a.h5"), (bad, tmp_path / "bad.h5"), (cmu, tmp_path / "c.h5")]
    got = list(extract_slides(jobs, model, num_workers=2, progress=False))
    assert [src for src, _ in got] == [generated, bad, cmu]
    assert isinstance(got[1][1], Exception) and "truncated.svs" in str(got[1][1]) and not (tmp_path / "bad.h5").exists()
    for (src, res), name in zip([got[0], got[2]], ["a", "c"]):
        alone = extract_slide(src, model, tmp_path / f"{name}_alone.h5", num_workers=2, progress=False)
        assert res.n_patches == alone.n_patches > 0
        assert np.array_equal(read_features(tmp_path / f"{name}.h5").coords,
                              read_features(tmp_path / f"{name}_alone.h5").coords)
    with pytest.raises(Exception, match="truncated.svs"):
        list(extract_slides(jobs[1:], model, progress=False, raise_errors=True))
    batch = extract_slides([(generated, tmp_path / "d.h5"), (cmu, tmp_path / "e.h5")], model, progress=False)
    next(batch)  # the second slide is now open, ahead of its turn ...
    batch.close()  # ... and closed with the batch
    assert _decode_threads_alive() == before and not (tmp_path / "e.h5").exists()
