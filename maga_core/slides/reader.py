"""One small slide-reader interface. The rest of maga_core never calls OpenSlide/tifffile/PIL readers
directly, so every backend gives the same RGB uint8 arrays, level geometry and resolved MPP."""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from maga_core.errors import MagaError
from maga_core.slides.magnification import Resolution, format_mag

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
OME_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.tf2", ".ome.tf8", ".ome.btf")
# What a folder scan treats as slides (OpenSlide formats, TIFF/OME-TIFF, plain images).
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide",
                  ".bif", ".dcm", ".btf", *IMAGE_SUFFIXES}
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class SlideReader(abc.ABC):
    """Level-0 geometry, resolved resolution, region reads as RGB uint8 (background white)."""

    path: Path
    format: str
    dimensions: tuple[int, int]
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    resolution: Resolution

    @property
    def mpp(self) -> float:
        return self.resolution.mpp

    @property
    def objective_power(self) -> float:
        return self.resolution.objective_power

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @abc.abstractmethod
    def _read(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Backend read; may raise library errors (wrapped by read_region)."""

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 [h, w, 3] of `size` at `level`, top-left `location` in level-0 pixels.
        Pixels outside the slide are white."""
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range 0..{self.level_count - 1}")
        try:
            out = self._read((int(location[0]), int(location[1])), level, (w, h))
        except MagaError:
            raise
        except Exception as exc:  # library errors: corrupt tile, truncated data, codec failure
            raise MagaError(f"cannot read pixels at {tuple(location)} level {level}, {w}x{h} px "
                            f"({type(exc).__name__}: {exc}); the file may be truncated or corrupt",
                            self.path) from exc
        return out

    def best_level_for_downsample(self, downsample: float) -> int:
        """Deepest level whose downsample does not exceed `downsample` by more than 1%: odd level-0
        sizes give downsamples like 2.0005, and upsampling such a level by 0.03% is harmless."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = i if ds >= self.level_downsamples[best] else best
        return best

    def thumbnail(self, max_px: int = 1024) -> np.ndarray:
        """Whole slide, longest side <= max_px, read from the smallest level that is big enough."""
        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_px
        level = self.best_level_for_downsample(max(scale, 1.0))
        lw, lh = self.level_dimensions[level]
        tw, th = max(1, round(w0 / max(scale, 1.0))), max(1, round(h0 / max(scale, 1.0)))
        if lw * lh > self.THUMBNAIL_READ_PX:
            return self._thumbnail_in_strips(level, (tw, th))
        region = self.read_region((0, 0), level, (lw, lh))
        if (tw, th) == (lw, lh):
            return region
        return np.asarray(Image.fromarray(region).resize((tw, th), Image.Resampling.BOX))

    # A level larger than this (pixels) is reduced strip by strip: a slide without a pyramid (or a file
    # claiming absurd dimensions) must not need memory for the whole level at once.
    THUMBNAIL_READ_PX = 1 << 24

    def _thumbnail_in_strips(self, level: int, size: tuple[int, int]) -> np.ndarray:
        lw, lh = self.level_dimensions[level]
        tw, th = size
        ds = float(self.level_downsamples[level])
        rows = max(1, int(self.THUMBNAIL_READ_PX // lw * th // lh))  # output rows per strip
        out = np.empty((th, tw, 3), dtype=np.uint8)
        for r0 in range(0, th, rows):
            r1 = min(th, r0 + rows)
            y0, y1 = round(r0 * lh / th), max(round(r0 * lh / th) + 1, round(r1 * lh / th))
            strip = self.read_region((0, round(y0 * ds)), level, (lw, y1 - y0))
            out[r0:r1] = np.asarray(Image.fromarray(strip).resize((tw, r1 - r0), Image.Resampling.BOX))
        return out

    def info(self) -> dict[str, Any]:
        """What `maga info` prints."""
        r = self.resolution
        return {
            "path": str(self.path),
            "format": self.format,
            "dimensions": list(self.dimensions),
            "level_count": self.level_count,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": [round(float(d), 4) for d in self.level_downsamples],
            "mpp": r.mpp,
            "mpp_source": r.mpp_source,
            "objective_power": r.objective_power,
            "objective_source": r.objective_source,
            "magnification": format_mag(round(10.0 / r.mpp, 2)) + "x",
        }

    def close(self) -> None:  # noqa: B027 - optional for backends holding nothing
        """Release file handles."""

    def __enter__(self) -> "SlideReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"<{type(self).__name__} {self.path.name} {w}x{h} {self.level_count} levels mpp={self.mpp:.4g}>"


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite RGBA on white (OpenSlide marks pixels outside the scan as transparent)."""
    if rgba.shape[-1] == 3:
        return rgba
    rgb = rgba[..., :3].astype(np.uint16)
    a = rgba[..., 3:4].astype(np.uint16)
    if bool((a == 255).all()):
        return np.ascontiguousarray(rgba[..., :3])
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


def paste(out: np.ndarray, seg: np.ndarray, sx: int, sy: int, x0: int, y0: int) -> np.ndarray:
    """Copy the overlap of `seg` (placed at sx, sy in the level) into `out` (placed at x0, y0)."""
    if seg.ndim == 2:
        seg = seg[..., None]
    seg = np.repeat(seg, 3, axis=-1) if seg.shape[-1] == 1 else seg[..., :3]
    h, w = out.shape[:2]
    ax0, ay0 = max(sx, x0), max(sy, y0)
    ax1, ay1 = min(sx + seg.shape[1], x0 + w), min(sy + seg.shape[0], y0 + h)
    if ax0 < ax1 and ay0 < ay1:
        out[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0] = seg[ay0 - sy:ay1 - sy, ax0 - sx:ax1 - sx]
    return out
