"""MAGA: low-magnification views, the loss, the student's input pipeline, a short real alignment run that
lowers the loss, and an interrupted run that resumes to the same weights as an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maga_core import encoders
from maga_core.errors import MagaError
from maga_core.maga import AlignConfig, InputPipeline, MagaLoss, load_student, low_mag_view, resolve_weights, train
from maga_core.maga.tilesource import read_tile, resolve_tiles

TCGA_TRAIN = "uni_tcga_luadlusc:train"


@pytest.fixture(scope="module")
def real_tile():
    from maga_core.data import manifests

    try:
        return read_tile(manifests.fetch("uni_tcga_luadlusc", "train/LUAD/0_0_521.jpg"))
    except MagaError as exc:
        pytest.skip(str(exc))


def test_low_mag_view_is_antialiased_view_of_the_same_tissue(real_tile):
    view = low_mag_view(real_tile, high_mag=20, mag=5).astype(float)
    assert view.shape == (64, 64, 3)
    block_mean = real_tile.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
    point_sampled = real_tile[1::4, 1::4].astype(float)
    # low-pass like an area average (what a lower pyramid level holds), far from point sampling
    assert np.abs(view - block_mean).mean() < 0.5 * np.abs(point_sampled - block_mean).mean()
    assert abs(view.mean() - real_tile.mean()) < 1.0
    assert low_mag_view(real_tile, 20, 10).shape == (128, 128, 3)


def test_default_loss_weights_are_upstream_mapped_onto_taps():
    spec = encoders.spec("efficientnet_lite0")
    assert resolve_weights(spec) == {"blocks.1": 1.0, "blocks.2": 5.0, "blocks.4": 10.0, "pooled": 200.0}
    assert resolve_weights(encoders.spec("resnet50_trunc")) == {"layer1": 1.0, "layer2": 5.0, "layer3": 10.0,
                                                                 "pooled": 200.0}
    custom = resolve_weights(spec, taps=["blocks.1", "blocks.2", "blocks.4", "blocks.6"], pooled_weight=1.0)
    assert custom == {"blocks.1": 1.0, "blocks.2": 5.0, "blocks.4": 10.0, "blocks.6": 10.0, "pooled": 1.0}


def test_loss_pools_teacher_maps_to_student_size_and_weights_l1():
    loss = MagaLoss({"a": 1.0, "pooled": 200.0})
    teacher_map = torch.tensor([[1.0, 3.0], [5.0, 7.0]]).repeat(4, 4)[None, None]  # 8x8, 2x2 blocks mean 4
    student = {"a": torch.full((1, 1, 4, 4), 4.5), "pooled": torch.zeros(1, 3)}
    teacher = {"a": teacher_map, "pooled": torch.full((1, 3), 0.01)}
    total, parts = loss(student, teacher)
    assert parts["a"] == pytest.approx(0.5) and parts["pooled"] == pytest.approx(0.01)
    assert float(total) == pytest.approx(0.5 + 200 * 0.01)


def test_loss_on_real_encoder_taps_small_inputs():
    enc = encoders.build("efficientnet_lite0")
    weights = resolve_weights(enc.spec)
    loss = MagaLoss(weights)
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        t = enc.taps(x, loss.taps)
        same, _ = loss(enc.taps(torch.nn.functional.avg_pool2d(x, 4), loss.taps), t)  # 5x view of x
        self_loss, parts = loss(t, t)
    assert float(self_loss) == 0.0 and set(parts) == set(weights)
    assert float(same) > 0


def test_input_pipeline_native_and_upsample():
    mean, std = (0.5,) * 3, (0.25,) * 3
    patches = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    native = InputPipeline("native", 64, 256, mean, std)(patches)
    up = InputPipeline("upsample", 64, 256, mean, std)(patches)
    assert native.shape == (3, 3, 64, 64) and up.shape == (3, 3, 256, 256)
    assert torch.allclose(native[0, :, 0, 0], (torch.from_numpy(patches[0, 0, 0]).float() / 255 - 0.5) / 0.25)
    # patches of another size are area-resampled to the student's size first
    assert InputPipeline("native", 64, 256, mean, std)(list(patches.repeat(2, 1).repeat(2, 2))).shape[-1] == 64
    with pytest.raises(ValueError):
        InputPipeline("bicubic", 64, 256, mean, std)


def test_tile_sources_bad_input():
    with pytest.raises(MagaError, match="neither a folder"):
        resolve_tiles(["no_such_dataset"])
    with pytest.raises(MagaError, match="no split"):
        resolve_tiles(["uni_tcga_luadlusc:validation"])


def _cfg(**kw):
    base = dict(tiles=[TCGA_TRAIN], max_tiles=16, epochs=2, batch_size=8, seed=3)
    return AlignConfig(**{**base, **kw})


def _maga_loss(student_prepare, student, teacher, tiles):
    """MAGA loss of a student on real tiles (teacher at 20x, student on the 4x-downsampled view)."""
    loss = MagaLoss(resolve_weights(teacher.spec))
    low = np.stack([low_mag_view(t, 20, 5) for t in tiles])
    with torch.no_grad():
        return float(loss(student.taps(student_prepare(low), loss.taps),
                          teacher.taps(teacher.transform(np.stack(tiles)), loss.taps))[0])


def test_real_alignment_run_lowers_the_loss(tmp_path):
    paths = resolve_tiles([TCGA_TRAIN], max_tiles=24, seed=0)
    cfg = _cfg(max_tiles=24, batch_size=6, seed=0)
    out = train(cfg, tmp_path / "student.pt", progress=False)
    student = load_student(out)
    assert (student.input_mag, student.input_px, student.mode) == (5.0, 64, "native")
    assert student.teacher["name"] == "efficientnet_lite0" and len(student.sha256) == 64
    hist = student.history
    assert [h["epoch"] for h in hist] == [1, 2] and hist[1]["loss"] < hist[0]["loss"]
    assert {"l1/blocks.1", "l1/blocks.2", "l1/blocks.4", "l1/pooled"} <= set(hist[0])
    assert (tmp_path / "student.history.csv").is_file() and (tmp_path / "student.config.json").is_file()

    teacher = encoders.build("efficientnet_lite0")
    tiles = [read_tile(p) for p in paths]
    before = _maga_loss(student.prepare, teacher, teacher, tiles)  # the untrained copy of the teacher
    after = _maga_loss(student.prepare, student, teacher, tiles)
    assert after < before


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    from maga_core.cli import main

    full = tmp_path / "full.pt"
    assert main(["align", "--teacher", "efficientnet_lite0", "--mag", "5", "--mode", "native", "--tiles", TCGA_TRAIN,
                 "--max-tiles", "16", "--epochs", "2", "--batch-size", "8", "--seed", "3", "--out", str(full)]) == 0

    class Killed(Exception):
        pass

    def kill_after_first(epoch, row):
        if epoch == 1:
            raise Killed

    part = tmp_path / "part.pt"
    with pytest.raises(Killed):
        train(_cfg(), part, progress=False, on_epoch_end=kill_after_first)
    with pytest.raises(MagaError, match="stopped after epoch 1"):
        load_student(part)
    first_epoch = torch.load(part, weights_only=False)["history"][0]
    seen = []
    train(_cfg(), part, progress=False, on_epoch_end=lambda e, r: seen.append(e))
    assert seen == [2]  # epoch 1 was not redone
    a = torch.load(full, weights_only=False)
    b = torch.load(part, weights_only=False)
    assert b["history"][0] == first_epoch
    assert a["student"].keys() == b["student"].keys()
    assert all(torch.equal(a["student"][k], b["student"][k]) for k in a["student"])
    # a finished checkpoint is returned as is; another configuration is refused, not overwritten
    assert train(_cfg(), part, progress=False) == part
    with pytest.raises(MagaError, match="different configuration"):
        train(_cfg(lr=1e-3), part, progress=False)


@pytest.mark.notebooks
def test_maga_chapters_run_with_the_smoke_preset(smoke_book):
    """Chapter 02 trained the smoke students; chapter 03 reused them (same runs folder) for its report."""
    import json

    assert {"02_maga_training", "03_feature_quality"} <= {p.stem for p in smoke_book.executed}
    students = list((smoke_book.runs / "maga_students").glob("*.pt"))
    assert len(students) >= 2
    results = json.loads((smoke_book.runs / "maga_probe" / "results.json").read_text())
    assert set(results["tasks"]) == {"tcga_luad_vs_lusc", "lc25000_aca_vs_scc"}
