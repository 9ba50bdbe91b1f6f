"""The real-tile cohort: leakage-free folds, slides that reopen at 0.5 um/px with tiles where the manifest says."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from maga_core.errors import MagaError
from maga.experiments.tile_slides import CohortConfig, build_cohort, ensure_cohort, plan_cohort

pytestmark = pytest.mark.usefixtures("lc25000")


@pytest.fixture(scope="module")
def lc25000(data_file):
    """The cohort draws on both tile collections: skip (fail under CI) when they are absent."""
    data_file("lc25000_lung_224_dedup", "lung_n/lungn1.jpeg")
    data_file("uni_tcga_luadlusc", "train/LUAD/0_0_521.jpg")


@pytest.mark.parametrize("task", ["lesion", "subtype"])
def test_no_cluster_or_case_in_two_folds_or_patients(task):
    slides, tiles = plan_cohort(CohortConfig(task=task, n_patients=10, slides_per_patient=2, folds=5, grid=8))
    assert tiles.groupby("group")["fold"].nunique().max() == 1
    assert tiles.groupby("group")["patient"].nunique().max() == 1
    assert slides.groupby("patient")["fold"].nunique().max() == 1
    # every fold holds both classes, so each fold's AUC is defined
    assert (slides.groupby("fold")["label"].nunique() == 2).all()
    if task == "lesion":
        pos = slides[slides["label"] == 1]
        assert (pos["region_cells"] >= 2).all() and (slides.loc[slides["label"] == 0, "region_cells"] == 0).all()
        lesion_tiles = tiles[tiles["role"] == "lesion"]
        assert set(lesion_tiles["class"]) <= {"adenocarcinoma", "squamous"}
        assert set(tiles.loc[tiles["role"] == "background", "class"]) == {"benign"}
        assert set(lesion_tiles["slide"]) == set(pos["slide"])
    else:
        assert set(tiles["source"]) == {"lc25000", "tcga"}
        tumour = tiles[tiles["role"] == "tumour"].merge(slides[["slide", "label_name"]], on="slide")
        assert (tumour["class"] == tumour["label_name"]).all()


def test_plan_is_seeded():
    a = plan_cohort(CohortConfig(n_patients=4, slides_per_patient=1, folds=2, grid=6, seed=3))
    b = plan_cohort(CohortConfig(n_patients=4, slides_per_patient=1, folds=2, grid=6, seed=3))
    c = plan_cohort(CohortConfig(n_patients=4, slides_per_patient=1, folds=2, grid=6, seed=4))
    assert a[1].equals(b[1]) and not a[1].equals(c[1])


def _oriented(path: str, rot90: int, flip: bool, cell: int) -> np.ndarray:
    arr = np.asarray(Image.open(path).convert("RGB"))
    y0, x0 = (arr.shape[0] - cell) // 2, (arr.shape[1] - cell) // 2
    arr = np.rot90(arr[y0:y0 + cell, x0:x0 + cell], rot90)
    return (arr[:, ::-1] if flip else arr).astype(np.float32)


def test_slides_reopen_with_lesion_tiles_where_the_manifest_says(tmp_path):
    from maga_core.data.tiles import tile_table
    from maga_core.slides import open_slide

    cfg = CohortConfig(task="lesion", n_patients=2, slides_per_patient=2, folds=2, grid=5, lesion_cells=(2, 3))
    cohort = build_cohort(cfg, tmp_path / "cohort", progress=False)
    paths = dict(zip(tile_table("lc25000_lung_224_dedup")["relpath"], tile_table("lc25000_lung_224_dedup")["path"]))
    pos = cohort.slides[cohort.slides["label"] == 1].iloc[0]
    with open_slide(cohort.root / pos["path"]) as reader:
        assert reader.mpp == pytest.approx(0.5, abs=1e-3)
        assert reader.dimensions == (5 * 224, 5 * 224)
        assert len(reader.level_dimensions) >= 2
        placed = cohort.tiles[cohort.tiles["slide"] == pos["slide"]]
        lesion = placed[placed["role"] == "lesion"]
        assert len(lesion) == pos["region_cells"] >= 2
        for t in lesion.itertuples():
            got = reader.read_region((t.x, t.y), 0, (t.w, t.h)).astype(np.float32)
            want = _oriented(paths[t.tile], t.rot90, t.flip, t.w)
            other = _oriented(paths[t.tile], (t.rot90 + 1) % 4, t.flip, t.w)
            # JPEG in the pyramid: close to the stated tile in the stated orientation, far from others
            assert np.abs(got - want).mean() < 6.0
            assert np.abs(got - other).mean() > 3 * np.abs(got - want).mean()
        # the lesion bounding box of slides.csv encloses every lesion tile
        assert lesion["x"].min() == pos["region_x0"] and (lesion["x"] + lesion["w"]).max() == pos["region_x1"]
        # glass outside the tissue island
        empty = {(r, c) for r in range(5) for c in range(5)} - set(zip(placed["row"], placed["col"]))
        if empty:
            r, c = sorted(empty)[0]
            assert reader.read_region((c * 224, r * 224), 0, (224, 224)).mean() > 230
    labels = (cohort.root / "labels.csv").read_text().splitlines()[0]
    assert labels == "slide,label,label_name,patient,fold"
    # ensure_cohort reuses a finished cohort and refuses a different one in the same place
    assert ensure_cohort(cfg, cohort.root).slides.equals(cohort.slides)
    with pytest.raises(MagaError, match="another configuration"):
        ensure_cohort(dataclasses.replace(cfg, seed=99), cohort.root)


@pytest.mark.parametrize("name,task,n_cases,counts", [
    ("cohort_tcga_glioma", "idh", 802, {"wildtype": 381, "mutant": 421}),  # the paper's IDH cohort
    ("cohort_tcga_glioma", "tert", 301, {"wildtype": 151, "mutant": 150}),
    ("cohort_tcga_nsclc", "subtype", 946, None),
    ("cohort_camelyon16", "metastasis", 399, None),
])
def test_upstream_cohorts_give_labels_and_disjoint_folds(name, task, n_cases, counts, reference_file):
    from maga.cohorts import load_upstream

    reference_file("upstream_splits/PROVENANCE.md")
    c = load_upstream(name, task)
    assert len(c.labels) == n_cases and not c.labels["slide"].duplicated().any()
    if counts:
        assert c.labels["label_name"].value_counts().to_dict() == counts
    assert sorted(c.splits["fold"].unique()) == list(range(10))
    for _, sub in c.splits.groupby("fold"):
        parts = {p: set(g["slide"]) for p, g in sub.groupby("part")}
        assert set(parts) == {"train", "val", "test"}
        assert not (parts["train"] & parts["test"]) and not (parts["train"] & parts["val"]) and not (parts["val"] & parts["test"])
    if name != "cohort_camelyon16":  # the study's test folds partition its cases
        tests = c.splits[c.splits["part"] == "test"]
        assert not tests["slide"].duplicated().any() and set(tests["slide"]) == set(c.labels["slide"])
    else:
        assert any("repeated" in n for n in c.notes)


def test_leak_check_refuses_test_slides_with_tiles_seen_in_training():
    from maga_core.data.tiles import tile_table
    from maga_core.align.tilesource import resolve_tiles
    from maga.experiments.tile_slides import LC25000, check_leaks

    cfg = CohortConfig(n_patients=6, slides_per_patient=1, folds=3, grid=5)
    _, tiles = plan_cohort(cfg)
    student = resolve_tiles(["lc25000_lung_224_dedup:train", "uni_tcga_luadlusc:train"])
    check_leaks(tiles, student, folds=3)  # held-out tiles: nothing the student saw
    # one cohort tile added to the student's training set is refused
    path = tile_table(LC25000).set_index("relpath").loc[tiles["tile"].iloc[0], "path"]
    with pytest.raises(MagaError, match="seen by the MAGA student"):
        check_leaks(tiles, student + [path], folds=3)
    # the old cohort, drawn from every split, leaks into the student's training tiles
    _, every_split = plan_cohort(dataclasses.replace(cfg, tile_splits=()))
    with pytest.raises(MagaError, match="seen by the MAGA student"):
        check_leaks(every_split, student, folds=3)
    # a test slide reusing a tile placed on another fold's slide is refused (the aggregator trained on it)
    bad = tiles.copy()
    i, j = bad.index[bad["fold"] == 0][0], bad.index[bad["fold"] == 1][0]
    bad.loc[i, ["dataset", "tile", "group"]] = bad.loc[j, ["dataset", "tile", "group"]].to_numpy()
    with pytest.raises(MagaError, match="test slides of fold 0 share"):
        check_leaks(bad, None, folds=3)
