"""Feature extraction on the real CMU-1-Small-Region slide and real TCGA tiles: the HDF5 layout, a batch
that survives corrupt slides, resume, and sharding over two gloo processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from maga import cli
from maga_core.data.features import feature_writer, read_features, write_features
from maga_core.errors import MagaError
from maga.extract import EXTRACT_TISSUE_MPP, embed, extract_slide, extract_tiles, load_model
from maga.extract_job import ExtractConfig, extract_batch, plan
from maga.extract_report import one_line_cause
from maga_core.slides import TissueConfig, aligned_grid, detect_tissue, open_slide, read_patch

ENCODER = "efficientnet_lite0"


@pytest.fixture(scope="module")
def model_5x():
    return load_model(ENCODER, mag=5)


def _slide_folder(root: Path, cmu: Path, names: list[str]) -> Path:
    folder = root / "slides"
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cmu, folder / name)
    return folder


def test_write_read_round_trip_and_bad_shapes(tmp_path):
    feats = np.arange(12, dtype=np.float64).reshape(3, 4)
    out = write_features(tmp_path / "x.h5", feats, coords=[[0, 0], [256, 0], [0, 256]], encoder="e",
                         magnification=20.0, patch_px=256, slide="s.svs", mpp=0.5)
    ff = read_features(out)
    assert ff.features.dtype == np.float32 and ff.coords.dtype == np.int64
    np.testing.assert_array_equal(ff.features, feats.astype(np.float32))
    assert ff.attrs["student_sha256"] == "" and ff.attrs["patch_px"] == 256
    with pytest.raises(MagaError, match="coords must be"):
        write_features(tmp_path / "bad.h5", feats, coords=[[0, 0]])
    assert not (tmp_path / "bad.h5").exists()
    with pytest.raises(MagaError, match="1 of 3 feature rows were never written"):
        with feature_writer(tmp_path / "partial.h5", 3, 4, encoder="e") as put:
            put(np.array([0, 2]), feats[[0, 2]])  # streamed batches; row 1 missing
    assert not list(tmp_path.glob("*partial*"))  # nothing half-written
    with pytest.raises(MagaError, match="x.txt: feature file not found"):
        read_features(tmp_path / "x.txt")


def test_slide_hdf5_layout_matches_direct_patch_features(tmp_path, cmu, model_5x):
    res = extract_slide(cmu, model_5x, tmp_path / "cmu.h5", batch_size=16, num_workers=1, progress=False)
    with h5py.File(res.out) as h5:
        assert set(h5) == {"features", "coords"}
        feats, coords = h5["features"], h5["coords"]
        assert feats.dtype == np.float32 and feats.shape == (res.n_patches, 1280)
        assert coords.dtype == np.int64 and coords.shape == (res.n_patches, 2)
        attrs = dict(h5.attrs)
    assert attrs["magnification"] == 5.0 and attrs["patch_px"] == 64
    assert attrs["encoder"] == ENCODER and attrs["student_sha256"] == ""
    assert attrs["slide"] == "cmu-1-small-region.svs" and attrs["mpp"] == pytest.approx(0.499, abs=1e-3)

    ff = read_features(res.out)
    with open_slide(cmu) as reader:
        grid = aligned_grid(reader, detect_tissue(reader, TissueConfig(thumb_mpp=EXTRACT_TISSUE_MPP)), (5.0,))
        np.testing.assert_array_equal(ff.coords, grid)  # the one grid shared by all magnifications
        w, h = reader.dimensions
        assert (ff.coords >= 0).all() and (ff.coords[:, 0] < w).all() and (ff.coords[:, 1] < h).all()
        # Worker-read batched features are the features of exactly these patches, in this order.
        picks = [0, len(ff.coords) // 2, len(ff.coords) - 1]
        patches = np.stack([read_patch(reader, tuple(ff.coords[i]), 5) for i in picks])
    assert patches.shape[1:] == (64, 64, 3)
    direct = model_5x(model_5x.preprocess(patches)).numpy()
    np.testing.assert_allclose(ff.features[picks], direct, rtol=1e-4, atol=1e-4)
    assert np.isfinite(ff.features).all() and ff.features.std(axis=0).mean() > 0  # patches differ


@pytest.fixture(scope="module")
def tile_folder(tmp_path_factory, data_file) -> Path:
    folder = tmp_path_factory.mktemp("tiles")
    for rel in ["test/LUAD/0_0_507.jpg", "test/LUAD/0_1_507.jpg", "test/LUSC/0_0_515.jpg"]:
        src = data_file("uni_tcga_luadlusc", rel)
        (folder / Path(rel).parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, folder / Path(rel).parent.name / Path(rel).name)
    return folder


def test_tile_folder_resampled_to_magnification(tmp_path, tile_folder, model_5x):
    folder = tile_folder
    res = extract_tiles(folder, model_5x, tmp_path / "tiles.h5", tile_mpp=0.5, batch_size=2, num_workers=0,
                        progress=False)
    ff = read_features(res.out)
    assert ff.paths == ["LUAD/0_0_507.jpg", "LUAD/0_1_507.jpg", "LUSC/0_0_515.jpg"]
    assert ff.coords is None and ff.features.shape == (3, 1280)
    assert ff.attrs["magnification"] == 5.0 and ff.attrs["mpp"] == 0.5
    # A 256 px tile at 0.5 um/px is fed as the 64 px 5x patch (area average, like slide patches).
    from PIL import Image

    tile = np.array(Image.open(folder / ff.paths[2]).convert("RGB").resize((64, 64), Image.Resampling.BOX))
    np.testing.assert_allclose(ff.features[2], model_5x(model_5x.preprocess(tile[None]))[0].numpy(),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(MagaError, match="needs --mpp"):
        extract_batch(ExtractConfig(ENCODER, str(folder), str(tmp_path / "o"), mag=5, progress=False))


def test_student_brings_its_magnification_pipeline_and_sha(tmp_path, tile_folder):
    from maga_core.align import AlignConfig, train
    from maga_core.encoders.registry import file_sha256

    ckpt = train(AlignConfig(teacher=ENCODER, mag=5, mode="native", tiles=[str(tile_folder)], tile_mpp=0.5,
                             epochs=1, batch_size=3), tmp_path / "student.pt", progress=False)
    model = load_model(ENCODER, student=ckpt)
    assert (model.mag, model.patch_px, model.student_sha256) == (5.0, 64, file_sha256(ckpt))
    res = extract_tiles(tile_folder, model, tmp_path / "s.h5", tile_mpp=0.5, num_workers=0, progress=False)
    ff = read_features(res.out)
    assert ff.attrs["student_sha256"] == file_sha256(ckpt) and ff.attrs["patch_px"] == 64
    with pytest.raises(MagaError, match="student takes 5x patches, not --mag 20"):
        load_model(ENCODER, mag=20, student=ckpt)
    with pytest.raises(MagaError, match="not --encoder 'resnet50_trunc'"):
        load_model("resnet50_trunc", student=ckpt)


class _BadPatch:
    """Patch 5 cannot be read, as when a slide's tile data is corrupt past its header."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> np.ndarray:
        if i == 5:
            raise MagaError("cannot read pixels at (1280, 0) level 0", "bad.svs")
        return np.full((64, 64, 3), 200, dtype=np.uint8)


def test_error_in_a_reader_worker_becomes_one_line(model_5x):
    with pytest.raises(MagaError) as info:
        embed(_BadPatch(), model_5x, batch_size=2, num_workers=1, progress=False)
    assert one_line_cause(info.value, Path("bad.svs")) == "bad.svs: cannot read pixels at (1280, 0) level 0"


def _run_cli(folder: Path, out: Path, capsys) -> tuple[int, dict, str]:
    rc = cli.main(["extract", "--encoder", ENCODER, "--mag", "5", "--input", str(folder), "--out", str(out),
                   "--batch-size", "32", "--workers", "1", "--no-progress"])
    text = capsys.readouterr().out
    return rc, json.loads((out / "extract_report.json").read_text()), text


def test_batch_survives_corrupt_slides_and_resumes(tmp_path, cmu, capsys):
    folder = _slide_folder(tmp_path, cmu, ["a.svs", "sub/b.svs"])
    data = cmu.read_bytes()
    (folder / "c_truncated.svs").write_bytes(data[: len(data) // 3])
    (folder / "d_text.svs").write_text("not a slide\n")
    out = tmp_path / "out"

    rc, report, text = _run_cli(folder, out, capsys)
    assert rc == 1  # some failed
    assert sorted(Path(r["out"]).relative_to(out).as_posix() for r in report["done"]) == ["a.h5", "sub/b.h5"]
    assert set(report["failed"]) == {str(folder / "c_truncated.svs"), str(folder / "d_text.svs")}
    assert "truncated" in report["failed"][str(folder / "c_truncated.svs")]
    assert "failed 2" in text and "c_truncated.svs" in text and "d_text.svs" in text
    assert not list(out.rglob("*.tmp")) and not (out / "c_truncated.h5").exists()
    assert read_features(out / "sub" / "b.h5").features.shape[1] == 1280

    # Resume: finished slides are skipped (untouched), only the missing one is redone.
    mtime_b = (out / "sub" / "b.h5").stat().st_mtime_ns
    (out / "a.h5").unlink()
    rc, report, _ = _run_cli(folder, out, capsys)
    assert rc == 1 and [Path(r["slide"]).name for r in report["done"]] == ["a.svs"]
    assert report["skipped"] == [str(out / "sub" / "b.h5")]
    assert (out / "sub" / "b.h5").stat().st_mtime_ns == mtime_b
    assert json.loads((out / "config.json").read_text())["kind"] == "ExtractConfig"


def test_bad_arguments_are_one_line_errors(tmp_path, cmu, capsys):
    rc = cli.main(["extract", "--encoder", ENCODER, "--input", str(cmu), "--out", str(tmp_path / "o")])
    assert rc == 2 and "--mag is required" in capsys.readouterr().err
    with pytest.raises(MagaError, match="input not found"):
        plan(ExtractConfig(ENCODER, str(tmp_path / "missing"), str(tmp_path / "o"), mag=5))
    folder = _slide_folder(tmp_path, cmu, ["a.svs"])
    with pytest.raises(MagaError, match="needs an output folder"):
        plan(ExtractConfig(ENCODER, str(folder), str(tmp_path / "o.h5"), mag=5))


def _rank_main(rank: int, world: int, init_file: str, folder: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        report = extract_batch(ExtractConfig(ENCODER, folder, out, mag=5, batch_size=32, num_workers=0,
                                             progress=False))
        Path(out, f"written.rank{rank}.json").write_text(json.dumps([r.out for r in report.done]))
    finally:
        torch.distributed.destroy_process_group()


def test_sharding_by_rank_over_two_gloo_processes(tmp_path, cmu):
    names = ["s1.svs", "s2.svs", "s3.svs"]
    folder = _slide_folder(tmp_path, cmu, names)
    out = tmp_path / "out"
    out.mkdir()
    torch.multiprocessing.spawn(_rank_main, args=(2, str(tmp_path / "pg"), str(folder), str(out)), nprocs=2,
                                join=True)
    written = {r: json.loads((out / f"written.rank{r}.json").read_text()) for r in (0, 1)}
    expected = [str(out / n.replace(".svs", ".h5")) for n in names]
    assert written[0] == expected[0::2] and written[1] == expected[1::2]  # each rank only its share
    assert sorted(p.name for p in out.glob("*.h5")) == ["s1.h5", "s2.h5", "s3.h5"]  # together: all
    for r in (0, 1):
        assert json.loads((out / f"extract_report.rank{r}.json").read_text())["world_size"] == 2


def test_bench_datapath_json_holds_wall_and_cpu_time(tmp_path, capsys):
    """`maga bench datapath --json` prints only JSON; each magnification's steady slides carry wall and CPU
    time, and the CPU time of two slides cannot exceed what the machine's cores can give in that wall time."""
    import os

    rc = cli.main(["bench", "datapath", "--json", "--size", "1024", "--slides", "2", "--out", str(tmp_path / "d.json")])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((tmp_path / "d.json").read_text())
    for mag in ("20x", "5x"):
        steady = result["results"]["ours"][mag]["steady"]
        assert steady["seconds_per_slide"] > 0 and steady["cpu_seconds_per_slide"] > 0
        assert 0 < steady["cores_busy"] <= 1.25 * (os.cpu_count() or 1)
    hi, lo = (result["results"]["ours"][m]["steady"] for m in ("20x", "5x"))
    assert result["cpu_ratio_20x_over_5x"] == pytest.approx(
        hi["cpu_seconds_per_slide"] / lo["cpu_seconds_per_slide"], rel=0.05)  # both rounded
    assert result["meets_ratio_target"] == (result["ratio_20x_over_5x"] >= result["targets"]["ratio_20x_over_5x"])


def test_bench_extract_reports_every_field(tmp_path, capsys):
    """Schema only (timings are not asserted): a tiny generated slide, one encoder, short timings."""
    from maga.bench.registry import discover

    assert "extract" in discover()
    rc = cli.main(["bench", "extract", "--json", "--size", "1024", "--encoders", ENCODER, "--repeats", "1",
                   "--workers", "1", "--baseline", "--out", str(tmp_path / "bench.json")])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result == json.loads((tmp_path / "bench.json").read_text())
    prov = result["provenance"]  # the record names its command, configuration and code
    assert prov["command"].startswith("maga bench extract --json --size 1024")
    assert prov["config"]["size"] == 1024 and "maga/bench/extract.py" in prov["modules"]
    row = result["encoders"][ENCODER]
    for key in ("model_only_tiles_per_s", "pipeline_tiles_per_s", "pipeline_efficiency", "slide_seconds_20x",
                "slide_seconds_5x", "ratio_20x_over_5x"):
        assert row[key] > 0, key
    assert row["random_init"] is False and result["slide"]["patches"] > 0
    assert row["pipeline_tiles_per_s"] == pytest.approx(result["slide"]["patches"] / row["slide_seconds_20x"], rel=1e-3)
    base = result["baseline"]  # the CLAM-style loop on the same patches, in its own process
    for key in ("tiles_per_s", "model_only_tiles_per_s", "pipeline_efficiency", "peak_rss_mb"):
        assert base[key] > 0, key
    assert row["speedup_over_baseline"] == pytest.approx(row["pipeline_tiles_per_s"] / base["tiles_per_s"], rel=1e-3)
    assert row["peak_rss_mb"] >= row["peak_single_process_rss_mb_20x"] > 100  # torch alone is more than that


def test_upsampled_encoder_sees_its_low_magnification_patch_at_full_size(model_5x):
    """The 5x-upsampled baseline: 64 px patches resized (bilinear) to 256 px before the teacher."""
    import torch.nn.functional as F

    from maga.extract import upsampled

    up = upsampled(model_5x, 256)
    patches = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = up.preprocess(patches)
    assert x.shape == (2, 3, 256, 256) and (up.mag, up.patch_px) == (5.0, 64)
    raw = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255
    big = F.interpolate(raw, size=(256, 256), mode="bilinear", align_corners=False)
    direct = model_5x.preprocess(np.ascontiguousarray((big * 255).round().byte().permute(0, 2, 3, 1).numpy()))
    assert torch.allclose(x, direct, atol=0.05)  # same normalisation; only the uint8 rounding differs
    assert up(x).shape == (2, model_5x.dim)
