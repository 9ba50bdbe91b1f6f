"""Patient-level k-fold cross-validation of one aggregator on a folder of per-slide feature files.

Splits follow the paper (80/10/10 for k = 10): patients are dealt into k folds, stratified by label and
grouped by patient (a patient's slides never straddle two sets); fold f tests on part f, validates on
part f+1 (mod k) and trains on the rest. Folds may also come from a cohort manifest (a `fold` column in
the labels file, e.g. the real-tile cohort, whose folds keep near-duplicate clusters apart) or from a
splits file (e.g. the upstream study's lists, `maga.cohorts`).

Results are tidy files the book reads: predictions.csv (one row per test slide per fold),
fold_metrics.csv (one row per fold and metric, with a bootstrap CI), bootstrap.csv (the resampled AUCs
behind the box plots), summary.json (pooled and mean-over-folds metrics with CIs), config.json, and per
fold selection.csv when the fold chose among candidate settings on its validation part.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from maga_core import stats
from maga_core.config import atomic_path, save_config, to_jsonable, write_json
from maga_core.device import without_runtime
from maga_core.errors import MagaError
from maga_core.mil.train import Bag, TrainConfig, load_bags, predict_bags, torch_threads, train_run

PARTS = ("train", "val", "test")


@dataclass
class CVConfig:
    """One cross-validation run. `train` holds the model's TrainConfig (per-model defaults + overrides)."""

    model: str = "gltrans"
    features: str = ""  # folder of <slide>.h5
    labels: str = ""  # CSV: slide, label[, patient][, fold]
    out: str = ""
    folds: int = 10
    seed: int = 2023  # fold assignment (the training seed is train.seed)
    splits: str = ""  # optional CSV fold, slide, part (overrides `folds`/`fold` column)
    bootstrap: int = 500
    confidence: float = 0.95
    train: TrainConfig = field(default_factory=TrainConfig)
    # TrainConfig overrides tried in every fold: each is trained on the fold's train part and the one
    # best on its validation part (AUC, then loss) is tested, so no setting is chosen on a test fold.
    candidates: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def create(cls, model: str, features: str | Path, labels: str | Path, out: str | Path,
               train_overrides: dict[str, Any] | None = None, **kw: Any) -> "CVConfig":
        train = TrainConfig.for_model(model, **(train_overrides or {}))
        return cls(model=model, features=str(features), labels=str(labels), out=str(out), train=train, **kw)

    def candidate_configs(self) -> list[TrainConfig]:
        """The training settings a fold chooses among (just `train` when there are no candidates)."""
        base = dataclasses.asdict(self.train)
        return [TrainConfig(**{**base, **c}) for c in self.candidates] or [self.train]


# ---------------------------------------------------------------- labels and splits

def _read_csv(path: Path, dtype: dict[str, type]) -> pd.DataFrame:
    """A CSV as a DataFrame; a file pandas cannot parse is a one-line MagaError."""
    try:
        return pd.read_csv(path, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - parser, decoding and empty-file errors alike
        cause = " ".join(str(exc).split())
        raise MagaError(f"cannot read CSV ({type(exc).__name__}: {cause})", path) from None


def read_labels(path: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """slide, label (int), patient (default: the slide), optional fold; plus the class names.

    String labels are mapped to sorted class indices; integer labels are kept (0..C-1), with names
    from a `label_name` column when present.
    """
    path = Path(path)
    if not path.is_file():
        raise MagaError("labels file not found", path)
    df = _read_csv(path, {"slide": str, "patient": str})
    missing = {"slide", "label"} - set(df.columns)
    if missing:
        raise MagaError(f"missing column(s) {sorted(missing)} (need slide, label[, patient][, fold])", path)
    if df["slide"].duplicated().any():
        raise MagaError(f"duplicate slide ids, e.g. {df.loc[df['slide'].duplicated(), 'slide'].iloc[0]!r}", path)
    if df["label"].isna().any():
        raise MagaError("empty label(s)", path)
    if pd.api.types.is_integer_dtype(df["label"]):
        n = int(df["label"].max()) + 1
        if df["label"].min() < 0:
            raise MagaError("integer labels must be 0..C-1", path)
        names = (df.drop_duplicates("label").set_index("label")["label_name"].reindex(range(n)).fillna("").tolist()
                 if "label_name" in df.columns else [str(i) for i in range(n)])
        names = [nm if nm else str(i) for i, nm in enumerate(names)]
    else:
        names = sorted(df["label"].astype(str).unique())
        df["label"] = df["label"].astype(str).map({n: i for i, n in enumerate(names)})
    if len(names) < 2:
        raise MagaError("need at least two classes", path)
    if "patient" not in df.columns:
        df["patient"] = df["slide"]
    df["patient"] = df["patient"].fillna(df["slide"]).astype(str)
    cols = ["slide", "label", "patient"] + (["fold"] if "fold" in df.columns else [])
    return df[cols].reset_index(drop=True), names


def assign_folds(labels: pd.DataFrame, k: int, seed: int) -> pd.Series:
    """Fold (0..k-1) of every slide: stratified by label, grouped by patient.

    A `fold` column (from a cohort manifest) is honoured, folded modulo k so that coarser folds stay
    unions of the manifest's; otherwise scikit-learn's StratifiedGroupKFold deals the patients.
    """
    if "fold" in labels.columns:
        return labels["fold"].astype(int) % k
    from sklearn.model_selection import StratifiedGroupKFold

    n_patients = labels["patient"].nunique()
    if n_patients < k:
        raise MagaError(f"{n_patients} patients cannot fill {k} folds")
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    fold = pd.Series(-1, index=labels.index)
    for f, (_, test) in enumerate(sgkf.split(labels, labels["label"], groups=labels["patient"])):
        fold.iloc[test] = f
    return fold


def make_splits(labels: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Long table fold, slide, patient, label, part: fold f tests on part f, validates on f+1."""
    if k < 3:
        raise MagaError(f"need at least 3 folds for train/val/test, got {k}")
    fold_of = assign_folds(labels, k, seed)
    rows = []
    for f in range(k):
        part = np.where(fold_of == f, "test", np.where(fold_of == (f + 1) % k, "val", "train"))
        rows.append(labels[["slide", "patient", "label"]].assign(fold=f, part=part))
    return pd.concat(rows, ignore_index=True)[["fold", "slide", "patient", "label", "part"]]


def read_splits(path: str | Path, labels: pd.DataFrame) -> pd.DataFrame:
    """A splits CSV (fold, slide, part) joined with the labels; slides without labels are an error."""
    path = Path(path)
    if not path.is_file():
        raise MagaError("splits file not found", path)
    sp = _read_csv(path, {"slide": str})
    if {"fold", "slide", "part"} - set(sp.columns) or not sp["part"].isin(PARTS).all():
        raise MagaError("need columns fold, slide, part with part in train/val/test", path)
    merged = sp.merge(labels[["slide", "patient", "label"]], on="slide", how="left")
    if merged["label"].isna().any():
        raise MagaError(f"slides without a label, e.g. {merged.loc[merged['label'].isna(), 'slide'].iloc[0]!r}", path)
    merged["label"] = merged["label"].astype(int)
    return merged[["fold", "slide", "patient", "label", "part"]]


def check_splits(splits: pd.DataFrame) -> None:
    """Within every fold, each patient sits in exactly one part (no leakage between train/val/test)."""
    parts = splits.groupby(["fold", "patient"])["part"].nunique()
    if (parts > 1).any():
        fold, patient = parts[parts > 1].index[0]
        raise MagaError(f"patient {patient!r} appears in more than one of train/val/test in fold {fold}")


# ---------------------------------------------------------------- metrics

def _metric_rows(y: np.ndarray, probs: np.ndarray, n_boot: int, confidence: float, seed: int,
                 patients: np.ndarray) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Point metrics with bootstrap CIs (whole patients resampled, stratified by their classes), and the
    resampled values of each metric."""
    rep = stats.bootstrap_metrics(y, probs, n_boot=n_boot, confidence=confidence, seed=seed, groups=patients)
    rows = [{"metric": m, "value": v["value"], "ci_low": v["ci_low"], "ci_high": v["ci_high"]}
            for m, v in rep["metrics"].items()]
    return rows, {m: np.asarray(v, dtype=float) for m, v in rep["samples"].items()}


def summarize(out_dir: str | Path, n_boot: int = 500, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """fold_metrics.csv, bootstrap.csv and summary.json from predictions.csv.

    Pooled: all test predictions of all folds together. Mean over folds: the mean of per-fold values,
    with two CIs: `ci_low/ci_high` from the same resamples (each replicate resamples every fold's test
    patients - all slides of a drawn patient together, since they share tissue - and averages the fold
    values: the paper's "resample the patients in each fold 500 times"), and `t_ci_low/t_ci_high`,
    Student's t over the fold values (spread between folds).
    """
    from scipy import stats as sps

    out_dir = Path(out_dir)
    pred = pd.read_csv(out_dir / "predictions.csv", dtype={"slide": str, "patient": str})
    prob_cols = sorted((c for c in pred.columns if c.startswith("prob_")), key=lambda c: int(c.split("_")[1]))
    metric_rows, boot_rows, fold_samples = [], [], []
    for f, sub in pred.groupby("fold", sort=True):
        rows, samples = _metric_rows(sub["label"].to_numpy(), sub[prob_cols].to_numpy(), n_boot, confidence,
                                     seed + int(f), sub["patient"].to_numpy())
        metric_rows += [{"fold": int(f), "n": len(sub), **r} for r in rows]
        boot_rows.append(pd.DataFrame({"fold": int(f), "replicate": np.arange(n_boot), **samples}))
        fold_samples.append(samples)
    fold_metrics = pd.DataFrame(metric_rows)
    pooled_rows, _ = _metric_rows(pred["label"].to_numpy(), pred[prob_cols].to_numpy(), n_boot, confidence, seed,
                                  pred["patient"].to_numpy())
    alpha = (1 - confidence) / 2
    per_fold = fold_metrics.pivot(index="fold", columns="metric", values="value")
    mean_over_folds = {}
    for m in per_fold.columns:
        vals = per_fold[m].to_numpy(dtype=float)
        vals = vals[~np.isnan(vals)]
        mean = float(vals.mean()) if len(vals) else float("nan")
        sd = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        half = float(sps.t.ppf(1 - alpha, len(vals) - 1) * sd / np.sqrt(len(vals))) if len(vals) > 1 else float("nan")
        with np.errstate(all="ignore"):
            means = np.nanmean(np.vstack([s[m] for s in fold_samples]), axis=0)
        means = means[~np.isnan(means)]
        lo, hi = np.quantile(means, [alpha, 1 - alpha]) if len(means) else (np.nan, np.nan)
        mean_over_folds[m] = {"value": mean, "ci_low": float(lo), "ci_high": float(hi), "sd": sd,
                              "t_ci_low": mean - half, "t_ci_high": mean + half, "n_folds": int(len(vals))}
    summary = {
        "n_slides": int(pred["slide"].nunique()), "n_folds": int(pred["fold"].nunique()),
        "confidence": confidence, "bootstrap": n_boot,
        "pooled": {r["metric"]: {k: r[k] for k in ("value", "ci_low", "ci_high")} for r in pooled_rows},
        "mean_over_folds": mean_over_folds,
    }
    with atomic_path(out_dir / "fold_metrics.csv") as tmp:
        fold_metrics.to_csv(tmp, index=False)
    with atomic_path(out_dir / "bootstrap.csv") as tmp:
        pd.concat(boot_rows, ignore_index=True).to_csv(tmp, index=False)
    write_json(summary, out_dir / "summary.json")
    return summary


# ---------------------------------------------------------------- the run

_PATHS = {"kind", "out", "features", "labels", "splits"}
# TrainConfig fields added after runs were saved, at the value that reproduces those runs
_ADDED_TRAIN_DEFAULTS = {"bag_batch": 1}


def _comparable(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved CVConfig as resume checks compare it: no paths, no runtime, no training field at the
    default it was added with (so folders written before it still resume)."""
    d = {k: v for k, v in without_runtime(saved).items() if k not in _PATHS}
    d["train"] = {k: v for k, v in d["train"].items()
                  if not (k in _ADDED_TRAIN_DEFAULTS and v == _ADDED_TRAIN_DEFAULTS[k])}
    return d


def _claim(out: Path, cfg: CVConfig) -> None:
    """Save the config beside the results; refuse to resume a folder that holds another run's folds.
    Paths are not compared, so a finished run may be moved with its inputs."""
    saved = out / "config.json"
    if saved.is_file():
        before = json.loads(saved.read_text())
        now = json.loads(json.dumps(to_jsonable(cfg)))
        if _comparable(before) != _comparable(now):  # a run may resume on another device
            raise MagaError("holds a cross-validation run with another configuration; choose another --out", out)
    save_config(cfg, out)


def cv_data(cfg: CVConfig) -> tuple[pd.DataFrame, dict[str, Bag], list[str]]:
    """What a cross-validation reads: its splits (fold, slide, patient, label, part), every used slide's
    bag by slide id, and the class names."""
    labels, classes = read_labels(cfg.labels)
    splits = read_splits(cfg.splits, labels) if cfg.splits else make_splits(labels, cfg.folds, cfg.seed)
    check_splits(splits)
    features = Path(cfg.features)
    if not features.is_dir():
        raise MagaError("features folder not found", features)
    used = splits["slide"].unique()
    table = labels.set_index("slide").loc[used]
    return splits, {b.slide: b for b in load_bags(list(used), table["label"].tolist(), features)}, classes


def fold_bags(splits: pd.DataFrame, bags: dict[str, Bag], fold: int) -> dict[str, list[Bag]]:
    """One fold's train, val and test bags, in the splits' order."""
    sp = splits[splits["fold"] == fold]
    return {p: [bags[s] for s in sp.loc[sp["part"] == p, "slide"]] for p in PARTS}


def run_cv(cfg: CVConfig, progress: bool = True) -> dict[str, Any]:
    """Train/select/test one model per fold; resumable (finished folds are kept); returns the summary."""
    if cfg.model != cfg.train.model:
        raise MagaError(f"config names model {cfg.model!r} but its training settings are for {cfg.train.model!r}")
    out = Path(cfg.out)
    splits, all_bags, classes = cv_data(cfg)
    _claim(out, cfg)
    with atomic_path(out / "splits.csv") as tmp:
        splits.to_csv(tmp, index=False)
    write_json({"classes": classes}, out / "classes.json")
    fold_ids = sorted(splits["fold"].unique())
    preds = []
    for f in tqdm(fold_ids, desc=f"cv {cfg.model}", disable=not progress):
        fold_dir = out / f"fold_{int(f):02d}"
        done = fold_dir / "predictions.csv"
        if not done.is_file():
            sp = splits[splits["fold"] == f]
            bags = fold_bags(splits, all_bags, f)
            if not bags["train"] or not bags["test"]:
                raise MagaError(f"fold {f} has an empty train or test set", cfg.splits or cfg.labels)
            model, result, tcfg = _select_on_validation(cfg, bags, fold_dir, len(classes), progress, f)
            with torch_threads(tcfg.threads):
                p = predict_bags(model, bags["test"])["probs"]
            df = pd.DataFrame({"fold": int(f), "slide": [b.slide for b in bags["test"]],
                               "patient": sp.loc[sp["part"] == "test", "patient"].to_numpy(),
                               "label": [b.label for b in bags["test"]], "pred": p.argmax(1),
                               "best_epoch": result.best_epoch})
            for c in range(p.shape[1]):
                df[f"prob_{c}"] = p[:, c]
            with atomic_path(done) as tmp:
                df.to_csv(tmp, index=False)
        preds.append(pd.read_csv(done, dtype={"slide": str, "patient": str}))
    pred = pd.concat(preds, ignore_index=True)
    with atomic_path(out / "predictions.csv") as tmp:
        pred.to_csv(tmp, index=False)
    return summarize(out, n_boot=cfg.bootstrap, confidence=cfg.confidence, seed=cfg.seed)


def _select_on_validation(cfg: CVConfig, bags: dict[str, list], fold_dir: Path, n_classes: int, progress: bool,
                          fold: int) -> tuple[Any, Any, TrainConfig]:
    """Train every candidate setting on the train part; keep the one best on the validation part (its
    AUC at the selected epoch, ties broken by lower loss). selection.csv records the choice."""
    options = cfg.candidate_configs()
    if len(options) == 1:
        model, result = train_run(options[0], bags["train"], bags["val"], fold_dir, n_classes=n_classes,
                                  progress=progress, desc=f"fold {fold}")
        return model, result, options[0]
    if not bags["val"]:
        raise MagaError(f"fold {fold} has no validation part to choose among {len(options)} settings",
                        cfg.splits or cfg.labels)
    rows, runs = [], []
    for i, tcfg in enumerate(options):
        where = fold_dir / f"candidate_{i}"
        model, result = train_run(tcfg, bags["train"], bags["val"], where, n_classes=n_classes,
                                  progress=progress, desc=f"fold {fold} setting {i}")
        best = result.history.loc[result.history["epoch"] == result.best_epoch].iloc[0]
        auc = float(best["val_auc"]) if not np.isnan(best["val_auc"]) else -np.inf
        rows.append({"fold": fold, "candidate": i, "overrides": json.dumps(cfg.candidates[i], sort_keys=True),
                     "val_auc": best["val_auc"], "val_loss": best["val_loss"], "best_epoch": result.best_epoch,
                     "key": (auc, -float(best["val_loss"]))})
        runs.append((model, result, tcfg, where))
    chosen = max(range(len(rows)), key=lambda i: rows[i]["key"])
    for name in ("checkpoint.pt", "config.json", "history.csv"):
        with atomic_path(fold_dir / name) as tmp:
            shutil.copyfile(runs[chosen][3] / name, tmp)
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "key"} for r in rows]).assign(
        chosen=lambda d: d["candidate"] == chosen)
    with atomic_path(fold_dir / "selection.csv") as tmp:
        table.to_csv(tmp, index=False)
    return runs[chosen][:3]


def load_results(out_dir: str | Path) -> dict[str, Any]:
    """What the book reads: predictions, fold metrics, bootstrap AUCs, summary, config."""
    out_dir = Path(out_dir)
    if not (out_dir / "summary.json").is_file():
        raise MagaError("no finished cross-validation here (summary.json missing)", out_dir)
    return {
        "predictions": pd.read_csv(out_dir / "predictions.csv", dtype={"slide": str}),
        "fold_metrics": pd.read_csv(out_dir / "fold_metrics.csv"),
        "bootstrap": pd.read_csv(out_dir / "bootstrap.csv"),
        "summary": json.loads((out_dir / "summary.json").read_text()),
        "config": json.loads((out_dir / "config.json").read_text()),
    }
