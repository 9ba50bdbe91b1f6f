"""The reproduction summary (chapter 09): the paper-vs-ours table from the records chapters wrote.

Convention, for every chapter that reproduces a figure of the paper (`maga.records`):

    from maga import records
    records.save_results("04_mil_cv", figures={"tcga_nsclc_subtyping": {"auc": {"clam_5x": {"mean": 0.81,
                         "ci": [0.74, 0.88]}}}}, notes={"tcga_nsclc_subtyping.auc": "mosaic slides of real
                         tiles, 10-fold CV, ..."})

`figures` uses the key paths of reference/paper_results.yaml (only those a chapter really measured);
`notes` explain how our setting differs, keyed by a dotted prefix (the longest matching prefix wins).
Results go to <runs>/results/<chapter>.json (`runs` is the preset's folder, `P["runs"]`), so every preset
keeps its own. A figure that no
chapter wrote is shown as "not run"; nothing is filled in.

The full-scale table is not a chapter's: `maga cohort run` writes it beside the paper's figures, and
`cohort_run` shows that run's table (the full preset reads <runs root>/cohort_tcga_nsclc).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from maga_core import locations
from maga_core.errors import MagaError
from maga.book import viz
from maga.cohort_pipeline import read_run
from maga.records import is_interval, leaves, load_results, lookup, paper_results

NOT_RUN = "not run"
# Why figures cannot run on this machine whatever a chapter does; shown beside 'not run'.
NOT_RUN_REASONS = {
    "tcga_nsclc_subtyping": "needs the 1,053 TCGA-NSCLC diagnostic slides (data_manifests/cohort_tcga_nsclc.yaml); "
                            "the data mirror (MAGA_DATA_DIR) holds tiles of a few TCGA cases, not the slides",
    "tcga_glioma_idh": "needs the 1,539 TCGA glioma slides (data_manifests/cohort_tcga_glioma.yaml); none are here",
    "camelyon16_metastasis": "needs the 399 CAMELYON16 slides (data_manifests/cohort_camelyon16.yaml); none are here",
    "maga_auc_increment_percent": "needs that cohort's slides; only the CAMELYON16 analogue (chapter 4) runs here",
    "histopathology_encoders_nsclc_20x": "needs the CTransPath and UNI weights (gated downloads, no network "
                                         "here) and the TCGA-NSCLC slides; the adapters exist (maga info)",
    "frozen_section_telepathology.auc": "needs 2,167 labelled frozen sections; the data mirror holds one unlabelled "
                                        "frozen section, so only the timing figures are measured (chapter 8)",
}


def comparison(runs: Path) -> pd.DataFrame:
    """Every figure of paper_results.yaml next to ours: section, figure, paper, ours, ours_ci,
    difference (ours - paper where both are numbers), chapter, note. A figure that several chapters
    measured gets one row per chapter; one that none measured is "not run", with the note under the
    longest matching key of the chapters' notes and NOT_RUN_REASONS (which win ties)."""
    ours = load_results(runs)
    reasons = {**{k: v for r in ours.values() for k, v in r.get("notes", {}).items()}, **NOT_RUN_REASONS}
    rows = []
    for path, paper in leaves(paper_results()):
        found = [(ch, lookup(r.get("figures", {}), path), _note(r.get("notes", {}), path)) for ch, r in ours.items()]
        found = [(ch, v, n) for ch, v, n in found if v is not None]
        if not found:
            found = [("", None, _note(reasons, path))]
        p_mean, p_ci = _split(paper)
        for chapter, value, note in found:
            o_mean, o_ci = _split(value)
            both = _is_number(p_mean) and _is_number(o_mean)
            rows.append({
                "section": path.split(".")[0], "figure": path.split(".", 1)[1] if "." in path else path,
                "paper": _fmt(p_mean), "paper_ci": _fmt(p_ci), "ours": NOT_RUN if value is None else _fmt(o_mean),
                "ours_ci": _fmt(o_ci), "difference": _fmt(o_mean - p_mean) if both else "",
                "chapter": chapter, "note": note,
                "paper_value": p_mean if _is_number(p_mean) else None,
                "ours_value": o_mean if _is_number(o_mean) else None, "ours_interval": o_ci,
            })
    return pd.DataFrame(rows)


def auc_figure(table: pd.DataFrame, title: str = "AUC: paper vs ours"):
    """Grouped bars of every AUC figure of the paper with ours beside it (or "not run")."""
    rows = table[table["figure"].str.contains("auc") & table["paper_value"].notna()]
    labels = [f"{r.section.replace('_', ' ')}: {r.figure.split('.')[-1]}" for r in rows.itertuples()]
    ours_ci = [tuple(c) if isinstance(c, (list, tuple)) and len(c) == 2 else None for c in rows["ours_interval"]]
    return viz.paired_bars(labels, {"paper": list(rows["paper_value"]),
                                    "ours": [None if pd.isna(v) else v for v in rows["ours_value"]]},
                           errors={"ours": ours_ci}, title=title, yaxis_title="AUC", height=520)


def by_section(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The comparison split by paper section, with the columns a reader needs."""
    cols = ["figure", "paper", "paper_ci", "ours", "ours_ci", "difference", "chapter", "note"]
    return {s: rows[cols].reset_index(drop=True) for s, rows in table.groupby("section", sort=False)}


def section_view(section: str, rows: pd.DataFrame):
    """One section of `by_section` as a wrapped HTML table. Where the whole section shares one reason for
    not being run, the reason goes into the caption once and the table keeps only the paper's columns."""
    caption = section.replace("_", " ")
    if (rows["ours"] == NOT_RUN).all() and rows["note"].nunique() == 1:
        caption += f" (not run: {rows['note'].iloc[0] or 'no chapter measures it'})"
        rows = rows[["figure", "paper", "paper_ci"]]
    cells = "white-space: nowrap; vertical-align: top; text-align: left; font-size: 0.85em; padding: 0.2em 0.5em"
    return (rows.style.hide(axis="index").set_caption(caption)
            .set_table_styles([{"selector": "td, th", "props": cells},
                               {"selector": "td:last-child", "props": "white-space: normal; min-width: 18em"},
                               {"selector": "caption", "props": "caption-side: top; text-align: left; font-weight: bold"}]))


def coverage(table: pd.DataFrame) -> dict[str, int]:
    """How many of the paper's figures have a counterpart here."""
    figures = table["section"] + "." + table["figure"]
    run = figures[table["ours"] != NOT_RUN].nunique()
    return {"figures": figures.nunique(), "reproduced": int(run), "not_run": int(figures.nunique() - run)}


@dataclass(repr=False)
class CohortRunView:
    """What chapter 09 shows of a `maga cohort run`: one line on where the table comes from (or how to
    make it) and, when there is a run, its table, paper beside ours. Displays itself in a notebook."""

    message: str
    table: pd.DataFrame | None = None

    def __repr__(self) -> str:
        return self.message if self.table is None else f"{self.message}\n{self.table.to_string(index=False)}"

    def _repr_html_(self) -> str:
        shown = "" if self.table is None else self.table.style.hide(axis="index").to_html()
        return f"<p>{html.escape(self.message)}</p>{shown}"


def cohort_run_folder(folder: str | Path) -> Path:
    """A cohort-run folder as presets name it: absolute, or relative to the runs root (beside the
    presets' folders, so every preset can read it)."""
    return locations.runs_root().path / folder


def cohort_run(given: str | Path | None, conventional: str | Path | None) -> CohortRunView:
    """The table of the cohort run in `given` (a folder the reader named: it must hold a finished run,
    else a one-line error naming it), else in the preset's `conventional` folder, which is named after
    its cohort and may not exist yet: then the message says which `maga cohort run` makes it."""
    if given is None and conventional is None:
        return CohortRunView("this preset reads no `maga cohort run` (the full preset does)")
    folder = cohort_run_folder(given if given is not None else conventional)
    try:
        table, report = read_run(folder)
    except MagaError:
        if given is not None:
            raise
        return CohortRunView(f"no finished cohort run in {folder}: the full-scale table needs `maga cohort run "
                             f"--cohort {folder.name} --slides DIR --out {folder}` first")
    failed = len(report["slides"]["failed"])
    failed_note = f", {failed} slides failed (report.json)" if failed else ""
    return CohortRunView(f"{report['cohort']} ({report['task']}): {report['cases']} cases, {report['folds']} folds, "
                         f"on {report['runtime']['device']} ({report['runtime']['precision']}){failed_note}; "
                         f"from {folder}", cohort_run_rows(table))


def cohort_run_rows(table: pd.DataFrame) -> pd.DataFrame:
    """A reproduction table in the columns of `comparison`: AUC (mean over folds, 95% CI) paper beside
    ours and their difference, then pooled AUC, F1, accuracy, folds and cases."""
    rows = []
    for r in table.itertuples():
        paper = None if pd.isna(r.paper_auc) else float(r.paper_auc)
        paper_ci = None if pd.isna(r.paper_ci_low) else [float(r.paper_ci_low), float(r.paper_ci_high)]
        rows.append({"model": r.model, "setting": r.setting, "paper": _fmt(paper), "paper_ci": _fmt(paper_ci),
                     "ours": _fmt(float(r.auc_mean)), "ours_ci": _fmt([float(r.auc_ci_low), float(r.auc_ci_high)]),
                     "difference": "" if paper is None else _fmt(float(r.auc_mean) - paper),
                     "auc_pooled": _fmt(float(r.auc_pooled)), "f1": _fmt(float(r.f1_mean)),
                     "accuracy": _fmt(float(r.accuracy_mean)), "folds": int(r.folds), "cases": int(r.cases)})
    return pd.DataFrame(rows)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _split(value: Any) -> tuple[Any, Any]:
    if isinstance(value, dict) and is_interval(value):
        return value.get("mean"), value.get("ci")
    return value, None


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _note(notes: dict[str, str], path: str) -> str:
    keys = [k for k in notes if path == k or path.startswith(k + ".")]
    return notes[max(keys, key=len)] if keys else ""
