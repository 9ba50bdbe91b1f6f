"""`maga cohort run` end to end on a small cohort of generated slides (real LC25000 tiles) with
upstream-style labels and fold files: extraction at 20x and 5x+MAGA, five aggregators cross-validated,
the table, a corrupt slide skipped and reported, a two-slide case concatenated, and a resumed rerun."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from maga import cli
from maga.book import summary
from maga.cohort_pipeline import MODELS, CohortRunConfig, case_of, run_cohort
from maga_core.errors import MagaError
from maga_core.data.features import read_features
from maga.reliability.scenarios import cohort_cases, make_cohort
from maga.reliability.scenarios import tiny_student as make_tiny_student

N_CASES, N_FOLDS = 6, 3
CASES = cohort_cases(N_CASES)


def test_case_of_matches_tcga_file_names():
    ids = {"TCGA-05-4244", "TCGA-05-424"}
    assert case_of("TCGA-05-4244-01Z-00-DX1.d4ff32cd", ids) == "TCGA-05-4244"
    assert case_of("TCGA-05-4244", ids) == "TCGA-05-4244"
    assert case_of("TCGA-05-42445", ids) is None


@pytest.fixture(scope="module")
def small_cohort(tmp_path_factory):
    """6 cases (alternating LUAD/LUSC), case 0 with two slides, one corrupt slide of a 7th listed case
    and one slide of no listed case; upstream label file and 3 folds of fold files."""
    return make_cohort(tmp_path_factory.mktemp("cohort"), N_CASES, N_FOLDS, faults=True)


@pytest.fixture(scope="module")
def tiny_student(tmp_path_factory):
    return make_tiny_student("lc25000_lung_224_dedup:train", tmp_path_factory.mktemp("student") / "student.pt")


@pytest.mark.usefixtures("one_thread")
def test_cohort_run_end_to_end_and_resume(tmp_path, small_cohort, tiny_student, capsys):
    slides, up = small_cohort
    out = tmp_path / "run"
    code = cli.main(["cohort", "run", "--slides", str(slides), "--out", str(out), "--upstream", str(up),
                     "--student", str(tiny_student), "--epochs", "1", "--bootstrap", "20", "--workers", "0",
                     "--bag-batch", "2", "--device", "cpu", "--quiet"])
    assert code == 1  # the corrupt slide
    printed = capsys.readouterr().out
    assert "failed: " in printed and "TCGA-AA-0100-01Z-00-DX1.tif" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["slides"]["extracted"] == N_CASES + 1 and report["slides"]["unlisted"] == ["OTHER-0001.tif"]
    assert list(report["slides"]["failed"]) == ["TCGA-AA-0100-01Z-00-DX1.tif"]
    assert report["cases"] == N_CASES and report["folds"] == N_FOLDS
    assert report["runtime"]["device"] == "cpu" and report["runtime"]["precision"] == "fp32"
    assert report["ratios"]["20x_over_5x_maga"]["pixel_mb_per_slide"] == pytest.approx(16.0)
    assert any("cases have no" in n for n in report["notes"])

    table = pd.read_csv(out / "reproduction_table.csv")
    assert len(table) == 2 * len(MODELS) and set(table["model"]) == set(MODELS)
    assert set(table["setting"]) == {"20x", "5x+MAGA"} and (table["folds"] == N_FOLDS).all()
    assert table["auc_mean"].between(0, 1).all()
    assert table.loc[(table["model"] == "gltrans") & (table["setting"] == "5x+MAGA"), "paper_auc"].notna().all()

    per_slide = pd.read_csv(out / "slides.csv")
    assert (per_slide["seconds"] > 0).all() and len(per_slide) == 2 * (N_CASES + 1)
    # the two-slide case: one bag, the second slide's coords shifted right of the first
    parts = [read_features(out / "features" / "20x" / "slides" / f"{CASES[0]}-01Z-00-DX{d}.h5") for d in (1, 2)]
    case = read_features(out / "features" / "20x" / "cases" / f"{CASES[0]}.h5")
    assert len(case) == len(parts[0]) + len(parts[1])
    np.testing.assert_array_equal(case.features, np.concatenate([p.features for p in parts]))
    assert case.coords[len(parts[0]):, 0].min() >= 768
    ff = read_features(out / "features" / "5x_maga" / "slides" / f"{CASES[1]}-01Z-00-DX1.h5")
    assert ff.attrs["device"] == "cpu" and ff.attrs["student_sha256"] and ff.attrs["magnification"] == 5.0
    align_cfg = json.loads(tiny_student.with_name("student.config.json").read_text())  # precision auto, resolved
    assert (align_cfg["device"], align_cfg["precision"]) == ("cpu", "fp32")
    cv_cfg = json.loads((out / "cv" / "20x" / "gltrans" / "config.json").read_text())
    assert cv_cfg["train"]["device"] == "cpu" and cv_cfg["train"]["max_epochs"] == 1
    assert cv_cfg["train"]["bag_batch"] == 2 and json.loads((out / "config.json").read_text())["bag_batch"] == 2

    # chapter 09 shows the run: paper beside ours, from the files the run wrote
    view = summary.cohort_run(str(out), None)
    assert view.message.startswith(f"cohort_tcga_nsclc (subtype): {N_CASES} cases, {N_FOLDS} folds, on cpu (fp32), "
                                   f"1 slides failed")
    shown = view.table
    assert list(shown[["model", "setting"]].itertuples(index=False)) == list(
        table[["model", "setting"]].itertuples(index=False))
    np.testing.assert_allclose(shown["ours"].astype(float), table["auc_mean"], rtol=1e-3)
    compared = shown[shown["paper"] != ""]
    assert len(compared) == table["paper_auc"].notna().sum() > 0
    np.testing.assert_allclose(compared["difference"].astype(float),
                               compared["ours"].astype(float) - compared["paper"].astype(float), atol=2e-4)
    assert "5x+MAGA" in view._repr_html_() and str(out) in repr(view)

    again = run_cohort(CohortRunConfig(slides=str(slides), out=str(out), upstream=str(up), student=str(tiny_student),
                                       epochs=1, bootstrap=20, num_workers=0, bag_batch=2, device="cpu"),
                     progress=False)
    assert again["slides"]["extracted"] == 0 and again["slides"]["resumed"] == N_CASES + 1
    assert pd.read_csv(out / "reproduction_table.csv").equals(table)


def test_chapter_09_names_the_missing_cohort_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MAGA_RUNS_DIR", str(tmp_path / "runs"))
    conventional = summary.cohort_run(None, "cohort_tcga_nsclc")  # the full preset's folder, not made yet
    folder = tmp_path / "runs" / "cohort_tcga_nsclc"
    assert conventional.table is None and conventional.message == (
        f"no finished cohort run in {folder}: the full-scale table needs "
        f"`maga cohort run --cohort cohort_tcga_nsclc --slides DIR --out {folder}` first")
    assert summary.cohort_run(None, None).table is None
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "report.json").write_text("{}")  # a run still going: the table is written last
    with pytest.raises(MagaError, match="^" + re.escape(f"{tmp_path / 'given'}: no finished `maga cohort run` here "
                                                        "(reproduction_table.csv missing)")):
        summary.cohort_run(str(tmp_path / "given"), "cohort_tcga_nsclc")
