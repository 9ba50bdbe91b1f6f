"""The evidence run of the MIL half of the paper, on the real-tile cohort.

cohort (maga.experiments.tile_slides, tiles no model trained on; `check_leaks` refuses any other) -> features
at 20x and 5x with the ImageNet teacher, at 5x resized back to 256 px with the teacher (the fair no-MAGA
baseline) and at 5x with its MAGA student (native mode) -> cross-validation of every aggregator in every
setting, any setting choice made on validation parts only -> one table of mean AUC with patient-level
95% CIs beside the paper's figures, plus patient-clustered DeLong tests of 5x+MAGA against the other
settings and of coordinate-placed against sequence-placed grids. A model named "<model>@coords" is that
model with `placement="coords"`. Every stage caches under one folder and resumes; chapters 04 and 05
call `ensure_experiment`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from maga_core.align.tilesource import resolve_tiles
from maga_core.config import atomic_path, save_config
from maga_core.data.manifests import reference_path
from maga_core.data.tiles import tile_table
from maga_core.errors import MagaError
from maga_core.mil.cv import CVConfig, load_results, run_cv
from maga_core.mil.gltrans import LOCAL_DILATIONS
from maga_core.mil.train import TrainConfig
from maga_core.stats import delong_test
from maga import records
from maga.provenance import write_sidecar
from maga.runs import run_key
from maga.settings import SETTINGS, setting_kwargs
from maga.alignment.ensure import ensure_student
from maga.experiments.tile_slides import CohortConfig, check_leaks, ensure_cohort, load_cohort
from maga.extract_job import ExtractConfig, extract_batch

PLACED = "@coords"  # model-name suffix: the grid placed by tissue coordinates (GLTrans, TransMIL)
# Upstream CLAM runs its out-of-class instance terms on subtyping tasks (NSCLC) and not on detection
# (CAMELYON16); the task, not the number of classes, decides.
CLAM_SUBTYPING = {"lesion": False, "subtype": True}
# Which paper figure each (task, model, setting) stands beside (paper_results.yaml key paths).
PAPER_KEYS = {
    "lesion": ("camelyon16_metastasis", {("clam_sb", "20x"): "auc.clam_20x", ("transmil", "20x"): "auc.transmil_20x",
                                         ("gltrans", "20x"): "auc.gltrans_20x", ("gltrans", "5x_maga"): "auc.maga_gltrans_5x"}),
    "subtype": ("tcga_nsclc_subtyping", {("clam_sb", "20x"): "auc.clam_20x", ("transmil", "20x"): "auc.transmil_20x",
                                        ("clam_sb", "5x"): "auc.clam_5x", ("transmil", "5x"): "auc.transmil_5x",
                                        ("gltrans", "5x_maga"): "auc.maga_gltrans_5x",
                                        ("transmil", "5x_maga"): "transmil_with_maga.x5"}),
}

INCREMENT_KEYS = {"lesion": "camelyon16", "subtype": "nsclc"}  # task -> maga_auc_increment_percent key


@dataclass
class ExperimentConfig:
    """The whole evidence run. `train` maps a model name (or "*" for all) to TrainConfig overrides."""

    cohort: CohortConfig = field(default_factory=CohortConfig)
    encoder: str = "efficientnet_lite0"
    settings: list[str] = field(default_factory=lambda: list(SETTINGS))
    models: list[str] = field(default_factory=lambda: ["gltrans", "transmil", "clam_sb", "abmil"])
    folds: int | None = None  # None: the cohort's folds
    train: dict[str, dict[str, Any]] = field(default_factory=dict)
    # model -> TrainConfig overrides each fold chooses among on its validation part (mil.cv candidates)
    candidates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    clam_subtyping: bool | None = None  # None: upstream's choice for the task (CLAM_SUBTYPING)
    placement_settings: list[str] | None = None  # settings in which "@coords" models run; None: all
    cv_workers: int = 1  # cross-validations run side by side (each trains on one thread)
    student: dict[str, Any] = field(default_factory=dict)  # ensure_student arguments beyond the teacher
    bootstrap: int = 500
    num_workers: int = 0  # feature-extraction reader processes

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExperimentConfig":
        d = dict(d)
        cohort = d.pop("cohort", {}) or {}
        cohort = {k: tuple(v) if isinstance(v, list) else v for k, v in cohort.items()}
        return cls(cohort=CohortConfig(**cohort), **d)


def base_model(model: str) -> str:
    """The aggregator behind a model name ("gltrans@coords" -> "gltrans")."""
    return model.removesuffix(PLACED)


def cv_runs(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """Every (setting, model) this experiment cross-validates, in setting order."""
    return [(s, m) for s in cfg.settings for m in cfg.models
            if not m.endswith(PLACED) or cfg.placement_settings is None or s in cfg.placement_settings]


def train_overrides(cfg: ExperimentConfig, model: str) -> dict[str, Any]:
    """TrainConfig overrides of one model: the "*" entry, the base model's, the name's own; plus the
    grid placement of "@coords" names and CLAM's subtyping setting for the task."""
    base = base_model(model)
    out = {**cfg.train.get("*", {}), **cfg.train.get(base, {}), **(cfg.train.get(model, {}) if model != base else {})}
    kw = dict(out.get("model_kw", {}))
    if model.endswith(PLACED):
        kw["placement"] = "coords"
    if base.startswith("clam"):
        kw.setdefault("subtyping", CLAM_SUBTYPING[cfg.cohort.task] if cfg.clam_subtyping is None
                      else cfg.clam_subtyping)
    if kw:
        out["model_kw"] = kw
    return out


def trained_tiles(student: str | Path) -> list[Path]:
    """The tile images a MAGA student trained on, from the settings saved in its checkpoint."""
    import torch

    saved = torch.load(student, map_location="cpu", weights_only=True)["config"]
    return resolve_tiles(saved["tiles"], saved.get("max_tiles"), saved.get("seed", 0))


def cv_dir(root: str | Path, cfg: ExperimentConfig, setting: str, model: str) -> Path:
    """Where one model's cross-validation in one setting lives (cv_dir(...)/fold_XX/checkpoint.pt, ...)."""
    if (setting, model) not in cv_runs(cfg):
        raise MagaError(f"this experiment runs no {model} at {setting}", root)
    return Path(root) / "cv" / setting / model


def student_checkpoint(cfg: ExperimentConfig, runs: Path, progress: bool = True) -> Path:
    """The 5x MAGA student (native mode) this run uses, trained once and shared with other chapters."""
    return ensure_student(runs, teacher=cfg.encoder, **{"mag": 5.0, "mode": "native", **cfg.student}, progress=progress)


def extract_setting(cfg: ExperimentConfig, setting: str, slides_dir: Path, out: Path, progress: bool,
                    runs: Path) -> Path:
    """Feature files of every cohort slide for one setting (resumes; failures are an error here)."""
    kw = setting_kwargs(setting, lambda: student_checkpoint(cfg, runs, progress))
    ecfg = ExtractConfig(encoder=cfg.encoder, input=str(slides_dir), out=str(out), input_kind="slides",
                         num_workers=cfg.num_workers, progress=progress, **kw)
    report = extract_batch(ecfg)
    if not report.ok:
        raise MagaError("feature extraction failed for some slides:\n" + report.summary(), out)
    return out


def paper_figure(task: str, model: str, setting: str) -> tuple[str, float | None, list[float] | None]:
    """(key path, mean, CI) of the paper figure this cell stands beside; ("", None, None) if none."""
    import yaml

    section, keys = PAPER_KEYS[task]
    key = keys.get((model, setting))
    if not key:
        return "", None, None
    node: Any = yaml.safe_load(reference_path("paper_results.yaml").read_text())[section]
    for part in key.split("."):
        node = node[part]
    if isinstance(node, dict):
        return f"{section}.{key}", float(node["mean"]), [float(c) for c in node["ci"]]
    return f"{section}.{key}", float(node), None


def results_table(root: Path, cfg: ExperimentConfig) -> pd.DataFrame:
    """One row per model x setting: mean AUC over folds with its patient-level 95% CI, pooled AUC/F1, the
    paper's figure."""
    rows = []
    for setting, model in cv_runs(cfg):
        res = load_results(cv_dir(root, cfg, setting, model))
        s = res["summary"]
        mean, pooled = s["mean_over_folds"], s["pooled"]
        key, paper, paper_ci = paper_figure(cfg.cohort.task, model, setting)
        patients = res["predictions"]["patient"].nunique()
        rows.append({
            "model": model, "setting": SETTINGS[setting], "folds": s["n_folds"], "slides": s["n_slides"],
            "patients": int(patients),
            "auc_mean": mean["auc"]["value"], "auc_ci_low": mean["auc"]["ci_low"], "auc_ci_high": mean["auc"]["ci_high"],
            "auc_pooled": pooled["auc"]["value"], "auc_pooled_ci_low": pooled["auc"]["ci_low"],
            "auc_pooled_ci_high": pooled["auc"]["ci_high"], "f1_mean": mean["f1"]["value"],
            "accuracy_mean": mean["accuracy"]["value"], "paper_key": key, "paper_auc": paper,
            "paper_ci_low": paper_ci[0] if paper_ci else None, "paper_ci_high": paper_ci[1] if paper_ci else None,
        })
    return pd.DataFrame(rows)


def _paired(root: Path, cfg: ExperimentConfig, a: tuple[str, str], b: tuple[str, str]) -> dict[str, Any] | None:
    """Patient-clustered DeLong test of two (setting, model) runs on the same test slides (binary tasks)."""
    pa = load_results(cv_dir(root, cfg, *a))["predictions"].set_index(["fold", "slide"])
    pb = load_results(cv_dir(root, cfg, *b))["predictions"].set_index(["fold", "slide"]).loc[pa.index]
    if pa["prob_1"].isna().any() or "prob_2" in pa.columns:
        return None  # DeLong here is for binary tasks
    r = delong_test(pa["label"].to_numpy(), pa["prob_1"].to_numpy(), pb["prob_1"].to_numpy(),
                    groups=pa["patient"].astype(str).to_numpy())
    return {"auc_a": r.auc_a, "auc_b": r.auc_b, "z": r.z, "p_value": r.p_value, "n": len(pa),
            "patients": int(pa["patient"].nunique())}


def delong_table(root: Path, cfg: ExperimentConfig) -> pd.DataFrame:
    """Per model, 5x+MAGA against 5x, 5x upsampled and 20x, and 5x against 20x: DeLong tests clustered
    by patient (Obuchowski) on the pooled test predictions."""
    rows = []
    for model in cfg.models:
        for a, b in (("5x_maga", "5x"), ("5x_maga", "5x_up"), ("5x_maga", "20x"), ("5x", "20x")):
            if (a, model) in cv_runs(cfg) and (b, model) in cv_runs(cfg):
                r = _paired(root, cfg, (a, model), (b, model))
                if r:
                    rows.append({"model": model, "a": SETTINGS[a], "b": SETTINGS[b], **r})
    return pd.DataFrame(rows)


def placement_table(root: Path, cfg: ExperimentConfig) -> pd.DataFrame:
    """Grid placed by tissue coordinates against upstream's sequence placement, per model and setting."""
    rows = []
    for model in cfg.models:
        if not model.endswith(PLACED) or base_model(model) not in cfg.models:
            continue
        for setting in cfg.settings:
            r = _paired(root, cfg, (setting, model), (setting, base_model(model))) if (setting, model) in cv_runs(cfg) \
                else None
            if r:
                rows.append({"model": base_model(model), "setting": SETTINGS[setting], "auc_coords": r["auc_a"],
                             "auc_sequence": r["auc_b"], "z": r["z"], "p_value": r["p_value"], "n": r["n"],
                             "patients": r["patients"]})
    return pd.DataFrame(rows, columns=["model", "setting", "auc_coords", "auc_sequence", "z", "p_value", "n",
                                       "patients"])


TABLES = ("auc", "delong", "placement", "selection")


def selection_table(root: Path, cfg: ExperimentConfig) -> pd.DataFrame:
    """Which candidate setting each fold chose on its validation part (models with candidates)."""
    parts = []
    for setting, model in cv_runs(cfg):
        for f in sorted(cv_dir(root, cfg, setting, model).glob("fold_*/selection.csv")):
            parts.append(pd.read_csv(f).assign(model=model, setting=SETTINGS[setting]))
    cols = ["model", "setting", "fold", "candidate", "overrides", "val_auc", "val_loss", "best_epoch", "chosen"]
    return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def cohort_facts(root: str | Path, cfg: ExperimentConfig, runs: Path) -> dict[str, Any]:
    """The numbers chapter 04's prose quotes, computed from the built cohort and the student's tile list."""
    cohort = load_cohort(Path(root) / "cohort")
    slides, tiles = cohort.slides, cohort.tiles
    folds = cfg.folds or cfg.cohort.folds
    per_fold = slides.assign(f=slides["fold"] % folds).groupby("f")
    source = tiles.drop_duplicates(["dataset", "tile"])
    facts: dict[str, Any] = {
        "slides": len(slides), "patients": int(slides["patient"].nunique()), "folds": folds,
        "test_slides_per_fold": sorted(set(per_fold.size().tolist())),
        "test_patients_per_fold": sorted(set(per_fold["patient"].nunique().tolist())),
        "tile_placements": len(tiles), "placements_per_slide": round(len(tiles) / len(slides), 1),
        "source_tiles": len(source), "source_tiles_per_patient": round(len(source) / slides["patient"].nunique(), 1),
        "lesion_placements": int((tiles["role"] == "lesion").sum()),
        "tile_splits": list(cfg.cohort.tile_splits) or ["all"],
    }
    if "5x_maga" in cfg.settings:
        seen = trained_tiles(student_checkpoint(cfg, runs, progress=False))
        facts["student_tiles"] = len(seen)
        facts["student_tiles_on_slides"] = len({str(Path(q).resolve()) for q in seen} & {
            str(Path(q).resolve()) for q in _source_paths(source)})
    return facts


def _source_paths(source: pd.DataFrame) -> list[str]:
    out = []
    for dataset, sub in source.groupby("dataset"):
        paths = tile_table(dataset).set_index("relpath")["path"]
        out += paths.loc[sub["tile"]].tolist()
    return out


def prepare_features(cfg: ExperimentConfig, root: str | Path, runs: Path, progress: bool = True) -> dict[str, Path]:
    """The stages before any training, each resumed from what `root` holds: the cohort, the leak check
    (MagaError if a test slide shows a tile the student or an aggregator trained on), and every setting's
    feature folder."""
    root = Path(root)
    _check_identity(cfg, root)
    cohort = ensure_cohort(cfg.cohort, root / "cohort", progress=progress)
    student = student_checkpoint(cfg, runs, progress) if "5x_maga" in cfg.settings else None
    check_leaks(cohort.tiles, trained_tiles(student) if student else None, folds=cfg.folds or cfg.cohort.folds)
    write_sidecar(save_config(cfg, root, "experiment_config.json"), config=cfg)
    return {s: extract_setting(cfg, s, cohort.root / "slides", root / "features" / s, progress, runs)
            for s in cfg.settings}


def cv_config(cfg: ExperimentConfig, root: str | Path, setting: str, model: str) -> CVConfig:
    """The cross-validation of one model in one setting, as the run does it."""
    root = Path(root)
    return CVConfig.create(base_model(model), root / "features" / setting, root / "cohort" / "labels.csv",
                           cv_dir(root, cfg, setting, model), train_overrides=train_overrides(cfg, model),
                           folds=cfg.folds or cfg.cohort.folds, bootstrap=cfg.bootstrap,
                           candidates=cfg.candidates.get(model, []))


def run_experiment(cfg: ExperimentConfig, root: str | Path, runs: Path, progress: bool = True
                   ) -> dict[str, pd.DataFrame]:
    """All stages, each resumed from what `root` already holds; returns the result tables."""
    root = Path(root)
    prepare_features(cfg, root, runs, progress)
    todo = [cv for cv in (cv_config(cfg, root, s, m) for s, m in cv_runs(cfg))
            if not (Path(cv.out) / "summary.json").is_file()]
    _run_all(todo, cfg.cv_workers, progress)
    tables = {"auc": results_table(root, cfg), "delong": delong_table(root, cfg),
              "placement": placement_table(root, cfg), "selection": selection_table(root, cfg)}
    for name, table in tables.items():
        with atomic_path(root / f"{name}_table.csv") as tmp:
            table.to_csv(tmp, index=False)
        write_sidecar(root / f"{name}_table.csv", config=cfg)
    return tables


def _run_all(todo: list[CVConfig], workers: int, progress: bool) -> None:
    """Run the cross-validations, `workers` at a time in separate processes: training uses one thread,
    so on a machine with more cores this divides the wall time. Each run is seeded and writes its own
    folder, so the results do not depend on the number of workers."""
    if workers <= 1 or len(todo) <= 1:
        for cv in todo:
            run_cv(cv, progress=progress)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        jobs = [pool.submit(run_cv, cv, False) for cv in todo]
        for job in tqdm(jobs, desc="cross-validations", disable=not progress):
            job.result()


_NOT_IN_KEY = {"num_workers", "cv_workers"}  # how the run is spread over processes, not what it computes


def _identity(d: dict[str, Any]) -> dict[str, Any]:
    """The configuration fields that decide the results (JSON-normalised)."""
    return {k: v for k, v in json.loads(json.dumps(d)).items() if k not in _NOT_IN_KEY and k != "kind"}


def default_root(cfg: ExperimentConfig, runs: Path) -> Path:
    """<runs>/mil_evidence/<task>_<hash of the config>: chapters 04 and 05 share one run."""
    return Path(runs) / "mil_evidence" / f"{cfg.cohort.task}_{run_key(_identity(dataclasses.asdict(cfg)))}"


def ensure_experiment(cfg: ExperimentConfig, runs: Path, root: str | Path | None = None,
                      progress: bool = True) -> dict[str, pd.DataFrame]:
    """The tables of a finished run at `root` (default: `default_root`) with this config, else run
    (or resume) it; its MAGA student is shared under `runs`."""
    root = Path(root) if root is not None else default_root(cfg, runs)
    _check_identity(cfg, root)
    if (root / "experiment_config.json").is_file() and all((root / f"{n}_table.csv").is_file() for n in TABLES):
        return {n: pd.read_csv(root / f"{n}_table.csv") for n in TABLES}
    return run_experiment(cfg, root, runs, progress=progress)


def _check_identity(cfg: ExperimentConfig, root: Path) -> None:
    """Refuse a folder that holds a run of another configuration."""
    saved = root / "experiment_config.json"
    if saved.is_file() and _identity(json.loads(saved.read_text())) != _identity(dataclasses.asdict(cfg)):
        raise MagaError("holds an experiment with another configuration; choose another folder", root)


# ---------------------------------------------------------------- what chapters 04 and 05 draw

def fold_aucs(root: str | Path, cfg: ExperimentConfig) -> dict[str, list[float]]:
    """'model setting' -> per-fold test AUCs (box plots)."""
    out = {}
    for setting, model in cv_runs(cfg):
        fm = load_results(cv_dir(root, cfg, setting, model))["fold_metrics"]
        out[f"{model} {SETTINGS[setting]}"] = fm.loc[fm["metric"] == "auc", "value"].tolist()
    return out


def roc_curves(root: str | Path, cfg: ExperimentConfig, model: str) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """Setting -> per-fold ROC curves (fpr, tpr) of one model (binary tasks), for a band over folds."""
    from sklearn.metrics import roc_curve

    curves = {}
    for setting in cfg.settings:
        pred = load_results(cv_dir(root, cfg, setting, model))["predictions"]
        pairs = []
        for _, sub in pred.groupby("fold"):
            if sub["label"].nunique() == 2:
                fpr, tpr, _ = roc_curve(sub["label"], sub["prob_1"])
                pairs.append((fpr, tpr))
        curves[SETTINGS[setting]] = pairs
    return curves


def summary_figures(table: pd.DataFrame, cfg: ExperimentConfig) -> dict[str, Any]:
    """The measured cells that have a paper counterpart, nested by paper_results.yaml key path: AUCs,
    MAGA's relative AUC gain at 5x for TransMIL and CLAM, and the CV and GLTrans settings used."""
    figures: dict[str, Any] = {}
    for r in table.dropna(subset=["paper_auc"]).itertuples():
        node = figures
        *parents, leaf = r.paper_key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = {"mean": round(float(r.auc_mean), 4), "ci": [round(float(r.auc_ci_low), 4),
                                                                  round(float(r.auc_ci_high), 4)]}
    auc = table.set_index(["model", "setting"])["auc_mean"]
    gains = {paper_model: {INCREMENT_KEYS[cfg.cohort.task]: {"x5": round(
                 100 * (auc[model, SETTINGS["5x_maga"]] - auc[model, SETTINGS["5x"]]) / auc[model, SETTINGS["5x"]], 2)}}
             for model, paper_model in (("transmil", "transmil"), ("clam_sb", "clam"))
             if (model, SETTINGS["5x"]) in auc.index and (model, SETTINGS["5x_maga"]) in auc.index}
    if gains:
        figures["maga_auc_increment_percent"] = gains
    folds = cfg.folds or cfg.cohort.folds
    figures["cross_validation"] = {"folds": folds, "bootstrap_resamples": cfg.bootstrap,
                                   "split": f"{100 * (folds - 2) / folds:.0f}/{100 / folds:.0f}/{100 / folds:.0f} "
                                            "train/val/test, patient-level"}
    if "gltrans" in cfg.models:
        t = TrainConfig.for_model("gltrans", **train_overrides(cfg, "gltrans"))
        figures["gltrans"] = {"local_dilations": list(LOCAL_DILATIONS), "monitor": t.monitor,
                              "optimizer": {"name": t.optimizer, "lr": t.lr, "weight_decay": t.weight_decay}}
    return figures


def save_summary(tables: dict[str, pd.DataFrame], cfg: ExperimentConfig, runs: Path) -> Path:
    """Hand this chapter's AUCs to the reproduction summary (chapter 09), with what differs from the paper."""
    section = PAPER_KEYS[cfg.cohort.task][0]
    c = cfg.cohort
    features = f"{cfg.encoder} (ImageNet) features and its MAGA student (native 5x) instead of ResNet50"
    note = (f"Mosaic slides of real H&E tiles (LC25000 lung, 0.5 um/px) from splits no model trained on, "
            f"{c.n_patients * c.slides_per_patient} slides, {cfg.folds or c.folds}-fold patient-level CV with "
            f"patient-level bootstrap CIs; {features}; "
            + ("training settings as in the papers" if not cfg.train else
               "training settings of the preset where they differ from the papers' (experiment_config.json)")
            + ". Not the paper's cohort: compare trends, not values.")
    return records.save_results(
        "04_mil_cross_validation", runs=runs, figures=summary_figures(tables["auc"], cfg),
        notes={section: note,
               f"{section}.time_s": "per-slide time is measured on a TCGA-size slide in chapter 8 (GLTrans only)",
               f"{section}.storage_gb": "per-slide storage is measured in chapters 1 and 8",
               "maga_auc_increment_percent": f"100 x (AUC 5x+MAGA - AUC 5x) / AUC 5x, mean AUC over folds, on the "
                                             f"chapter's real-tile cohort ({c.task}); {features}",
               "cross_validation": "folds and bootstrap resamples of this build's preset (the paper: 10 folds)",
               "cross_validation.split": "validation is the fold after the test fold",
               "gltrans": "as run in this build; the public GLTrans code uses Lookahead(RAdam), which the paper "
                          "calls Adam with Lookahead"},
        extra={"auc_table": tables["auc"].to_dict("records"), "delong": tables["delong"].to_dict("records")})
