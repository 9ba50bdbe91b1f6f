"""Where MAGA training tiles come from: a folder of images (searched recursively) or a tile dataset from
the manifests, optionally restricted to splits: "uni_tcga_luadlusc:train", "lc25000_lung_224_dedup:train",
or a validation fold of the train split: "lc25000_lung_224_dedup:fit0" (data.tiles.select_split)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from maga_core.data import manifests
from maga_core.data.tiles import select_split, tile_table
from maga_core.errors import MagaError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


def resolve_tiles(sources: list[str] | tuple[str, ...], max_tiles: int | None = None, seed: int = 0) -> list[Path]:
    """Image paths of all sources, in a stable order; `max_tiles` keeps a seeded subset (order kept)."""
    import pandas as pd

    paths: list[Path] = []
    for source in sources:
        folder = Path(source)
        if folder.is_dir():
            found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise MagaError("no tile images (jpg/png/tif) in this folder", folder)
            paths += found
            continue
        dataset, _, splits = str(source).partition(":")
        if dataset not in manifests.names():
            raise MagaError("neither a folder of tiles nor a tile dataset "
                            f"(datasets: {', '.join(manifests.names())})", source)
        table = tile_table(dataset)
        if splits:
            try:
                table = pd.concat([select_split(table, s) for s in splits.split(",")]).sort_index()
            except ValueError as exc:
                raise MagaError(str(exc), source) from None
        paths += [Path(p) for p in table["path"]]
    paths = list(dict.fromkeys(paths))
    if max_tiles is not None and max_tiles < len(paths):
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), size=max_tiles, replace=False))
        paths = [paths[i] for i in keep]
    return paths


def tiles_mpp(sources: list[str] | tuple[str, ...], override: float | None = None) -> float:
    """The tiles' microns per pixel: `override` (--mpp) if given, else the `mpp` every tile dataset's
    manifest documents. A folder, or a dataset without a documented MPP, needs the override."""
    if override is not None:
        if not override > 0:
            raise MagaError(f"--mpp must be positive, got {override}")
        return float(override)
    found = set()
    for source in sources:
        dataset = str(source).partition(":")[0]
        mpp = manifests.load(dataset).info.get("mpp") if dataset in manifests.names() else None
        if not mpp:
            raise MagaError("tiles of unknown microns per pixel; pass --mpp (e.g. 0.5 for 20x tiles)", source)
        found.add(float(mpp))
    if len(found) != 1:
        raise MagaError(f"tile sources have different MPPs {sorted(found)}; train on one scale at a time",
                        ", ".join(sources))
    return found.pop()


def read_tile(path: str | Path) -> np.ndarray:
    """uint8 HxWx3 of an image tile; unreadable or non-square files are one-line errors naming them."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise MagaError(f"cannot read image ({type(exc).__name__})", path) from None
    if arr.shape[0] != arr.shape[1]:
        raise MagaError(f"tile is not square ({arr.shape[1]}x{arr.shape[0]})", path)
    return arr
