"""`maga align` decodes its tiles once: the in-memory views equal the views decoded per item, bad files are
skipped and named, and the teacher's targets computed many views at a time equal one view at a time."""

from __future__ import annotations

import shutil

import numpy as np
import torch

from maga_core import encoders
from maga_core.align.loss import resolve_weights
from maga_core.align.tilesource import resolve_tiles
from maga_core.align.train import AUGMENTS, AlignConfig, TeacherTargets, TileViews, decode_views, make_pipeline


def test_views_decoded_once_equal_views_decoded_per_item_and_bad_files_are_named(tmp_path):
    paths = resolve_tiles(["lc25000_lung_224_dedup:test"], max_tiles=3, seed=1)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    copied = [shutil.copy(p, tmp_path / f"t{i}.jpg") for i, p in enumerate(paths)]
    good, sizes, skipped, decoded = decode_views([bad, *map(type(bad), copied)], 0.5, 20.0, 5.0)
    assert len(good) == 3 and sizes == [224] * 3 and decoded is not None
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]
    held = TileViews(good, 0.5, 20.0, 5.0, AUGMENTS["flips"], decoded)
    fresh = TileViews(good, 0.5, 20.0, 5.0, AUGMENTS["flips"])
    for i in range(3):
        for t in range(len(AUGMENTS["flips"])):
            for a, b in zip(held[(i, t)][2:], fresh[(i, t)][2:]):
                assert torch.equal(a, b)
    assert decode_views(good, 0.5, 20.0, 5.0, budget_mb=0)[3] is None  # over budget: decoded per item


def test_teacher_targets_in_batches_equal_one_view_at_a_time():
    paths = resolve_tiles(["lc25000_lung_224_dedup:test"], max_tiles=3, seed=2)
    good, _, _, decoded = decode_views(paths, 0.5, 20.0, 5.0)
    data = TileViews(good, 0.5, 20.0, 5.0, AUGMENTS["flips"], decoded)
    torch.manual_seed(0)
    teacher = encoders.build("efficientnet_lite0", "random").eval()
    cfg = AlignConfig(tiles=["x"])
    taps = list(resolve_weights(teacher.spec, None, None, None))
    pipeline = make_pipeline(cfg, teacher.spec)
    targets = TeacherTargets(teacher, teacher, pipeline, data, taps, 1024, False, batch=5)
    assert len(targets.cache) == 3 * 4
    for i, t in [(0, 0), (1, 3), (2, 1)]:
        _, _, high, low = data[(i, t)]
        one = targets.compute(high[None], low.shape[:2])
        for k in taps:
            assert torch.allclose(targets.cache[(i, t)][k], one[k][0], atol=1e-4, rtol=1e-4)
    assert not np.shares_memory(data[(0, 1)][2].numpy(), decoded[0][0])  # transforms copy, never alias
