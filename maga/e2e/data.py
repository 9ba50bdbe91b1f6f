"""Slides as bags of tiles that are read at training time, at any magnification.

End-to-end training needs pixels, not cached features: every step reads the K sampled tiles of one
slide and feeds them through the encoder. Reading at a chosen magnification is what lets MAGA's 5x
student be fine-tuned end to end on 64 px tiles: the same tissue square as a 256 px tile at 20x,
with 1/16 of the pixels.

Two kinds of bag share one interface (`len(bag)`, `bag.label`, `bag.read(indices, mag, px)`):
`TileBag` (tile image files, e.g. the real-tile cohort of the MIL chapter) and `SlideBag` (a
whole-slide image and level-0 grid coordinates, read through maga_core.slides).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from maga_core import slides
from maga_core.errors import MagaError
from maga.e2e.sampling import part_slice, sample_tiles

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Bag(Protocol):
    name: str
    label: int

    def __len__(self) -> int: ...

    def read(self, indices: Sequence[int], mag: float, px: int | None) -> np.ndarray: ...


def _resample(img: Image.Image, size: int) -> Image.Image:
    """Area filter when shrinking (what a lower objective integrates), bicubic when enlarging."""
    if img.size == (size, size):
        return img
    shrinking = size < min(img.size)
    return img.resize((size, size), Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)


@dataclasses.dataclass(frozen=True, eq=False)
class TileBag:
    """A slide given as tile image files, all scanned at `source_mag` (e.g. 256 px tiles at 20x)."""

    name: str
    label: int
    paths: tuple[str, ...]
    source_mag: float = 20.0

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, indices: Sequence[int], mag: float, px: int | None = None) -> np.ndarray:
        """uint8 [k, px, px, 3]: each tile's whole field of view at `mag` (the tile shrunk by
        source_mag / mag with an area filter); `px` fixes the output size, None keeps the natural one."""
        out = []
        for i in indices:
            path = self.paths[int(i)]
            try:
                with Image.open(path) as im:
                    img = im.convert("RGB")
            except (OSError, ValueError) as exc:
                raise MagaError(f"cannot read tile image ({exc})", path) from exc
            side = min(img.size)
            natural = max(1, int(round(side * mag / self.source_mag)))
            out.append(np.asarray(_resample(img, px or natural)))
        return np.stack(out) if out else np.zeros((0, px or 0, px or 0, 3), np.uint8)


_READERS: dict[str, object] = {}


@dataclasses.dataclass(frozen=True, eq=False)
class SlideBag:
    """A whole-slide image and the level-0 (x, y) corners of its tissue tiles (slides.aligned_grid)."""

    name: str
    label: int
    path: str
    coords: np.ndarray
    mpp: float | None = None

    def __len__(self) -> int:
        return len(self.coords)

    def read(self, indices: Sequence[int], mag: float, px: int | None = None) -> np.ndarray:
        """uint8 [k, px, px, 3] via slides.read_patch; px defaults to the 128 um square at `mag`."""
        reader = _READERS.get(self.path)
        if reader is None:  # one open reader per slide and process (ranks read in parallel)
            reader = _READERS[self.path] = slides.open_slide(self.path, mpp=self.mpp)
        size = px or slides.patch_px_for_mag(mag)
        return np.stack([slides.read_patch(reader, tuple(int(v) for v in self.coords[int(i)]), mag, size)
                         for i in indices])


def imagenet_prepare(batch: np.ndarray) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> ImageNet-normalised float [n, 3, H, W] (the registry encoders' input)."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class BagDataset:
    """One item per slide: K tiles sampled by (seed, epoch, slide), read at `mag` / `px` as uint8.
    `tiles(i, epoch, part, n_parts)` reads only one encoder rank's share. The encoder's own input
    pipeline (`prepare`) is applied by the trainer, so the dataset stays picklable for spawned ranks."""

    def __init__(self, bags: Sequence[Bag], k: int, mag: float, px: int | None, seed: int,
                 replace: bool | None = None):
        if not bags:
            raise MagaError("no slides to train on")
        self.bags = list(bags)
        self.k, self.mag, self.px, self.seed = int(k), float(mag), px, int(seed)
        self.replace = replace

    def __len__(self) -> int:
        return len(self.bags)

    def label(self, i: int) -> int:
        return int(self.bags[i].label)

    def indices(self, i: int, epoch: int) -> np.ndarray:
        return sample_tiles(len(self.bags[i]), self.k, self.seed, epoch=epoch, slide=i, replace=self.replace)

    def tiles(self, i: int, epoch: int, part: int = 0, n_parts: int = 1) -> np.ndarray:
        """uint8 [k_part, H, W, 3]: this part's share of slide i's K tiles for this epoch."""
        idx = self.indices(i, epoch)[part_slice(self.k, n_parts, part)]
        return self.bags[i].read(idx, self.mag, self.px)

    def labels(self) -> np.ndarray:
        return np.array([self.label(i) for i in range(len(self))], dtype=np.int64)


def slide_bag(name: str, label: int, path: str, mag: float, mpp: float | None = None) -> SlideBag:
    """A slide's tissue tiles as a bag: tissue mask, then the aligned grid of 128 um squares (the
    same squares at 20x and at `mag`), so one bag serves every magnification."""
    reader = slides.open_slide(path, mpp=mpp)
    try:
        coords = slides.aligned_grid(reader, slides.detect_tissue(reader), mags=sorted({20.0, float(mag)}))
    finally:
        reader.close()
    return SlideBag(name=name, label=int(label), path=str(path), coords=coords, mpp=mpp)


def cohort_bags(cohort, mag: float) -> list[SlideBag]:
    """Every slide of a maga.experiments.tile_slides Cohort as a SlideBag (label = the cohort's class index)."""
    return [slide_bag(s.slide, int(s.label), str(cohort.root / s.path), mag, float(s.mpp))
            for s in cohort.slides.itertuples()]
