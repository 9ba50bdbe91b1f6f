"""A slide-level cohort made of real tissue tiles, because no labelled whole-slide dataset can be had here.

Each slide is a pyramidal TIFF at 0.5 um/px: an irregular island of tissue on glass, tiled from real
H&E photographs. Two tasks:

- `lesion` (the CAMELYON16 analogue): benign lung (LC25000 lung_n) everywhere; positive slides hold one
  small spatially coherent lesion of carcinoma tiles (LC25000 lung_aca / lung_scc), a few per cent of
  the tissue, so that the label hangs on a small region and on its detail.
- `subtype` (the TCGA-NSCLC analogue): a large coherent tumour region of one subtype, adenocarcinoma or
  squamous, from LC25000 and from the TCGA tiles of uni_tcga_luadlusc (one TCGA case = one patient),
  set in benign lung.

Leakage is ruled out by construction and checked (`check_leaks`): tiles come only from the source
datasets' held-out splits (`tile_splits`, default "test"), so a MAGA student trained on their train
splits never saw them; every near-duplicate cluster (LC25000 `group`) and every TCGA case is dealt to
exactly one patient, and every patient to one fold, before any slide is drawn; a patient's slides reuse
only that patient's tiles (in the 8 orientations of the square), so no tile of a test slide is on a
training or validation slide of its fold. Scale: uni_tcga_luadlusc
tiles are ~0.5 um/px (manifest) and are placed as they are (centre crop 224 px); the LC25000 224 px copies
have no documented scale and, by the project's convention (data manifest), are taken as 20x fields at
0.5 um/px and placed unscaled. By the size of red cells they may be nearer 1 um/px; the mosaic then
holds tissue shown smaller than life, which this cohort states rather than hides.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from maga_core.config import atomic_path, load_config, save_config, write_json
from maga_core.data.tiles import tile_table
from maga_core.errors import MagaError
from maga.slide_tools.writer import write_pyramidal_tiff

LC25000 = "lc25000_lung_224_dedup"
TCGA_TILES = "uni_tcga_luadlusc"
TASK_CLASSES = {"lesion": ("normal", "tumour"), "subtype": ("adenocarcinoma", "squamous")}
GLASS_RGB = (243, 243, 243)
STATEMENT = ("Synthetic slides built from real H&E tiles (LC25000 lung photographs and TCGA LUAD/LUSC tiles); "
             "not whole-slide images of real patients. 'Patients' are disjoint pools of source images.")


@dataclass
class CohortConfig:
    """What is drawn. Cells are `cell_px` squares at `mpp`; a slide is `grid` x `grid` cells."""

    task: str = "lesion"  # lesion | subtype
    n_patients: int = 20  # LC25000-based patients (subtype: plus every TCGA case when include_tcga)
    slides_per_patient: int = 3
    folds: int = 10
    grid: int = 12
    cell_px: int = 224
    tissue_fraction: tuple[float, float] = (0.55, 0.8)  # share of the grid covered by the tissue island
    lesion_cells: tuple[int, int] = (2, 5)  # lesion task: size of the carcinoma cluster, in cells
    tumour_fraction: tuple[float, float] = (0.3, 0.7)  # subtype task: share of tissue that is tumour
    include_tcga: bool = True  # subtype task: add the TCGA cases of uni_tcga_luadlusc as patients
    # Splits of the source datasets the tiles come from: held out from every model that trains on tiles
    # (the MAGA students train on the "train" splits), so no slide shows a tile a model has seen.
    tile_splits: tuple[str, ...] = ("test",)
    mpp: float = 0.5
    seed: int = 16


@dataclass
class Cohort:
    """A built cohort: its folder, slide table (slide, path, patient, fold, label, ...) and tile manifest."""

    root: Path
    slides: pd.DataFrame
    tiles: pd.DataFrame
    config: CohortConfig

    @property
    def classes(self) -> tuple[str, ...]:
        return TASK_CLASSES[self.config.task]

    def slide_path(self, slide: str) -> Path:
        return self.root / self.slides.set_index("slide").loc[slide, "path"]

    def labels_csv(self) -> Path:
        """The labels file `maga mil --labels` reads: slide, label, label_name, patient, fold."""
        return self.root / "labels.csv"


# ---------------------------------------------------------------- planning (pure, no pixels)

def _source_tiles(cfg: CohortConfig) -> pd.DataFrame:
    lc = tile_table(LC25000)
    parts = [lc.assign(dataset=LC25000)]
    if cfg.task == "subtype" and cfg.include_tcga:
        parts.append(tile_table(TCGA_TILES).assign(dataset=TCGA_TILES))
    tiles = pd.concat(parts, ignore_index=True)
    tiles = tiles[tiles["split"].isin(cfg.tile_splits)] if cfg.tile_splits else tiles
    return tiles[["dataset", "relpath", "path", "class", "group", "source"]].reset_index(drop=True)


def _patients(cfg: CohortConfig, tiles: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Patients with their fold (stratified round robin) and, for subtyping, their class."""
    rows = []
    for i in range(cfg.n_patients):
        cls = TASK_CLASSES["subtype"][i % 2] if cfg.task == "subtype" else ""
        # lesion: the stratum is the parity that fixes the patient's label pattern (0,1,0 or 1,0,1)
        rows.append({"patient": f"P{i:03d}", "kind": "lc25000", "subtype": cls, "case_group": "",
                     "stratum": cls or str(i % 2)})
    if cfg.task == "subtype" and cfg.include_tcga:
        tcga = tiles[tiles["source"] == "tcga"].drop_duplicates("group").sort_values("group")
        for j, (_, t) in enumerate(tcga.iterrows()):
            rows.append({"patient": f"T{j:03d}", "kind": "tcga", "subtype": t["class"], "case_group": t["group"],
                         "stratum": t["class"]})
    patients = pd.DataFrame(rows)
    patients["fold"] = -1
    # Stratified: within each (kind, stratum), shuffle and deal folds continuing a running offset,
    # so folds differ in size by at most one patient and every fold sees every stratum where possible.
    offset = 0
    for _, idx in patients.groupby(["kind", "stratum"], sort=True).groups.items():
        idx = np.array(sorted(idx))
        rng.shuffle(idx)
        patients.loc[idx, "fold"] = [(offset + k) % cfg.folds for k in range(len(idx))]
        offset += len(idx)
    return patients


def _deal_groups(tiles: pd.DataFrame, patients: pd.DataFrame, cfg: CohortConfig,
                 rng: np.random.Generator) -> pd.DataFrame:
    """Give each near-duplicate cluster / TCGA case to exactly one patient: `owner` column."""
    tiles = tiles.copy()
    tiles["owner"] = ""
    lc_patients = patients[patients["kind"] == "lc25000"]
    for cls, sub in tiles[tiles["source"] == "lc25000"].groupby("class", sort=True):
        if cls == "benign":
            takers = patients["patient"].tolist()  # every patient needs background tissue
        elif cfg.task == "subtype":
            takers = lc_patients.loc[lc_patients["subtype"] == cls, "patient"].tolist()
        else:
            takers = lc_patients["patient"].tolist()
        groups = np.array(sorted(sub["group"].unique()))
        rng.shuffle(groups)
        if len(groups) < len(takers):
            raise MagaError(f"{len(groups)} clusters of {cls} cannot give each of {len(takers)} patients one",
                            LC25000)
        owner = {g: takers[k % len(takers)] for k, g in enumerate(groups)}
        tiles.loc[sub.index, "owner"] = sub["group"].map(owner)
    for _, p in patients[patients["kind"] == "tcga"].iterrows():
        tiles.loc[tiles["group"] == p["case_group"], "owner"] = p["patient"]
    return tiles[tiles["owner"] != ""].reset_index(drop=True)


def _island(grid: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A blob of tissue cells: a rotated noisy ellipse holding about `fraction` of the grid."""
    yy, xx = np.mgrid[0:grid, 0:grid].astype(float)
    cy, cx = (grid - 1) / 2 + rng.uniform(-0.5, 0.5, 2)
    theta = rng.uniform(0, np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    aspect = rng.uniform(0.7, 1.0)
    dist = np.sqrt((u / 1.0) ** 2 + (v / aspect) ** 2) + rng.uniform(0, 0.8, (grid, grid))
    k = max(1, int(round(fraction * grid * grid)))
    mask = np.zeros(grid * grid, bool)
    mask[np.argsort(dist, axis=None, kind="stable")[:k]] = True
    return mask.reshape(grid, grid)


def _grow(mask: np.ndarray, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """A 4-connected region of n tissue cells grown at random from an interior seed."""
    cells = np.argwhere(mask)
    interior = [tuple(c) for c in cells
                if all(0 <= c[0] + dy < mask.shape[0] and 0 <= c[1] + dx < mask.shape[1]
                       and mask[c[0] + dy, c[1] + dx] for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)))]
    pool = interior or [tuple(c) for c in cells]
    region = [pool[rng.integers(len(pool))]]
    while len(region) < min(n, len(cells)):
        frontier = sorted({(r + dy, c + dx) for r, c in region for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))
                           if 0 <= r + dy < mask.shape[0] and 0 <= c + dx < mask.shape[1]
                           and mask[r + dy, c + dx] and (r + dy, c + dx) not in region})
        if not frontier:
            break
        region.append(frontier[rng.integers(len(frontier))])
    return [(int(r), int(c)) for r, c in region]


def plan_cohort(cfg: CohortConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Decide every slide and every tile placement (no pixels): (slides, tiles) tables."""
    if cfg.task not in TASK_CLASSES:
        raise MagaError(f"unknown cohort task {cfg.task!r} (choose {', '.join(TASK_CLASSES)})")
    rng = np.random.default_rng(cfg.seed)
    sources = _source_tiles(cfg)
    patients = _patients(cfg, sources, rng)
    owned = _deal_groups(sources, patients, cfg, rng)
    size = cfg.grid * cfg.cell_px
    slide_rows, tile_rows = [], []
    for p_index, p in patients.iterrows():
        mine = owned[owned["owner"] == p["patient"]]
        benign = mine[mine["class"] == "benign"].reset_index(drop=True)
        tumour = mine[mine["class"] != "benign"] if cfg.task == "lesion" else mine[mine["class"] == p["subtype"]]
        tumour = tumour.reset_index(drop=True)
        for s in range(cfg.slides_per_patient):
            slide = f"{p['patient']}_S{s}"
            if cfg.task == "lesion":
                label = (p_index + s) % 2  # every patient (hence every fold) holds both classes
            else:
                label = TASK_CLASSES["subtype"].index(p["subtype"])
            mask = _island(cfg.grid, rng.uniform(*cfg.tissue_fraction), rng)
            if cfg.task == "lesion":
                region = _grow(mask, int(rng.integers(cfg.lesion_cells[0], cfg.lesion_cells[1] + 1)), rng) \
                    if label == 1 else []
            else:
                n_tum = max(1, int(round(rng.uniform(*cfg.tumour_fraction) * mask.sum())))
                region = _grow(mask, n_tum, rng)
            in_region = set(region)
            for r, c in map(tuple, np.argwhere(mask)):
                is_tumour = (int(r), int(c)) in in_region
                pool = tumour if is_tumour else benign
                t = pool.iloc[int(rng.integers(len(pool)))]
                tile_rows.append({
                    "slide": slide, "patient": p["patient"], "fold": int(p["fold"]), "row": int(r), "col": int(c),
                    "x": int(c) * cfg.cell_px, "y": int(r) * cfg.cell_px, "w": cfg.cell_px, "h": cfg.cell_px,
                    "role": "lesion" if is_tumour and cfg.task == "lesion" else ("tumour" if is_tumour else "background"),
                    "class": t["class"], "source": t["source"], "dataset": t["dataset"], "tile": t["relpath"],
                    "group": t["group"], "rot90": int(rng.integers(4)), "flip": bool(rng.integers(2)),
                })
            ys = [r * cfg.cell_px for r, _ in region]
            xs = [c * cfg.cell_px for _, c in region]
            slide_rows.append({
                "slide": slide, "path": f"slides/{slide}.tiff", "patient": p["patient"], "fold": int(p["fold"]),
                "label": int(label), "label_name": TASK_CLASSES[cfg.task][label], "task": cfg.task,
                "width": size, "height": size, "mpp": cfg.mpp, "tissue_cells": int(mask.sum()),
                "region_cells": len(region),
                "region_x0": min(xs) if xs else -1, "region_y0": min(ys) if ys else -1,
                "region_x1": max(xs) + cfg.cell_px if xs else -1, "region_y1": max(ys) + cfg.cell_px if ys else -1,
            })
    return pd.DataFrame(slide_rows), pd.DataFrame(tile_rows)


# ---------------------------------------------------------------- rendering

def _load_tile(path: str, cell_px: int) -> np.ndarray:
    """RGB uint8 cell: centre crop to `cell_px` (TCGA tiles are 256 px), never resampled."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    h, w = arr.shape[:2]
    if h < cell_px or w < cell_px:
        raise MagaError(f"tile is {w}x{h} px, smaller than the {cell_px} px cell", path)
    y0, x0 = (h - cell_px) // 2, (w - cell_px) // 2
    return arr[y0:y0 + cell_px, x0:x0 + cell_px]


def render_slide(placements: pd.DataFrame, width: int, height: int, paths: dict[tuple[str, str], str]) -> np.ndarray:
    """The level-0 image of one slide: glass, then every tile in its orientation at its cell."""
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = GLASS_RGB
    cache: dict[str, np.ndarray] = {}
    for t in placements.itertuples():
        key = paths[(t.dataset, t.tile)]
        if key not in cache:
            cache[key] = _load_tile(key, t.w)
        img = np.rot90(cache[key], t.rot90)
        if t.flip:
            img = img[:, ::-1]
        canvas[t.y:t.y + t.h, t.x:t.x + t.w] = img
    return canvas


def build_cohort(cfg: CohortConfig, root: str | Path, progress: bool = True) -> Cohort:
    """Write the slides (pyramidal TIFF, `cfg.mpp`), labels.csv, slides.csv, tiles.csv and cohort.json.

    Resumable: slides already on disk are kept (the plan is deterministic in `cfg.seed`); the manifest
    files are written last, so a cohort with a cohort.json is complete.
    """
    root = Path(root)
    slides, tiles = plan_cohort(cfg)
    sources = _source_tiles(cfg)
    paths = {(d, r): p for d, r, p in zip(sources["dataset"], sources["relpath"], sources["path"])}
    by_slide = dict(tuple(tiles.groupby("slide", sort=False)))
    for s in tqdm(slides.itertuples(), total=len(slides), desc=f"cohort {cfg.task}", disable=not progress):
        out = root / s.path
        if out.exists():
            continue
        image = render_slide(by_slide[s.slide], s.width, s.height, paths)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_pyramidal_tiff(image, out, cfg.mpp)
    for name, table in (("slides.csv", slides), ("tiles.csv", tiles),
                        ("labels.csv", slides[["slide", "label", "label_name", "patient", "fold"]])):
        with atomic_path(root / name) as tmp:
            table.to_csv(tmp, index=False)
    save_config(cfg, root, "cohort_config.json")
    write_json({"statement": STATEMENT, "task": cfg.task, "classes": list(TASK_CLASSES[cfg.task]),
                "n_slides": len(slides), "n_patients": int(slides["patient"].nunique()), "folds": cfg.folds,
                "class_counts": slides["label_name"].value_counts().sort_index().to_dict(),
                "scale": {"mpp": cfg.mpp, LC25000: "224 px copies taken as 0.5 um/px (project convention; "
                          "undocumented, possibly nearer 1 um/px)", TCGA_TILES: "about 0.5 um/px, centre-cropped "
                          "to 224 px"},
                "config": dataclasses.asdict(cfg)}, root / "cohort.json")
    return Cohort(root=root, slides=slides, tiles=tiles, config=cfg)


def load_cohort(root: str | Path) -> Cohort:
    root = Path(root)
    if not (root / "cohort.json").is_file():
        raise MagaError("not a complete cohort (no cohort.json)", root)
    cfg = load_config(CohortConfig, root / "cohort_config.json")
    cfg = dataclasses.replace(cfg, tissue_fraction=tuple(cfg.tissue_fraction), lesion_cells=tuple(cfg.lesion_cells),
                              tumour_fraction=tuple(cfg.tumour_fraction), tile_splits=tuple(cfg.tile_splits))
    return Cohort(root=root, slides=pd.read_csv(root / "slides.csv"), tiles=pd.read_csv(root / "tiles.csv"),
                  config=cfg)


def ensure_cohort(cfg: CohortConfig, root: str | Path, progress: bool = True) -> Cohort:
    """Load the cohort at `root` if it was built with the same config, else (re)build it there."""
    root = Path(root)
    if (root / "cohort.json").is_file():
        saved = json.loads((root / "cohort.json").read_text())["config"]
        if saved == json.loads(json.dumps(dataclasses.asdict(cfg))):
            return load_cohort(root)
        raise MagaError("holds a cohort built with another configuration; choose another folder", root)
    return build_cohort(cfg, root, progress=progress)


# ---------------------------------------------------------------- leak check

def _tile_keys(dataset: str, group: str, path: str) -> set[tuple[str, str]]:
    """Identities of one source tile: its file and its near-duplicate cluster / TCGA case."""
    return {("file", str(Path(path).resolve())), (dataset, f"group:{group}")}


def check_leaks(tiles: pd.DataFrame, trained_on: list[str | Path] | None = None, folds: int | None = None) -> None:
    """Refuse a cohort whose test slides show a tile that a model trained on (MagaError).

    `tiles` is the cohort's placement table (tiles.csv). Two checks: (1) no tile (or a near-duplicate
    of it: same cluster / TCGA case) is among `trained_on`, the image files a MAGA student trained on;
    (2) in every fold (the cohort's fold modulo `folds`), no test slide shares a tile or cluster with a
    slide of another fold, which trains or validates the aggregator."""
    datasets = sorted(tiles["dataset"].unique())
    lookup = pd.concat([tile_table(d).assign(dataset=d) for d in datasets], ignore_index=True)
    paths = {(d, r): p for d, r, p in zip(lookup["dataset"], lookup["relpath"], lookup["path"])}
    keys = [_tile_keys(t.dataset, str(t.group), paths.get((t.dataset, t.tile), t.tile))
            for t in tiles.itertuples()]
    if trained_on:
        by_path = {str(Path(p).resolve()): (d, g) for d, g, p in zip(lookup["dataset"], lookup["group"], lookup["path"])}
        seen: set[tuple[str, str]] = set()
        for p in trained_on:
            resolved = str(Path(p).resolve())
            seen.add(("file", resolved))
            if resolved in by_path:
                d, g = by_path[resolved]
                seen.add((d, f"group:{g}"))
        hit = [i for i, k in enumerate(keys) if k & seen]
        if hit:
            t = tiles.iloc[hit[0]]
            raise MagaError(f"{len(hit)} tile placements on test slides were seen by the MAGA student in training, "
                            f"e.g. {t['tile']} on {t['slide']}", t["dataset"])
    fold = tiles["fold"].astype(int) % folds if folds else tiles["fold"].astype(int)
    for f in sorted(fold.unique()):
        inside = set().union(*(keys[i] for i in np.flatnonzero(fold.to_numpy() == f)))
        outside_idx = np.flatnonzero(fold.to_numpy() != f)
        hit = [i for i in outside_idx if keys[i] & inside]
        if hit:
            t = tiles.iloc[hit[0]]
            raise MagaError(f"test slides of fold {f} share tiles with {len(hit)} placements on training slides, "
                            f"e.g. {t['tile']} on {t['slide']}", t["dataset"])
