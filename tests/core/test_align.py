"""MAGA: low-magnification views, the loss, the student's input pipeline, a short real alignment run that
lowers the loss, and an interrupted run that resumes to the same weights as an uninterrupted one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maga_core import encoders
from maga_core.errors import MagaError
from maga_core.align import (AlignConfig, InputPipeline, MagaLoss, load_student, low_mag_view, resolve_weights, train,
                             view_at_mag)
from maga_core.align.tilesource import read_tile, resolve_tiles

TCGA_TRAIN = "uni_tcga_luadlusc:train"


@pytest.fixture(scope="module")
def real_tile():
    from maga_core.data import manifests

    try:
        return read_tile(manifests.fetch("uni_tcga_luadlusc", "train/LUAD/0_0_521.jpg"))
    except MagaError as exc:
        pytest.skip(str(exc))


def test_low_mag_view_is_area_average_of_the_same_tissue(real_tile):
    view = low_mag_view(real_tile, high_mag=20, mag=5).astype(float)
    assert view.shape == (64, 64, 3)
    block_mean = real_tile.reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
    point_sampled = real_tile[1::4, 1::4].astype(float)
    # low-pass like an area average (what a lower pyramid level holds), far from point sampling
    assert np.abs(view - block_mean).mean() < 0.5 * np.abs(point_sampled - block_mean).mean()
    assert abs(view.mean() - real_tile.mean()) < 1.0
    assert low_mag_view(real_tile, 20, 10).shape == (128, 128, 3)
    # a tile's magnification view depends on its MPP: 224 px at 0.5 um/px is 56 px at 5x
    assert view_at_mag(real_tile[:224, :224], 0.5, 5).shape == (56, 56, 3)
    assert view_at_mag(real_tile, 0.25, 20).shape == (128, 128, 3)


def test_default_loss_weights_per_encoder():
    spec = encoders.spec("efficientnet_lite0")
    assert resolve_weights(spec) == {**{f"blocks.{i}": 1.0 for i in range(7)}, "pooled": 50.0}
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
    patches = np.random.default_rng(0).integers(0, 256, (3, 56, 56, 3), dtype=np.uint8)
    native = InputPipeline("native", 64, 256, mean, std)(patches)
    up = InputPipeline("upsample", 64, 256, mean, std)(patches)
    # the patch is never resampled to the nominal 64 px: a 56 px view (224 px tile at 5x) stays 56 px, and
    # upsampling scales by the magnification ratio, back to the 224 px the teacher saw
    assert native.shape == (3, 3, 56, 56) and up.shape == (3, 3, 224, 224)
    assert torch.allclose(native[0, :, 0, 0], (torch.from_numpy(patches[0, 0, 0]).float() / 255 - 0.5) / 0.25)
    with pytest.raises(ValueError):
        InputPipeline("bicubic", 64, 256, mean, std)


def test_training_and_extraction_see_the_same_pixels(tmp_path):
    """Same bytes in, same tensor out: a tile's 20x and 5x views, and the student's input tensor, are
    identical whether made by the trainer (TileViews + its pipeline) or by `maga extract` on a tile folder
    (TileImages + the checkpoint's pipeline)."""
    from maga.extract import TileImages, load_model
    from maga_core.align.train import TileViews, make_pipeline

    paths = resolve_tiles(["lc25000_lung_224_dedup:test"], max_tiles=3, seed=0)  # 224 px tiles
    cfg = AlignConfig(tiles=["lc25000_lung_224_dedup:test"], tile_mpp=0.5, max_tiles=3, epochs=1, batch_size=3,
                      augment="none")
    ckpt = train(cfg, tmp_path / "s.pt", progress=False)
    model = load_model("efficientnet_lite0", student=ckpt)
    teacher = load_model("efficientnet_lite0", mag=20)
    train_views = TileViews(paths, 0.5, 20.0, 5.0)
    pipeline = make_pipeline(cfg, encoders.spec("efficientnet_lite0"))
    for i in range(len(paths)):
        _, _, high, low = train_views[(i, 0)]
        assert low.shape == (56, 56, 3) and high.shape == (224, 224, 3)
        assert np.array_equal(low.numpy(), TileImages(paths, 0.5, 5.0)[i])
        assert np.array_equal(high.numpy(), TileImages(paths, 0.5, 20.0)[i])
        assert torch.equal(pipeline(low[None]), model.preprocess(TileImages(paths, 0.5, 5.0)[i][None]))
        assert torch.equal(teacher.preprocess(high[None].numpy()), teacher.preprocess(TileImages(paths, 0.5, 20.0)[i][None]))


def test_tile_sources_bad_input():
    with pytest.raises(MagaError, match="neither a folder"):
        resolve_tiles(["no_such_dataset"])
    with pytest.raises(MagaError, match="no split"):
        resolve_tiles(["uni_tcga_luadlusc:validation"])


def test_validation_folds_split_the_train_cases_only():
    """Settings are chosen on folds of the train split: each case in one fold, both classes in every fold,
    fitK + valK = train, and the test split never appears."""
    from maga_core.data.tiles import VALIDATION_FOLDS, select_split, tile_table

    table = tile_table("uni_tcga_luadlusc")
    train = set(select_split(table, "train")["path"])
    seen = set()
    for k in range(VALIDATION_FOLDS):
        val, fit = select_split(table, f"val{k}"), select_split(table, f"fit{k}")
        assert set(val["path"]) | set(fit["path"]) == train and not set(val["group"]) & set(fit["group"])
        assert val.groupby("class")["group"].nunique().min() >= 2  # a case-wise probe needs 2 cases per class
        seen |= set(val["path"])
    assert seen == train
    assert len(resolve_tiles(["uni_tcga_luadlusc:val0,fit0"])) == len(train)
    with pytest.raises(MagaError, match="no split 'fit9'"):
        resolve_tiles(["uni_tcga_luadlusc:fit9"])


def test_dihedral_augment_transforms_both_views_alike(real_tile):
    """Each of the 8 symmetries gives a different image, and transforming the tile then taking the 5x view
    equals taking the view then transforming it (to one grey level: PIL's box filter rounds its two passes
    in a fixed order): the teacher's targets match what the student sees."""
    from maga_core.align.train import AUGMENTS, _transform

    assert len(AUGMENTS["dihedral"]) == 8 and set(AUGMENTS["flips"]) < set(AUGMENTS["dihedral"])
    images = {_transform(real_tile, how).tobytes() for how in AUGMENTS["dihedral"]}
    assert len(images) == 8
    for how in AUGMENTS["dihedral"]:
        a = view_at_mag(_transform(real_tile, how), 0.5, 5.0).astype(int)
        assert np.abs(a - _transform(view_at_mag(real_tile, 0.5, 5.0), how)).max() <= 1


def test_align_cli_leaves_training_defaults_to_alignconfig():
    """`maga align` without options trains with AlignConfig's defaults (the ones chosen by maga.alignment.select)."""
    from maga.cli import build_parser

    args = build_parser().parse_args(["align", "--tiles", TCGA_TRAIN, "--out", "x.pt"])
    assert all(getattr(args, k) is None for k in ("epochs", "batch_size", "seed", "lr", "augment"))


def test_selection_scores_candidates_on_validation_folds_only(tmp_path):
    """A tiny `maga bench maga-select`: students train on fitK and are probed on valK of both tasks."""
    from maga.alignment.select import run_selection

    r = run_selection(tmp_path, {"a": {"epochs": 1}, "b": {"epochs": 1, "augment": "none"}}, folds=1,
                      progress=False, max_train_tiles=8, max_tiles_per_class=4, n_boot=20)
    assert r["chosen"] in ("a", "b") and set(r["score"]) == {"a", "b"}
    rows = r["rows"]
    assert {(x["candidate"], x["task"]) for x in rows} == {(c, t) for c in "ab"
                                                           for t in ("tcga_luad_vs_lusc", "lc25000_aca_vs_scc")}
    saved = (tmp_path / "maga_select" / "a" / "fold0" / "config.json").read_text()
    assert '"eval_split": "val0"' in saved and ":fit0" in saved and ":train" not in saved


def _cfg(**kw):
    base = dict(tiles=[TCGA_TRAIN], max_tiles=16, epochs=2, batch_size=8, seed=3)
    return AlignConfig(**{**base, **kw})


def test_real_alignment_run_freezes_batchnorm_and_brings_heldout_5x_features_to_20x(tmp_path, monkeypatch):
    """A short real run: the loss falls, no BatchNorm running statistic moves in either network, and on
    held-out TCGA tiles (other cases) the student's 5x features come closer to the teacher's 20x features
    than the teacher's own 5x features are."""
    import importlib

    from maga.alignment.probe import cosine, encode

    maga_train = importlib.import_module("maga_core.align.train")  # the module (the package exports train())
    built = []
    monkeypatch.setattr(maga_train, "build", lambda *a, **k: built.append(encoders.build(*a, **k)) or built[-1])
    fresh = encoders.build("efficientnet_lite0")
    stats = {k: v.clone() for k, v in fresh.state_dict().items() if "running" in k}
    out = train(_cfg(max_tiles=48, batch_size=8, seed=0, epochs=3, lr=1e-3), tmp_path / "student.pt", progress=False)
    student = load_student(out)
    assert (student.input_mag, student.input_px, student.mode) == (5.0, 64, "native")
    assert student.teacher["name"] == "efficientnet_lite0" and len(student.sha256) == 64
    hist = student.history
    assert [h["epoch"] for h in hist] == [1, 2, 3] and hist[-1]["loss"] < hist[0]["loss"]
    assert {f"l1/{t}" for t in student.loss_weights} <= set(hist[0])
    assert (tmp_path / "student.history.csv").is_file() and (tmp_path / "student.config.json").is_file()
    for net in (built[0], student):
        state = net.state_dict()
        assert all(torch.equal(state[k], v) for k, v in stats.items()), "a BatchNorm running statistic moved"

    held_out = [read_tile(p) for p in resolve_tiles(["uni_tcga_luadlusc:test"], max_tiles=24, seed=0)]
    high = np.stack(held_out)
    low = np.stack([low_mag_view(t, 20, 5) for t in held_out])
    ref = encode(fresh, fresh.transform, high)
    before = cosine(encode(fresh, fresh.transform, low), ref).mean()
    after = cosine(encode(student, student.prepare, low), ref).mean()
    assert after > before + 0.1, (before, after)


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    from maga.cli import main

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
    for task in results["tasks"].values():  # held-out tiles only, probed by case-wise cross-validation
        assert task["probe_folds"] >= 2 and set(task["recovered"]) == {"maga_5x_native", "maga_5x_upsample"}
        assert all(set(r) == {"teacher_5x", "teacher_5x_upsampled"} for r in task["recovered"].values())


def test_walkthrough_step_is_the_step_train_takes(tmp_path):
    """Chapter 02's walkthrough pieces (views, teacher targets, loss, one step) reproduce one epoch of
    `train` on a single batch: the same loss before the step, and the same student after it."""
    from maga_core.align.train import (TileViews, batch_loss, frozen_teacher, make_optimizer, make_pipeline,
                                       make_student, tap_shapes, teacher_targets, train_step, view_batch)

    cfg = _cfg(max_tiles=4, epochs=1, batch_size=4, augment="none", lr=1e-3)
    trained = torch.load(train(cfg, tmp_path / "one_step.pt", progress=False), weights_only=False)

    tiles = resolve_tiles(cfg.tiles, cfg.max_tiles, cfg.seed)
    high, low = view_batch(TileViews(tiles, 0.5, cfg.high_mag, cfg.mag), range(len(tiles)))
    assert (tuple(high.shape), tuple(low.shape)) == ((4, 256, 256, 3), (4, 64, 64, 3))
    teacher = frozen_teacher(cfg.teacher)
    student = make_student(teacher)
    assert not any(p.requires_grad for p in teacher.parameters()) and not student.training
    pipeline = make_pipeline(cfg, teacher.spec)
    loss_fn = MagaLoss(resolve_weights(teacher.spec))
    targets = teacher_targets(teacher, high, tap_shapes(student, pipeline, low.shape[1:3], loss_fn.taps))
    optimizer, _ = make_optimizer(student, cfg)
    before, parts = train_step(student, pipeline, loss_fn, optimizer, low, targets)
    before, parts = float(before), {t: float(v) for t, v in parts.items()}
    assert before == pytest.approx(trained["history"][0]["loss"], rel=1e-4)
    assert set(parts) == set(loss_fn.taps) and before == pytest.approx(
        sum(loss_fn.weights[t] * v for t, v in parts.items()), rel=1e-5)
    after, _ = batch_loss(student, pipeline, loss_fn, low, targets)
    assert after.item() < before
    stepped = make_student(teacher)
    stepped.load_state_dict(trained["student"])
    assert batch_loss(stepped, pipeline, loss_fn, low, targets)[0].item() == pytest.approx(after.item(), rel=1e-3)
