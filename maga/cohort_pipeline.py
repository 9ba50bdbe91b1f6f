"""`maga cohort run`: the paper's MIL tables from the slides of an upstream cohort, end to end.

slides -> tissue mask -> one aligned grid per slide (the same 128 um squares at every magnification) ->
features at 20x with the encoder and at 5x with its MAGA student (and plain 5x if asked) -> one bag per
case (a case's slides concatenated, as upstream) -> the upstream 10-fold splits -> cross-validation of
every aggregator in every setting -> the reproduction table beside the paper's figures.

Everything resumes: a slide whose features and record exist is skipped, finished folds are kept. A slide
that fails is reported (report.json, exit 1) and left out; its case drops out of the splits if it has
no other slide. Per-slide time and storage of each setting are in slides.csv and report.json: the
feature files (the same size at every magnification: one row per aligned square) and the pixels read
(what a scanner stores or a telepathology client sends at that magnification: 16x fewer at 5x).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from maga_core.config import atomic_path, save_config, write_json
from maga_core.data.features import feature_writer, read_features, write_features
from maga_core.device import resolve
from maga_core.errors import MagaError, output_error
from maga_core.mil.cv import CVConfig, load_results, run_cv
from maga_core.slides import aligned_grid, detect_tissue, open_slide
from maga.alignment.ensure import ensure_student
from maga.cohorts import UpstreamCohort, load_upstream
from maga.experiments.mil import paper_figure
from maga.settings import SETTINGS, setting_kwargs
from maga.extract import SLIDE_SUFFIXES, SlidePatches, default_workers, embed_into, find_files, load_model
from maga.extract_report import one_line_cause

MODELS = ("gltrans", "transmil", "clam_sb", "clam_mb", "abmil")
# Upstream cohort -> the task of maga.experiments.mil whose paper figures it stands beside.
PAPER_TASK = {"cohort_tcga_nsclc": "subtype", "cohort_tcga_nsclc_ctranspath": "subtype",
              "cohort_camelyon16": "lesion"}
TABLE, REPORT = "reproduction_table.csv", "report.json"  # what a finished run leaves in its --out folder


def _default_workers() -> int:
    return default_workers()


@dataclass
class CohortRunConfig:
    cohort: str = "cohort_tcga_nsclc"  # NAME[:TASK] of maga.cohorts
    slides: str = ""  # folder of the cohort's slides (file names start with the case id)
    out: str = ""
    upstream: str = ""  # a folder with the upstream label/ and nfold/ layout instead of the manifest's files
    encoder: str = "efficientnet_lite0"
    student: str = ""  # MAGA student checkpoint for 5x_maga; "": the shared default student (maga.alignment.ensure)
    settings: list[str] = field(default_factory=lambda: ["20x", "5x_maga"])  # of 20x, 5x, 5x_maga
    models: list[str] = field(default_factory=lambda: list(MODELS))
    epochs: int | None = None  # None: each model's default (early stopping)
    bootstrap: int = 500
    batch_size: int | None = None  # None: extract's default per patch size
    num_workers: int = field(default_factory=_default_workers)
    min_tissue: float = 0.5
    grad_accum: int | None = None  # None: each model's default
    bag_batch: int | None = None  # bags per forward pass (mil.train.bag_batches); None: 1
    device: str = "auto"
    precision: str = "auto"


def case_of(stem: str, ids: set[str]) -> str | None:
    """The case a slide file belongs to: its stem, or the longest case id followed by - _ or ."""
    if stem in ids:
        return stem
    hits = [i for i in ids if stem.startswith(i) and re.match(r"[-_.]", stem[len(i):])]
    return max(hits, key=len) if hits else None


def _models(cfg: CohortRunConfig, rt, progress: bool) -> dict[str, Any]:
    out = {}
    for s in cfg.settings:
        # the default student is trained once under OUT/
        student = lambda: cfg.student or ensure_student(Path(cfg.out), teacher=cfg.encoder, progress=progress)  # noqa: E731
        out[s] = load_model(cfg.encoder, **setting_kwargs(s, student, ("20x", "5x", "5x_maga")), runtime=rt)
    return out


def extract_aligned(path: Path, models: dict[str, Any], outs: dict[str, Path], batch_size: int | None,
                    num_workers: int, min_tissue: float) -> dict[str, Any]:
    """One slide: tissue and one aligned grid, then every setting's features (HDF5, atomic)."""
    t0 = time.perf_counter()
    with open_slide(path) as reader:
        mask = detect_tissue(reader)
        coords = aligned_grid(reader, mask, tuple(sorted({m.mag for m in models.values()})),
                              {m.mag: m.patch_px for m in models.values()}, min_tissue=min_tissue)
        mpp, dims = float(reader.mpp), [int(d) for d in reader.dimensions]
    record: dict[str, Any] = {"slide": path.name, "dimensions": dims, "n_patches": int(len(coords)),
                              "tissue_grid_s": time.perf_counter() - t0, "settings": {}}
    for s, model in models.items():
        t1 = time.perf_counter()
        with feature_writer(outs[s], len(coords), model.dim, coords=coords, slide=path.name, mpp=mpp,
                            **model.attrs()) as put:
            embed_into(SlidePatches(path, coords, model.mag, model.patch_px), model, put, batch_size,
                       num_workers, desc=f"{path.name} {s}", progress=False)
        record["settings"][s] = {"embed_s": time.perf_counter() - t1, "bytes": outs[s].stat().st_size,
                                 "pixel_bytes": int(len(coords)) * model.patch_px ** 2 * 3}
    return record


def _case_file(case: str, slide_files: list[Path], widths: list[int], out: Path) -> None:
    """The case's bag: one slide's file linked (no copy), several concatenated side by side (coords
    shifted right by the preceding slides' widths, so instances stay apart)."""
    names = ";".join(p.stem for p in slide_files)
    if out.is_file():
        if ((len(slide_files) == 1 and out.samefile(slide_files[0]))
                or str(read_features(out).attrs.get("case_slides", "")) == names):
            return
        out.unlink()  # the case's slides changed (e.g. a failed slide now extracted)
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(slide_files) == 1:
        try:
            os.link(slide_files[0], out)
            return
        except OSError:
            pass
    parts = [read_features(p) for p in slide_files]
    shift = np.cumsum([0] + widths[:-1])
    coords = np.concatenate([f.coords + [dx, 0] for f, dx in zip(parts, shift)])
    attrs = {k: v for k, v in parts[0].attrs.items() if k not in ("slide",)}
    write_features(out, np.concatenate([f.features for f in parts]), coords=coords, slide=case,
                   case_slides=names, **attrs)


def run_cohort(cfg: CohortRunConfig, progress: bool = True) -> dict[str, Any]:
    """The whole run (resumed from what `cfg.out` holds); returns report.json's content."""
    slides_dir, out = Path(cfg.slides), Path(cfg.out)
    if not slides_dir.is_dir():
        raise MagaError("slides folder not found", slides_dir)
    unknown = set(cfg.models) - set(MODELS)
    if unknown:
        raise MagaError(f"unknown aggregator(s) {sorted(unknown)}; known: {', '.join(MODELS)}")
    if cfg.bag_batch is not None and cfg.bag_batch < 1:  # refused here, not after hours of feature extraction
        raise MagaError(f"bag_batch must be at least 1, got {cfg.bag_batch}")
    name, _, task = cfg.cohort.partition(":")
    cohort = load_upstream(name, task or None, root=cfg.upstream or None)
    rt = resolve(cfg.device, cfg.precision)
    save_config(cfg, out)
    notes = list(cohort.notes)
    ids = set(cohort.labels["slide"])
    slides = find_files(slides_dir, SLIDE_SUFFIXES)
    unlisted = [p.name for p in slides if case_of(p.stem, ids) is None]
    slides = [p for p in slides if case_of(p.stem, ids) is not None]
    if not slides:
        raise MagaError(f"no slide file is named after a case of {cohort.name} (e.g. {next(iter(sorted(ids)))})",
                        slides_dir)

    models = _models(cfg, rt, progress)
    feat = {s: out / "features" / s for s in cfg.settings}
    records, failed, resumed = {}, {}, []
    for path in tqdm(slides, desc="slides", unit="slide", disable=not progress):
        rec_path = out / "features" / "records" / f"{path.stem}.json"
        outs = {s: feat[s] / "slides" / f"{path.stem}.h5" for s in cfg.settings}
        if rec_path.is_file() and all(o.is_file() for o in outs.values()):
            rec = json.loads(rec_path.read_text())
            if set(rec["settings"]) >= set(cfg.settings):
                records[path.stem] = rec
                resumed.append(path.name)
                continue
        try:
            rec = extract_aligned(path, models, outs, cfg.batch_size, cfg.num_workers, cfg.min_tissue)
        except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the cohort
            if (stop := output_error(exc, out)) is not None:  # ... but a full or read-only output folder does
                raise stop from None
            failed[path.name] = one_line_cause(exc, path)
            continue
        rec["case"] = case_of(path.stem, ids)
        write_json(rec, rec_path)
        records[path.stem] = rec

    by_case: dict[str, list[str]] = {}
    for stem, rec in sorted(records.items()):
        by_case.setdefault(rec["case"], []).append(stem)
    for s in cfg.settings:
        for case, stems in by_case.items():
            _case_file(case, [feat[s] / "slides" / f"{st}.h5" for st in stems],
                       [records[st]["dimensions"][0] for st in stems], feat[s] / "cases" / f"{case}.h5")

    labels = cohort.labels[cohort.labels["slide"].isin(by_case)]
    splits = cohort.splits[cohort.splits["slide"].isin(by_case)]
    missing = len(ids) - len(labels)
    if missing:
        notes.append(f"{missing} listed cases have no (successfully extracted) slide here and are left out")
    keep = [f for f, sp in splits.groupby("fold") if {"train", "test"} <= set(sp["part"])]
    if len(keep) < splits["fold"].nunique():
        notes.append(f"folds without train or test cases here dropped; {len(keep)} folds run")
    splits = splits[splits["fold"].isin(keep)]
    if not keep:
        raise MagaError("no fold has both training and test cases among the slides here", slides_dir)
    labels_csv, splits_csv = UpstreamCohort(cohort.name, cohort.task, cohort.classes, labels, splits).write(
        out / "cohort")

    overrides = {"max_epochs": cfg.epochs, "grad_accum": cfg.grad_accum, "bag_batch": cfg.bag_batch,
                 "device": rt.device, "precision": rt.precision}
    for s in cfg.settings:
        for model in tqdm(cfg.models, desc=f"cv {s}", disable=not progress):
            cv = CVConfig.create(model, feat[s] / "cases", labels_csv, out / "cv" / s / model,
                                 train_overrides=overrides, splits=str(splits_csv), bootstrap=cfg.bootstrap)
            run_cv(cv, progress=False)

    table = reproduction_table(out, cfg, name)
    with atomic_path(out / TABLE) as tmp:
        table.to_csv(tmp, index=False)
    slide_rows = pd.DataFrame([{"slide": rec["slide"], "case": rec["case"], "setting": s, "n_patches": rec["n_patches"],
                                "seconds": rec["tissue_grid_s"] + v["embed_s"], "embed_s": v["embed_s"],
                                "bytes": v["bytes"], "pixel_bytes": v["pixel_bytes"]}
                               for rec in records.values() for s, v in rec["settings"].items() if s in cfg.settings])
    with atomic_path(out / "slides.csv") as tmp:
        slide_rows.to_csv(tmp, index=False)
    per_setting = {s: {"slides": int(len(g)), "seconds_per_slide": float(g["seconds"].mean()),
                       "embed_seconds_per_slide": float(g["embed_s"].mean()),
                       "feature_mb_per_slide": float(g["bytes"].mean() / 2**20),
                       "feature_gb": float(g["bytes"].sum() / 2**30),
                       "pixel_mb_per_slide": float(g["pixel_bytes"].mean() / 2**20)}
                   for s, g in slide_rows.groupby("setting")}
    hi = per_setting.get("20x")
    ratios = {f"20x_over_{s}": {k: hi[k] / v[k] for k in ("seconds_per_slide", "embed_seconds_per_slide",
                                                         "pixel_mb_per_slide")}
              for s, v in per_setting.items() if s != "20x" and hi}
    report = {"cohort": cohort.name, "task": cohort.task, "runtime": rt.record(),
              "slides": {"extracted": len(records) - len(resumed), "resumed": len(resumed), "failed": failed,
                         "unlisted": unlisted},
              "cases": int(len(labels)), "folds": len(keep), "per_setting": per_setting, "ratios": ratios,
              "notes": notes, "table": str(out / TABLE)}
    write_json(report, out / REPORT)
    return report


def read_run(out: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The reproduction table and report of a finished run in `out`; a one-line error naming the folder
    when either is missing (not a run, or one still going: the two are written last)."""
    out = Path(out)
    missing = [name for name in (TABLE, REPORT) if not (out / name).is_file()]
    if missing:
        raise MagaError(f"no finished `maga cohort run` here ({' and '.join(missing)} missing); "
                        f"run `maga cohort run --slides DIR --out {out}` first", out)
    return pd.read_csv(out / TABLE), json.loads((out / REPORT).read_text())


def reproduction_table(out: Path, cfg: CohortRunConfig, cohort: str) -> pd.DataFrame:
    """One row per aggregator x setting: mean AUC over folds (95% CI), pooled AUC, F1, the paper's figure."""
    rows = []
    for s in cfg.settings:
        for model in cfg.models:
            summary = load_results(out / "cv" / s / model)["summary"]
            mean, pooled = summary["mean_over_folds"], summary["pooled"]
            key, paper, paper_ci = (paper_figure(PAPER_TASK[cohort], model, s) if cohort in PAPER_TASK
                                    else ("", None, None))
            rows.append({"model": model, "setting": SETTINGS[s], "folds": summary["n_folds"],
                         "cases": summary["n_slides"], "auc_mean": mean["auc"]["value"],
                         "auc_ci_low": mean["auc"]["ci_low"], "auc_ci_high": mean["auc"]["ci_high"],
                         "auc_pooled": pooled["auc"]["value"], "f1_mean": mean["f1"]["value"],
                         "accuracy_mean": mean["accuracy"]["value"], "paper_key": key, "paper_auc": paper,
                         "paper_ci_low": paper_ci[0] if paper_ci else None,
                         "paper_ci_high": paper_ci[1] if paper_ci else None})
    return pd.DataFrame(rows)
