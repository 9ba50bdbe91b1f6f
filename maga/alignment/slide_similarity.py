"""Per-patch similarity of low-magnification features to 20x features over a real slide, with and without
MAGA (the paper's Extended Fig. 4 heatmaps). Patches come from the slide layer's aligned grid, so patch i
at 20x and at 5x cover the same 128 um square, read the way feature extraction reads them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from maga_core import slides
from maga_core.slides.tissue import TissueConfig, detect_tissue
from maga.alignment.probe import cosine, encode


@dataclass
class SlideSimilarity:
    slide: str
    mag: float
    coords: np.ndarray  # level-0 top-left [N, 2]
    patch_size0: float  # square side in level-0 px
    thumbnail: np.ndarray
    downsample: float  # level-0 px per thumbnail px
    cosine: dict[str, np.ndarray] = field(default_factory=dict)  # setting -> [N] cosine to teacher 20x

    def summary(self) -> dict[str, dict[str, float]]:
        return {k: {"mean": float(v.mean()), "median": float(np.median(v)), "n": int(len(v))}
                for k, v in self.cosine.items()}


def slide_similarity(slide: str | Path, teacher, students: dict, mag: float = 5.0, max_patches: int | None = None,
                     min_tissue: float = 0.5, thumb_px: int = 1024, batch: int = 32,
                     progress: bool = True) -> SlideSimilarity:
    """Cosine of each patch's 5x feature to the teacher's 20x feature of the same patch, for each student
    and for the teacher fed through that student's input pipeline (no MAGA). `max_patches` keeps an
    evenly spaced subset of the grid."""
    reader = slides.open_slide(slide)
    try:
        mask = detect_tissue(reader, TissueConfig(thumb_px=thumb_px))
        coords = slides.aligned_grid(reader, mask, (20.0, mag), min_tissue=min_tissue)
        if max_patches is not None and len(coords) > max_patches:
            coords = coords[np.unique(np.linspace(0, len(coords) - 1, max_patches).round().astype(int))]
        high, low = [], []
        for xy in tqdm(coords, desc="read patches", disable=not progress, leave=False):
            high.append(slides.read_patch(reader, xy, 20.0))
            low.append(slides.read_patch(reader, xy, mag))
        high, low = np.stack(high), np.stack(low)
        side = slides.level0_extent(reader, 20.0)
    finally:
        reader.close()
    ref = encode(teacher, teacher.transform, high, batch)
    out = SlideSimilarity(slide=Path(slide).name, mag=mag, coords=coords, patch_size0=side,
                          thumbnail=mask.thumbnail, downsample=float(mask.downsample[0]))
    for name, student in students.items():
        # without MAGA = the teacher through the same input pipeline (64 px, or resized back to 256 px)
        out.cosine[f"{mag:g}x {name}, no MAGA"] = cosine(encode(teacher, student.prepare, low, batch), ref)
        out.cosine[f"{mag:g}x {name} + MAGA"] = cosine(encode(student, student.prepare, low, batch), ref)
    return out
