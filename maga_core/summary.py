"""Results that chapters hand to the reproduction summary (chapter 09), and the paper-vs-ours table.

Convention, for every chapter that reproduces a figure of the paper:

    from maga_core import summary
    summary.save_results("04_mil_cv", figures={"tcga_nsclc_subtyping": {"auc": {"clam_5x": {"mean": 0.81,
                         "ci": [0.74, 0.88]}}}}, notes={"tcga_nsclc_subtyping.auc": "mosaic slides of real
                         tiles, 10-fold CV, ..."})

`figures` uses the key paths of reference/paper_results.yaml (only those a chapter really measured);
`notes` explain how our setting differs, keyed by a dotted prefix (the longest matching prefix wins).
Results go to <runs>/results/<chapter>.json (`runs` is the preset's folder, `P["runs"]`), so every preset
keeps its own. A figure that no
chapter wrote is shown as "not run"; nothing is filled in.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import yaml

from maga_core.config import write_json
from maga_core.data.manifests import reference_path
from maga_core.errors import MagaError

NOT_RUN = "not run"
# Why figures cannot run on this machine whatever a chapter does; shown beside 'not run'.
NOT_RUN_REASONS = {
    "tcga_nsclc_subtyping": "needs the 1,053 TCGA-NSCLC diagnostic slides (maga_core/resources/data_manifests/cohort_tcga_nsclc.yaml); "
                            "the data mirror (MAGA_DATA_DIR) holds tiles of a few TCGA cases, not the slides",
    "tcga_glioma_idh": "needs the 1,539 TCGA glioma slides (maga_core/resources/data_manifests/cohort_tcga_glioma.yaml); none are here",
    "camelyon16_metastasis": "needs the 399 CAMELYON16 slides (maga_core/resources/data_manifests/cohort_camelyon16.yaml); none are here",
    "maga_auc_increment_percent": "needs that cohort's slides; only the CAMELYON16 analogue (chapter 4) runs here",
    "histopathology_encoders_nsclc_20x": "needs the CTransPath and UNI weights (gated downloads, no network "
                                         "here) and the TCGA-NSCLC slides; the adapters exist (maga info)",
    "frozen_section_telepathology.auc": "needs 2,167 labelled frozen sections; the data mirror holds one unlabelled "
                                        "frozen section, so only the timing figures are measured (chapter 8)",
}


def results_path(chapter: str, runs: Path) -> Path:
    return Path(runs) / "results" / f"{chapter}.json"


def save_results(chapter: str, figures: dict[str, Any], notes: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None, *, runs: Path) -> Path:
    """Write one chapter's reproduced figures (paper_results.yaml key paths) under the runs folder
    `runs` (named after its preset), atomically."""
    unknown = [p for p, _ in _leaves(figures) if _lookup(paper_results(), p) is None]
    if unknown:
        raise MagaError(f"figures not in paper_results.yaml: {', '.join(unknown[:5])} "
                        "(put results without a paper counterpart under extra=)", chapter)
    payload = {"chapter": chapter, "preset": Path(runs).name,
               "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "figures": figures, "notes": notes or {}, "extra": extra or {}}
    return write_json(payload, results_path(chapter, runs))


def load_results(runs: Path) -> dict[str, dict[str, Any]]:
    """Every chapter's results under <runs>/results, by chapter stem (sorted)."""
    folder = Path(runs) / "results"
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise MagaError(f"not valid JSON ({exc.msg})", path) from None
    return out


def paper_results() -> dict[str, Any]:
    return yaml.safe_load(reference_path("paper_results.yaml").read_text())


def comparison(runs: Path) -> pd.DataFrame:
    """Every figure of paper_results.yaml next to ours: section, figure, paper, ours, ours_ci,
    difference (ours - paper where both are numbers), chapter, note. A figure that several chapters
    measured gets one row per chapter; one that none measured is "not run", with the note under the
    longest matching key of the chapters' notes and NOT_RUN_REASONS (which win ties)."""
    ours = load_results(runs)
    reasons = {**{k: v for r in ours.values() for k, v in r.get("notes", {}).items()}, **NOT_RUN_REASONS}
    rows = []
    for path, paper in _leaves(paper_results()):
        found = [(ch, _lookup(r.get("figures", {}), path), _note(r.get("notes", {}), path)) for ch, r in ours.items()]
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
    from maga_core import viz

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


def _leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted paths to figures: scalars, lists, and {mean, ci} dicts count as one figure."""
    if isinstance(tree, dict) and not _is_interval(tree):
        for key, value in tree.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, tree


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_interval(d: dict) -> bool:
    return "mean" in d and set(d) <= {"mean", "ci", "std", "n"}


def _lookup(tree: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _split(value: Any) -> tuple[Any, Any]:
    if isinstance(value, dict) and _is_interval(value):
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
