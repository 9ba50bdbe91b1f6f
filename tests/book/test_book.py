"""The book: presets, chapter conventions, papermill execution (smoke preset, parameters injected and
used), the Jupyter Book build, and plotly figures drawn offline in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import numpy as np
import plotly.io as pio
import pytest

from maga import records
from maga.book import build as book, summary, viz
from maga import presets
from maga_core.errors import MagaError

IN_CI = os.environ.get("CI", "").lower() == "true"
CHAPTERS = book.chapter_notebooks()


# --- presets ---------------------------------------------------------------------------------------

def test_resolve_merges_common_preset_and_overrides():
    p = presets.resolve("01_slides_and_magnification", "smoke", n_patches=None, thumb_px=300)
    assert p["preset"] == "smoke"
    assert p["mags"] == [20, 10, 5]  # from common
    assert p["n_patches"] == 2  # None override keeps the preset's value
    assert p["thumb_px"] == 300  # a real override wins
    assert p["runs"] == presets.runs_dir("smoke")


def test_resolve_rejects_unknown_preset_and_notebook():
    with pytest.raises(MagaError, match="unknown preset 'fast'.*presets.yaml|presets.yaml.*unknown preset 'fast'"):
        presets.resolve("01_slides_and_magnification", "fast")
    with pytest.raises(MagaError, match="no presets for notebook '99_nothing'"):
        presets.resolve("99_nothing", "smoke")


def test_runs_folder_is_explicit_and_separates_presets(reference_file, tmp_path, monkeypatch):
    reference_file("paper_results.yaml")
    monkeypatch.setenv("MAGA_RUNS_DIR", str(tmp_path))
    demo = presets.resolve("00_introduction", "demo")
    smoke = presets.resolve("00_introduction", "smoke")
    assert (demo["runs"], smoke["runs"]) == (tmp_path / "demo", tmp_path / "smoke")
    assert presets.resolve("00_introduction", "smoke", runs=tmp_path / "mine")["runs"] == tmp_path / "mine"
    # Resolving another preset later changes nothing for a caller that holds its runs folder.
    records.save_results("00_x", {}, runs=demo["runs"])
    assert (tmp_path / "demo" / "results" / "00_x.json").is_file() and not (tmp_path / "smoke").exists()
    assert json.loads((tmp_path / "demo" / "results" / "00_x.json").read_text())["preset"] == "demo"


# --- chapter conventions ------------------------------------------------------------------------------

def test_there_are_chapters():
    stems = [p.stem for p in CHAPTERS]
    assert {"00_introduction", "01_slides_and_magnification", "09_reproduction_summary"} <= set(stems)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_follows_conventions(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", "kernel must be python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), \
        f"{path.name} carries outputs: strip them (nbstripout {path})"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one code cell tagged `parameters`"
    assert re.search(r'^preset = "demo"', params[0].source, re.M), 'the parameters cell sets preset = "demo"'
    assert any(f'resolve("{path.stem}", preset' in c.source for c in code), \
        f'a cell calls presets.resolve("{path.stem}", preset, ...)'
    assert path.stem in presets.load_table(), f"maga/presets.yaml has no block {path.stem!r}"


def test_committed_toc_lists_every_chapter():
    expected = book.toc_yaml([p.stem for p in CHAPTERS])
    assert (book.BOOK_DIR / "_toc.yml").read_text() == expected, \
        "book/_toc.yml is stale: run `python -m maga.book.build --sync-toc`"


def test_only_selects_by_number_and_rejects_unknown():
    assert [p.stem for p in book.chapter_notebooks(only=["1"])] == ["01_slides_and_magnification"]
    assert [p.stem for p in book.chapter_notebooks(only=["00_introduction,9"])] == \
        ["00_introduction", "09_reproduction_summary"]
    with pytest.raises(MagaError, match="no chapter notebook for 77"):
        book.chapter_notebooks(only=["77"])


# --- papermill execution -----------------------------------------------------------------------------

def _notebook(path: Path, cells: list[tuple[str, str]]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for tag, src in cells:
        cell = nbformat.v4.new_code_cell(src)
        if tag:
            cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def test_failing_cell_stops_with_notebook_cell_and_error(tmp_path):
    nb = _notebook(tmp_path / "42_broken.ipynb", [
        ("parameters", 'preset = "demo"\nlimit = 1'),
        ("", "assert preset == 'smoke' and limit == 7, 'injected'"),
        ("", "raise ValueError(f'bad slide for {preset}')"),
        ("", "print('never')"),
    ])
    out = tmp_path / "out"
    with pytest.raises(MagaError) as err:
        book.execute_notebook(nb, "smoke", out, limit=7)
    msg = str(err.value)
    assert "42_broken.ipynb: cell 3 " in msg and "ValueError: bad slide for smoke" in msg
    assert "\n" not in msg
    assert (out / "42_broken.failed.ipynb").exists() and not (out / "42_broken.ipynb").exists()
    assert not list(out.glob(".*partial*"))


# --- plotly offline renderer ---------------------------------------------------------------------------

def test_offline_renderer_embeds_plotlyjs_once_and_loads_nothing(monkeypatch):
    monkeypatch.setattr(viz, "_plotlyjs_sent", False)
    viz.setup()
    fig = viz.box_plot({"20x": [0.9, 0.92], "5x": [0.7, 0.75]}, reference={"20x": 0.93})
    first = pio.renderers._build_mime_bundle(fig.to_dict())
    second = pio.renderers._build_mime_bundle(fig.to_dict())
    assert "application/vnd.plotly.v1+json" in first  # JupyterLab draws this one
    assert len(first["text/html"]) > 3_000_000 > len(second["text/html"])  # plotly.js inlined once
    for html in (first["text/html"], second["text/html"]):
        assert not re.search(r"<script[^>]+src=", html), "a figure must not load scripts from anywhere"
        assert "Plotly.newPlot" in html


def test_slide_overlay_puts_values_on_their_squares():
    coords = np.array([[100, 50], [356, 50], [100, 562]])  # squares of 256 level-0 px
    grid, x0, y0 = viz.patch_grid_values(coords, np.array([1.0, 2.0, 3.0]), 256)
    assert (x0, y0) == (100, 50)
    assert grid.shape == (3, 2) and grid[0, 0] == 1 and grid[0, 1] == 2 and grid[2, 0] == 3
    assert np.isnan(grid[1]).all()
    thumb = np.full((80, 60, 3), 200, np.uint8)
    fig = viz.slide_overlay(thumb, 8.0, coords, np.array([0, 1, 2]), 256, categories=["a", "b", "c"])
    heat = fig.data[1]
    assert heat.dx == 32 and heat.x0 == 100 / 8 + 16  # square centres in thumbnail pixels
    assert heat.colorbar.ticktext == ("a", "b", "c")


def test_roc_band_brackets_the_mean():
    rng = np.random.default_rng(0)
    curves = []
    for _ in range(5):
        f = np.sort(np.r_[0, rng.uniform(0, 1, 20), 1])
        curves.append((f, np.clip(np.sqrt(f) + rng.normal(0, 0.03, f.size), 0, 1)))
    fig = viz.roc_band({"5x+MAGA": curves}, aucs={"5x+MAGA": [0.8, 0.82, 0.85, 0.79, 0.83]})
    lo, hi, mean = (np.array(t.y) for t in fig.data[:3])
    assert np.all(lo <= mean + 1e-9) and np.all(mean <= hi + 1e-9)
    assert fig.data[2].name.startswith("5x+MAGA: AUC 0.818")


# --- results for the summary ----------------------------------------------------------------------------

def test_results_are_shown_next_to_the_paper_or_not_run(reference_file, tmp_path):
    reference_file("paper_results.yaml")
    runs = tmp_path / "smoke"
    with pytest.raises(MagaError, match="not in paper_results.yaml: tcga_nsclc_subtyping.auc.made_up"):
        records.save_results("04_x", {"tcga_nsclc_subtyping": {"auc": {"made_up": 0.5}}}, runs=runs)
    records.save_results("04_x", {"tcga_nsclc_subtyping": {"auc": {"clam_5x": {"mean": 0.7, "ci": [0.6, 0.8]}}}},
                         notes={"tcga_nsclc_subtyping": "mosaics", "tcga_nsclc_subtyping.auc": "10-fold CV"},
                         runs=runs)
    table = summary.comparison(runs)
    row = table[(table.section == "tcga_nsclc_subtyping") & (table.figure == "auc.clam_5x")].iloc[0]
    assert (row.paper, row.ours, row.ours_ci, row.chapter, row.note) == \
        ("0.7746", "0.7", "[0.6, 0.8]", "04_x", "10-fold CV")
    assert row.difference == "-0.0746"
    other = table[table.figure == "auc.clam_20x"].iloc[0]
    assert other.ours == summary.NOT_RUN and other.difference == ""
    assert other.note == "10-fold CV"  # the chapter's note under the longest key
    untimed = table[table.figure == "time_s.clam_20x"].iloc[0]  # a tie: the standing reason wins
    assert untimed.note == summary.NOT_RUN_REASONS["tcga_nsclc_subtyping"]
    assert summary.coverage(table)["reproduced"] == 1
    # A figure measured by two chapters is shown once per chapter and counted once.
    records.save_results("08_y", {"tcga_nsclc_subtyping": {"auc": {"clam_5x": 0.75}}}, runs=runs)
    table = summary.comparison(runs)
    rows = table[table.figure == "auc.clam_5x"]
    assert list(rows.chapter) == ["04_x", "08_y"] and list(rows.ours) == ["0.7", "0.75"]
    assert summary.coverage(table) == {"figures": 99, "reproduced": 1, "not_run": 98}
    sections = summary.by_section(table)
    glioma = summary.section_view("tcga_glioma_idh", sections["tcga_glioma_idh"]).to_html()
    assert "(not run: needs the 1,539 TCGA glioma slides" in glioma and ">ours<" not in glioma  # said once
    nsclc = summary.section_view("tcga_nsclc_subtyping", sections["tcga_nsclc_subtyping"]).to_html()
    assert ">ours<" in nsclc and ">0.75<" in nsclc


# --- the smoke book, built and opened in a browser ---------------------------------------------------------

@pytest.mark.notebooks
@pytest.mark.slow
def test_smoke_book_executes_every_chapter_with_injected_parameters(smoke_book):
    target, runs, html = smoke_book.book_dir, smoke_book.executed, smoke_book.html
    assert [r.stem for r in runs] == [p.stem for p in CHAPTERS]
    for path in CHAPTERS:
        nb = nbformat.read(target / "chapters" / path.name, as_version=4)
        assert nb.metadata["papermill"]["parameters"] == {"preset": "smoke"}
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1 and 'preset = "smoke"' in injected[0].source
        # Used: the cell that resolves the presets reports the smoke preset in its output.
        resolving = next(c for c in nb.cells if c.cell_type == "code" and "presets.resolve(" in c.source)
        assert "smoke" in _text(resolving), f"{path.stem}: the resolve cell should print the preset"
        assert (html / "chapters" / f"{path.stem}.html").exists()
    # Values the smoke preset sets show up in what the chapters computed.
    intro = nbformat.read(target / "chapters" / "00_introduction.ipynb", as_version=4)
    assert "checking 3 files per dataset" in _text_all(intro)
    ch01 = nbformat.read(target / "chapters" / "01_slides_and_magnification.ipynb", as_version=4)
    grid = next(o for c in ch01.cells if "image_grid" in c.source for o in c.outputs
                if "application/vnd.plotly.v1+json" in o.get("data", {}))
    assert len(grid["data"]["application/vnd.plotly.v1+json"]["data"]) == 2 * 3  # 2 patches x 3 mags
    ch09 = nbformat.read(target / "chapters" / "09_reproduction_summary.ipynb", as_version=4)
    assert "results of preset 'smoke'" in _text_all(ch09)
    results = target.parent / "runs" / "smoke" / "results"
    saved = json.loads((results / "01_slides_and_magnification.json").read_text())
    assert saved["preset"] == "smoke" and saved["figures"]["headline"]["storage_reduction_max"] > 4
    # Every chapter that measures a figure of the paper hands it to chapter 09.
    assert {p.stem for p in results.glob("*.json")} == {
        "01_slides_and_magnification", "02_maga_training", "04_mil_cross_validation", "06_distillation",
        "07_end_to_end", "08_telepathology"}
    table = summary.comparison(target.parent / "runs" / "smoke")
    measured = table[table.ours != summary.NOT_RUN]
    assert set(measured.chapter) == {p.stem for p in results.glob("*.json")}
    assert {"frozen_section_telepathology", "headline", "g2l_distillation", "maga_training", "gltrans",
            "cross_validation", "camelyon16_metastasis", "beyond_mil_end_to_end"} <= set(measured.section)
    tele = json.loads((results / "08_telepathology.json").read_text())["figures"]["frozen_section_telepathology"]
    assert tele["gigapixels_per_slide"]["x20"] / tele["gigapixels_per_slide"]["x5"] == pytest.approx(16, rel=0.05)


@pytest.mark.notebooks
def test_full_preset_summary_says_which_cohort_run_it_needs(reference_file, tmp_path, monkeypatch):
    reference_file("paper_results.yaml")
    monkeypatch.setenv("MAGA_RUNS_DIR", str(tmp_path / "runs"))
    chapter = next(p for p in CHAPTERS if p.stem == "09_reproduction_summary")
    nb = nbformat.read(book.execute_notebook(chapter, "full", out_dir=tmp_path / "chapters"), as_version=4)
    folder = tmp_path / "runs" / "cohort_tcga_nsclc"
    assert f"`maga cohort run --cohort cohort_tcga_nsclc --slides DIR --out {folder}` first" in _text_all(nb)


def _text(cell) -> str:
    return "".join(o.get("text", "") + json.dumps(o.get("data", {}).get("text/plain", ""))
                   for o in cell.get("outputs", []))


def _text_all(nb) -> str:
    return "".join(_text(c) for c in nb.cells if c.cell_type == "code")


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)


@pytest.mark.notebooks
@pytest.mark.slow
def test_built_chapter_draws_plotly_figures_offline(smoke_book, tmp_path):
    html = smoke_book.html
    exe = _chromium()
    if exe is None:
        if IN_CI:
            pytest.fail("chromium is required under CI (apt-get install -y chromium)")
        pytest.skip("no chromium on this machine (apt-get install -y chromium)")
    page = html / "chapters" / "01_slides_and_magnification.html"
    n_figures = page.read_text().count("Plotly.newPlot(")
    assert n_figures >= 3
    # Network off: a fresh network namespace where the kernel allows it, and in any case every host
    # name unresolvable and every request sent to a dead proxy.
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path}",
           "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "-rn", *cmd]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    drawn = len(re.findall(r'<div[^>]*class="[^"]*js-plotly-plot', dom))
    assert 'class="main-svg"' in dom, "no plotly figure was drawn"
    assert drawn == n_figures, f"{drawn} of {n_figures} figures drawn"


# --- explorer ---------------------------------------------------------------------------------------------

def _toy_slide() -> "explorer.SlideFeatures":
    from maga.book import explorer

    rng = np.random.default_rng(1)
    coords = np.array([[x, y] for y in range(0, 768, 256) for x in range(0, 512, 256)])  # 3 rows x 2 cols
    f20 = rng.normal(size=(6, 16))
    feats = {"20x": f20, "5x": rng.normal(size=(6, 16)), "5x+MAGA": f20 + 0.1 * rng.normal(size=(6, 16))}
    feats = {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in feats.items()}
    images = {"20x": np.zeros((6, 256, 256, 3), np.uint8), "5x": np.zeros((6, 64, 64, 3), np.uint8)}
    return explorer.SlideFeatures("toy", np.full((96, 64, 3), 230, np.uint8), 8.0, coords, 256.0, images, feats)


def test_explorer_similarities_and_static_slider():
    from maga.book import explorer

    s = _toy_slide()
    assert np.allclose(s.alignment("20x"), 1.0)
    assert s.alignment("5x+MAGA").mean() > 0.9 > s.alignment("5x").mean()
    assert s.similarity_to("5x", 4)[4] == pytest.approx(1.0)
    table = explorer.alignment_table({"toy": s})
    assert list(table["view"]) == ["20x", "5x", "5x+MAGA"]
    fig = explorer.static_figure(s, n_patches=2)
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 2 * 3 and len(fig.data) == 1 + 3 * len(steps)
    for k, step in enumerate(steps):  # each step shows the thumbnail + exactly its own 3 traces
        visible = step.args[0]["visible"]
        assert visible[0] and sum(visible) == 4 and all(visible[1 + 3 * k: 4 + 3 * k])
    assert "cosine to its own 20x feature" in steps[-1].args[1]["title"]


def test_explorer_widget_redraws_on_every_control(monkeypatch):
    from maga.book import explorer

    drawn = []
    monkeypatch.setattr(explorer, "panel_figure", lambda s, i, v: drawn.append((s.name, i, v)) or None)
    box = explorer.widget({"toy": _toy_slide()})
    (slide, view), patch = box.children[0].children, box.children[1]
    assert view.options == ("20x", "5x", "5x+MAGA") and patch.max == 5
    view.value = "5x+MAGA"
    patch.value = 3
    assert drawn == [("toy", 0, "20x"), ("toy", 0, "5x+MAGA"), ("toy", 3, "5x+MAGA")]



def test_readme_states_maga_against_both_baselines_from_the_records():
    """The README's MAGA block (maga.book.readme_blocks, kept current by tests/book/test_readme_blocks.py)
    names the upsampled teacher beside the plain one for every result."""
    from maga.book import baselines_text, readme_blocks

    lines = [ln for ln in baselines_text.readme_block(readme_blocks.RESULTS).splitlines() if ln.startswith("- ")]
    assert lines and all("upsampled teacher" in ln and "plain teacher" in ln for ln in lines)
    assert readme_blocks.block("maga-baselines") in readme_blocks.README.read_text()

def test_maga_against_both_baselines_says_which_it_does_not_beat():
    from maga.alignment.baselines import Against, from_settings
    from maga.book.baselines_text import sentence, verdict

    a = Against("t", high=0.95, plain=0.85, upsampled=0.93, student=0.90)
    assert abs(a.recovered("plain") - 0.5) < 1e-9 and abs(a.recovered("upsampled") + 1.5) < 1e-9
    assert a.not_beaten() == ["upsampled"] and "not above the upsampled" in verdict(a)
    assert "no clear gap (AUC difference +0.015)" in sentence(Against("t", 0.95, 0.85, 0.945, 0.96))  # < MIN_GAP
    # chapter 4's GLTrans: upsampled 0.975 inside the 20x CI [0.9625, 1]; no "-1000%", the difference instead
    gl = Against("gltrans", high=0.9875, plain=0.6625, upsampled=0.975, student=0.85, high_ci_low=0.9625)
    assert gl.recovered("upsampled") is None and "no clear gap (AUC difference -0.125)" in sentence(gl)
    assert abs(gl.recovered("plain") - (0.85 - 0.6625) / (0.9875 - 0.6625)) < 1e-9
    assert "neither" in verdict(Against("t", 0.95, 0.91, 0.93, 0.90))
    assert from_settings({"20x": 0.9, "5x": 0.8}, "m") is None
