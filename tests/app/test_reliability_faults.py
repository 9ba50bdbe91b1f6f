"""Damaged inputs and broken output folders, through the real `maga` command (issue 23): a slide with
damaged JPEG tiles is reported with its name and the patch region while the rest of the batch finishes;
truncated feature files and checkpoints are refused with one line; a full or read-only output folder
stops the run with one line naming it and leaves the previous results byte for byte."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from maga.reliability.corrupt import damage_tiles, truncated_copy
from maga.reliability.kills import child_env, maga_argv
from maga.reliability.limits import preexec
from maga.reliability.scenarios import ENCODER, make_bags, make_slides

pytestmark = pytest.mark.timeout(300)
EXTRACT = ["--encoder", ENCODER, "--mag", "5", "--workers", "0", "--no-progress", "--device", "cpu"]


def maga(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(maga_argv(*args), env=child_env(), capture_output=True, text=True, timeout=240, **kw)


def one_line_error(proc: subprocess.CompletedProcess, command: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith(f"maga {command}: error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def slides(tmp_path_factory, data_file):
    data_file("lc25000_lung_224_dedup", "lung_aca/lungaca100.jpeg")
    return make_slides(tmp_path_factory.mktemp("faults") / "slides", 2, 1024)


def test_damaged_jpeg_tiles_name_the_slide_and_region_and_the_batch_finishes(slides, tmp_path):
    batch = tmp_path / "batch"
    shutil.copytree(slides, batch)
    damaged = damage_tiles(slides / "slide_00.tif", batch / "slide_00_damaged.tif", n_tiles=3, seed=0)
    out = tmp_path / "out"
    at_20x = [*EXTRACT[:EXTRACT.index("--mag")], "--mag", "20", *EXTRACT[EXTRACT.index("--mag") + 2:]]
    proc = maga("extract", *at_20x, "--input", str(batch), "--out", str(out))  # 20x reads level 0, the damaged one
    assert proc.returncode == 1, proc.stderr[-2000:]
    failed = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("failed:")]
    assert len(failed) == 1 and "slide_00_damaged.tif" in failed[0], proc.stdout
    region = re.search(r"at \((\d+), (\d+)\) level 0, (\d+)x(\d+) px", failed[0])
    assert region, failed[0]
    x, y, w, h = map(int, region.groups())
    assert any(x <= tx < x + w and y <= ty < y + h or x < tx + 256 <= x + w and y < ty + 256 <= y + h
               for tx, ty in damaged), (region.groups(), damaged)
    assert sorted(p.name for p in out.glob("*.h5")) == ["slide_00.h5", "slide_01.h5"]
    assert not list(out.rglob(".*.tmp"))


def test_truncated_feature_file_and_checkpoint_are_refused_in_one_line(tmp_path, slides):
    feats, labels = make_bags(tmp_path / "bags", 9)
    victim = feats / "s04.h5"
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    err = one_line_error(maga("mil", "--model", "abmil", "--features", str(feats), "--labels", str(labels),
                              "--folds", "3", "--epochs", "1", "--quiet", "--out", str(tmp_path / "cv")), "mil")
    assert "s04.h5" in err
    assert not (tmp_path / "cv" / "summary.json").exists()

    ckpt = tmp_path / "student.pt"
    ckpt.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 40)  # a zip header, then nothing a loader can use
    for cut in (ckpt, truncated_copy(ckpt, tmp_path / "cut.pt", 0.1)):
        err = one_line_error(maga("extract", "--encoder", ENCODER, "--student", str(cut), "--input",
                                  str(slides / "slide_00.tif"), "--out", str(tmp_path / "o.h5")), "extract")
        assert cut.name in err
    assert not (tmp_path / "o.h5").exists()


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_full_disk_stops_with_one_line_and_keeps_previous_results(slides, tmp_path):
    out = tmp_path / "out"
    assert maga("extract", *EXTRACT, "--input", str(slides), "--out", str(out)).returncode == 0
    (out / "slide_01.h5").unlink()  # the one left to do
    before = _tree(out)
    proc = maga("extract", *EXTRACT, "--input", str(slides), "--out", str(out), preexec_fn=preexec(fsize=4096))
    err = one_line_error(proc, "extract")
    assert f"{out}: cannot write here: File too large" in err
    assert _tree(out) == before  # previous results intact, nothing half-written beside them

    feats, labels = make_bags(tmp_path / "bags", 9)
    cv = tmp_path / "cv"
    proc = maga("mil", "--model", "abmil", "--features", str(feats), "--labels", str(labels), "--folds", "3",
                "--epochs", "1", "--quiet", "--out", str(cv), preexec_fn=preexec(fsize=2048))
    assert "cannot write here: File too large" in one_line_error(proc, "mil")
    assert not [p for p in cv.rglob("*") if p.is_file() and p.stat().st_size >= 2048]
    assert not list(cv.rglob(".*.tmp"))


def test_read_only_output_folder_stops_with_one_line(slides, tmp_path):
    out = tmp_path / "read_only"
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "maga.reliability.readonly", str(out),
                           "extract", *EXTRACT, "--input", str(slides), "--out", str(out)],
                          env=child_env(), capture_output=True, text=True, timeout=240)
    err = one_line_error(proc, "extract")
    assert f"{out}: cannot write here: Read-only file system" in err
    assert not list(out.iterdir())
