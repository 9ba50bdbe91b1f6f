"""The application pieces the chapters' walkthroughs call: chapter 03's probe on held-out tiles, chapter
04's view of one cross-validation and chapter 06's distillation steps, each equal to what the cached run does."""

from __future__ import annotations

import numpy as np
import pytest

from maga_core import encoders, stats
from maga_core.align.tilesource import read_tile
from maga_core.align.views import view_at_mag
from maga_core.errors import MagaError


def test_one_probe_on_held_out_tiles(data_file):
    from maga.alignment.probe import (TASKS, ProbeConfig, compute_features, probe_folds, probe_scores, task_labels,
                                      task_tiles, tile_views)

    data_file("uni_tcga_luadlusc", "train/LUAD/0_0_521.jpg")
    cfg = ProbeConfig(max_tiles_per_class=6, modes=[])
    table = task_tiles(TASKS["tcga_luad_vs_lusc"], cfg)
    assert set(table["split"]) == {"test"} and table["class"].value_counts().tolist() == [6, 6]
    high, low = tile_views(table, cfg)
    assert high.shape == (12, 256, 256, 3) and low.shape == (12, 64, 64, 3) and low.dtype == np.uint8
    assert np.array_equal(low[3], view_at_mag(read_tile(table["path"][3]), cfg.tile_mpp, cfg.mag))
    y, groups = task_labels(table)
    assert y.tolist() == (table["class"] == "squamous").astype(int).tolist()
    folds = probe_folds(y, groups, cfg.probe_folds, cfg.seed)
    for train, test in folds:  # every case lies on one side of every fold
        assert not set(groups[train]) & set(groups[test])
    teacher = encoders.build(cfg.teacher).eval()
    feats = compute_features(cfg, teacher, {}, high, low)
    assert set(feats) == {"teacher_20x", "teacher_5x", "teacher_5x_upsampled"}
    scores = probe_scores(feats["teacher_20x"], y, folds, cfg.probe_c)
    assert scores.shape == (12,) and ((0 <= scores) & (scores <= 1)).all()
    assert 0.0 <= stats.auc(y, scores) <= 1.0


def test_cv_config_is_the_run_of_one_model_in_one_setting(tmp_path):
    from maga.experiments.mil import ExperimentConfig, cv_config, cv_dir

    cfg = ExperimentConfig.from_dict({"cohort": {"task": "lesion", "folds": 3}, "models": ["gltrans", "gltrans@coords"],
                                      "placement_settings": ["5x_maga"], "bootstrap": 20,
                                      "train": {"gltrans": {"model_kw": {"dim": 32}, "max_epochs": 4}},
                                      "candidates": {"gltrans@coords": [{"grad_accum": 1}, {"grad_accum": 2}]}})
    cv = cv_config(cfg, tmp_path, "5x_maga", "gltrans@coords")
    assert (cv.model, cv.folds, cv.bootstrap, cv.train.max_epochs) == ("gltrans", 3, 20, 4)
    assert cv.train.model_kw == {"dim": 32, "placement": "coords"} and len(cv.candidates) == 2
    assert cv.out == str(cv_dir(tmp_path, cfg, "5x_maga", "gltrans@coords"))
    assert cv.features == str(tmp_path / "features" / "5x_maga")
    with pytest.raises(MagaError, match="no gltrans@coords at 20x"):
        cv_config(cfg, tmp_path, "20x", "gltrans@coords")


def test_chapter_06_steps_are_the_distillation_runs_first_steps(tmp_path, data_file):
    """`setup`, `epoch_order`, `batch_views` and `step` called by hand give the run's own first losses."""
    from maga.distill.train import DistillConfig, batch_views, distill, epoch_order, setup, step

    data_file("lc25000_lung_224_dedup", "lung_aca/lungaca100.jpeg")
    cfg = DistillConfig(max_tiles=8, epochs=1, batch_size=4, teacher_px=64, input_px=48, device="cpu",
                        precision="fp32")
    run = setup(cfg, tmp_path / "by_hand", progress=False)
    batches = epoch_order(run, 0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(8)) and [len(b) for b in batches] == [4, 4]
    student_views, teacher_views = batch_views(run, batches[0], 0)
    assert student_views[0].shape == (48, 48, 3) and teacher_views[0].shape == (64, 64, 3)
    by_hand = [step(run, b, 0) for b in batches]
    whole = distill(cfg, tmp_path / "run.pt", progress=False)
    assert by_hand == whole.history[0]["step_losses"]
