"""The faster extraction paths give the same pixels and features as the plain ones; the benchmark
against the CLAM-style loop reports every field (timings are never asserted)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maga_core import cli
from maga_core.extract import SlidePatches
from maga_core.slides import aligned_grid, detect_tissue, open_slide


@pytest.mark.parametrize("mag", [20.0, 5.0])
def test_row_reads_equal_patch_reads(tmp_path, mag):
    from maga_core.slides.generator import generate_slide

    path = generate_slide(tmp_path / "s.tif", 1536, 1024, seed=3, tissue_fraction=0.8, pool_size=6)
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


@pytest.mark.usefixtures("one_thread")
def test_bench_extract_baseline_fields(tmp_path, capsys):
    rc = cli.main(["bench", "extract", "--json", "--size", "1024", "--encoders", "efficientnet_lite0", "--baseline",
                   "--workers", "0", "--threads", "1", "--out", str(tmp_path / "b.json")])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    base, row = result["baseline"], result["encoders"]["efficientnet_lite0"]
    for key in ("tiles_per_s", "model_only_tiles_per_s", "pipeline_efficiency", "peak_rss_mb"):
        assert base[key] > 0, key
    assert row["speedup_over_baseline"] == pytest.approx(row["pipeline_tiles_per_s"] / base["tiles_per_s"], rel=1e-3)
    assert row["peak_rss_mb"] >= row["peak_single_process_rss_mb_20x"] > 100  # torch alone is more than that
    assert result["targets"]["speedup_over_baseline"] == 1.3
