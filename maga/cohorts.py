"""The paper's cohorts as the upstream study split them: case ids, labels and the 10 patient-level folds.

The upstream files (manifests cohort_*.yaml, fetched and verified like any data) are lists of
TCGA case ids / CAMELYON16 slide names. They are turned into the two tables `maga mil` reads: labels
(slide, label, label_name, patient) and splits (fold, slide, part). Slides are not included; users who
hold them name their per-slide feature files by these ids (one bag per case, as upstream).

Upstream quirks handled here and reported in `notes`: CAMELYON16 training lists repeat every slide
twice (kept once); its test set is the fixed official one, the same in every fold; some listed cases
have no label for a task (dropped, as the paper excludes cases without molecular status).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from maga_core.config import atomic_path
from maga_core.data import manifests
from maga_core.errors import MagaError

# cohort manifest -> task -> (label file, label column, {upstream value: class name})
TASKS: dict[str, dict[str, tuple[str, int, dict[str, str]]]] = {
    "cohort_tcga_nsclc": {"subtype": ("label/TCGA_Lung_label.csv", 1,
                                      {"TCGA_LUAD_ALL": "LUAD", "TCGA_LUSC_ALL": "LUSC"})},
    "cohort_tcga_nsclc_ctranspath": {"subtype": ("label/TCGA_Lung_label.csv", 1,
                                                 {"TCGA_LUAD_ALL": "LUAD", "TCGA_LUSC_ALL": "LUSC"})},
    "cohort_tcga_glioma": {"idh": ("label/TCGA_IHD_1.csv", 1, {"WT": "wildtype", "Mutant": "mutant"}),
                           "1p19q": ("label/TCGA_1p19q.csv", 1, {"non-codel": "non-codel", "codel": "codel"}),
                           "tert": ("label/TCGA_TERT.csv", 1, {"WT": "wildtype", "Mutant": "mutant"})},
    "cohort_camelyon16": {"metastasis": ("label/reference.csv", 1, {"Normal": "normal", "Tumor": "tumor"})},
}


@dataclass
class UpstreamCohort:
    name: str
    task: str
    classes: list[str]
    labels: pd.DataFrame  # slide, label, label_name, patient
    splits: pd.DataFrame  # fold, slide, part
    notes: list[str] = field(default_factory=list)

    def write(self, out_dir: str | Path) -> tuple[Path, Path]:
        """labels.csv and splits.csv for `maga mil --labels ... --splits ...`."""
        out_dir = Path(out_dir)
        paths = out_dir / "labels.csv", out_dir / "splits.csv"
        for table, path in zip((self.labels, self.splits), paths):
            with atomic_path(path) as tmp:
                table.to_csv(tmp, index=False)
        return paths


def _read_list(path: Path, header: bool) -> pd.DataFrame:
    try:
        return pd.read_csv(path, header=0 if header else None, dtype=str)
    except Exception as exc:
        raise MagaError(f"cannot read CSV ({type(exc).__name__}: {exc})", path) from exc


def load_upstream(name: str, task: str | None = None, root: str | Path | None = None) -> UpstreamCohort:
    """Labels and folds of one upstream cohort task (e.g. ("cohort_tcga_glioma", "idh")).

    `root`: a folder laid out like the upstream repository (label/, nfold/) read instead of the verified
    manifest files, e.g. a subset of the cases; only the fold files it holds are used."""
    if name not in TASKS:
        raise MagaError(f"unknown cohort {name!r}; known: {', '.join(sorted(TASKS))}")
    tasks = TASKS[name]
    task = task or next(iter(tasks))
    if task not in tasks:
        raise MagaError(f"cohort {name} has no task {task!r}; known: {', '.join(tasks)}")
    label_file, column, mapping = tasks[task]
    manifest = manifests.load(name)
    notes: list[str] = []

    def get(relpath: str) -> Path:
        if root is None:
            return manifests.fetch(name, relpath)
        if not (Path(root) / relpath).is_file():
            raise MagaError(f"upstream folder lacks {relpath}", root)
        return Path(root) / relpath

    path = get(label_file)
    first = path.read_text().splitlines()[0]
    raw = _read_list(path, header=not first.startswith(("TCGA-", "test_")))
    lab = pd.DataFrame({"slide": raw.iloc[:, 0].str.strip(), "value": raw.iloc[:, column].str.strip()})
    lab = lab[lab["value"].isin(mapping)]
    conflicting = lab.groupby("slide")["value"].nunique()
    if (conflicting > 1).any():
        notes.append(f"{int((conflicting > 1).sum())} ids with conflicting labels dropped")
        lab = lab[~lab["slide"].isin(conflicting[conflicting > 1].index)]
    if lab["slide"].duplicated().any():
        notes.append(f"{int(lab['slide'].duplicated().sum())} repeated label rows (one per slide upstream) merged")
        lab = lab.drop_duplicates("slide")
    classes = list(dict.fromkeys(mapping.values()))
    lab["label_name"] = lab["value"].map(mapping)

    rows = []
    fold_files = [f for f in manifest.files if f.meta.get("role") == "fold"]
    if root is not None:
        listed = len(fold_files)
        fold_files = [f for f in fold_files if (Path(root) / f.path).is_file()]
        if len(fold_files) < listed:
            notes.append(f"{len(fold_files)} of {listed} upstream fold files present in {root}")
    for f in fold_files:
        ids = _read_list(get(f.path), header=False).iloc[:, 0].str.strip()
        if ids.duplicated().any():
            notes.append(f"{f.path}: {int(ids.duplicated().sum())} repeated ids kept once")
            ids = ids.drop_duplicates()
        rows.append(pd.DataFrame({"fold": int(f.meta["fold"]), "slide": ids, "part": f.meta["part"]}))
    if not rows:
        raise MagaError("manifest lists no fold files", name)
    splits = pd.concat(rows, ignore_index=True)

    if name == "cohort_camelyon16":
        # Training slides are labelled by their names; the official test set is the same in every fold.
        train_ids = pd.Series(splits["slide"].unique())
        named = pd.DataFrame({"slide": train_ids,
                              "label_name": train_ids.str.split("_").str[0].map({"normal": "normal", "tumor": "tumor"})})
        lab = pd.concat([lab[["slide", "label_name"]], named.dropna()], ignore_index=True)
        tests = [pd.DataFrame({"fold": f, "slide": lab.loc[lab["slide"].str.startswith("test_"), "slide"],
                               "part": "test"}) for f in sorted(splits["fold"].unique())]
        splits = pd.concat([splits, *tests], ignore_index=True)
        notes.append("test set: the official CAMELYON16 test slides, the same in every fold")

    unlabelled = ~splits["slide"].isin(lab["slide"])
    if unlabelled.any():
        notes.append(f"{splits.loc[unlabelled, 'slide'].nunique()} listed ids without a {task} label dropped")
        splits = splits[~unlabelled]
    splits = splits.sort_values(["fold", "part", "slide"]).reset_index(drop=True)
    used = lab[lab["slide"].isin(splits["slide"])].copy()
    used["label"] = used["label_name"].map({c: i for i, c in enumerate(classes)}).astype(int)
    used["patient"] = used["slide"].str[:12].where(used["slide"].str.startswith("TCGA-"), used["slide"])
    labels = used[["slide", "label", "label_name", "patient"]].sort_values("slide").reset_index(drop=True)
    return UpstreamCohort(name=name, task=task, classes=classes, labels=labels, splits=splits, notes=notes)
