"""`maga tile / info / doctor / generate-slide` end to end, and every bad input of issue 2 through the
CLI: a one-line error naming the file and the cause, exit 2, and nothing written."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from maga.cli import main
from maga_core.slides import open_slide, read_patch
from maga.slide_tools.writer import write_pyramidal_tiff



def test_tile_end_to_end(cmu, tmp_path, capsys):
    out = tmp_path / "cmu"
    assert main(["tile", str(cmu), "--mags", "20,10,5", "--out", str(out), "--save-patches", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["mpp"] == pytest.approx(0.499) and summary["patch_px"] == [256, 128, 64]
    with h5py.File(out / "coords.h5") as h5:
        coords = h5["coords"][:]
        assert coords.dtype == np.int64 and len(coords) == summary["n_patches"] > 20
        assert list(h5.attrs["magnifications"]) == [20, 10, 5]
    for mag, px in [("20x", 256), ("10x", 128), ("5x", 64)]:
        files = sorted(p.name for p in (out / mag).iterdir())
        assert files == ["0.png", "1.png", "2.png"]
        assert Image.open(out / mag / "0.png").size == (px, px)
    with open_slide(cmu) as r:  # the saved PNG is exactly read_patch of coords[2]
        np.testing.assert_array_equal(np.asarray(Image.open(out / "5x" / "2.png")), read_patch(r, coords[2], 5))
    assert json.loads((out / "config.json").read_text())["kind"] == "TileConfig"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left
    # resume: a finished output is kept, not redone
    mtime = (out / "coords.h5").stat().st_mtime_ns
    assert main(["tile", str(cmu), "--out", str(out)]) == 0
    assert (out / "coords.h5").stat().st_mtime_ns == mtime


def test_info_json(tcga, capsys):
    assert main(["info", str(tcga), "--json", "--mpp", "0.25"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dimensions"] == [4443, 3567] and info["level_count"] == 2
    assert info["mpp"] == 0.25 and info["objective_power"] == 40


def _blank_slide(path, size):
    w, h = size
    return write_pyramidal_tiff(np.full((h, w, 3), 252, np.uint8), path, mpp=0.5)


def _bad_inputs(tmp_path, cmu, tcga):
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "notes.svs").write_text("this is not a slide\n")
    data = cmu.read_bytes()
    (bad / "truncated.svs").write_bytes(data[: len(data) // 2])
    with open_slide(cmu) as r:
        small = r.read_region((800, 1200), 0, (200, 150))
    write_pyramidal_tiff(small, bad / "small.tif", mpp=0.5)
    _blank_slide(bad / "blank.tif", (2000, 1500))
    (bad / "empty").mkdir()
    return {
        "notes.svs": (bad / "notes.svs", "not a slide"),
        "truncated.svs": (bad / "truncated.svs", "truncated"),
        "no-mpp": (tcga, "no microns-per-pixel"),
        "small.tif": (bad / "small.tif", "smaller than one patch"),
        "blank.tif": (bad / "blank.tif", "no tissue found"),
        "empty": (bad / "empty", "no slide files in folder"),
    }


def test_every_bad_input_is_one_line_exit_2_nothing_written(cmu, tcga, tmp_path, capsys):
    cases = _bad_inputs(tmp_path, cmu, tcga)
    outroot = tmp_path / "out"
    outroot.mkdir()
    for name, (path, cause) in cases.items():
        rc = main(["tile", str(path), "--out", str(outroot / name), "--save-patches", "2"])
        err = capsys.readouterr().err.strip()
        assert rc == 2, name
        assert err.startswith("maga tile: error: ") and "\n" not in err and "Traceback" not in err, err
        assert str(path) in err and cause in err, err
        assert list(outroot.iterdir()) == [], name  # nothing half-written, no staging folder


def test_folder_batch_skips_and_reports_bad_slides(cmu, tmp_path, capsys):
    folder = tmp_path / "batch"
    folder.mkdir()
    shutil.copy(cmu, folder / "good.svs")
    (folder / "bad.svs").write_text("not a slide")
    rc = main(["tile", str(folder), "--out", str(tmp_path / "out")])
    report = json.loads(capsys.readouterr().out.split("\nmaga tile: failed")[0])
    assert rc == 1
    assert report["tiled"] == ["good.svs"] and list(report["failed"]) == ["bad.svs"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good"]
    assert main(["tile", str(folder), "--out", str(tmp_path / "out")]) == 1  # resumed: good skipped
    assert json.loads(capsys.readouterr().out.split("\nmaga tile: failed")[0])["skipped"] == ["good.svs"]


def test_generate_slide_cli(tmp_path, data_file, capsys):
    data_file("lc25000_lung_224_dedup", "lung_n/lungn14.jpeg")
    out = tmp_path / "g.tif"
    assert main(["generate-slide", str(out), "--width", "1200", "--height", "900", "--seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["pixels"] == 1200 * 900
    with open_slide(out) as r:
        assert r.dimensions == (1200, 900)


def test_doctor(capsys):
    rc = main(["doctor", "--json", "--skip-data"])
    results = json.loads(capsys.readouterr().out)
    failed = {k: v for k, v in results.items() if not v["ok"]}
    assert rc == 0, failed
    assert "pyvips_binary" in results["libvips"]["detail"]
    assert "[0, 2]" in results["torch"]["detail"]
