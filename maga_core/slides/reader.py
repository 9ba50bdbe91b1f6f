"""One small slide-reader interface. The rest of maga_core never calls OpenSlide/tifffile/PIL readers
directly, so every backend gives the same RGB uint8 arrays, level geometry and resolved MPP."""

from __future__ import annotations

import abc
import logging
import struct
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


def _check_ifd_chain(path: Path, size: int) -> None:
    """Walk the TIFF directory chain; a directory at or past the end of the file means it was cut."""
    with open(path, "rb") as fh:
        head = fh.read(16)
        order = "<" if head[:2] == b"II" else ">"
        big = head[2:4] in (b"+\x00", b"\x00+")
        count_fmt, count_size, entry_size, off_fmt, off_size = (
            ("Q", 8, 20, "Q", 8) if big else ("H", 2, 12, "I", 4))
        if len(head) < (16 if big else 8):
            raise MagaError(f"truncated slide: {size} bytes, shorter than a TIFF header", path)
        offset = struct.unpack(order + off_fmt, head[8:16] if big else head[4:8])[0]
        seen: set[int] = set()
        while offset and offset not in seen:
            if offset + count_size > size:
                raise MagaError(f"truncated slide: image directory {len(seen)} is at byte {offset} "
                                f"but the file has {size} bytes", path)
            seen.add(offset)
            fh.seek(offset)
            n = struct.unpack(order + count_fmt, fh.read(count_size))[0]
            end = offset + count_size + n * entry_size
            if end + off_size > size:
                raise MagaError(f"truncated slide: image directory {len(seen) - 1} ends at byte "
                                f"{end + off_size} but the file has {size} bytes", path)
            fh.seek(end)
            offset = struct.unpack(order + off_fmt, fh.read(off_size))[0]


def _check_tiff_complete(path: Path) -> None:
    """A TIFF whose directories or pixel data point past the end of the file was cut short.

    OpenSlide reports such files as 'unsupported format' or opens what is left (losing vendor
    metadata), which hides the real cause."""
    import tifffile

    size = path.stat().st_size
    _check_ifd_chain(path, size)
    log = logging.getLogger("tifffile")  # tifffile logs what we turn into one error line
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        with tifffile.TiffFile(path) as tf:
            for page in tf.pages:
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
                if ends and max(ends) > size:
                    raise MagaError(f"truncated slide: pixel data ends at byte {max(ends)} but the "
                                    f"file has {size} bytes", path)
    except MagaError:
        raise
    except Exception as exc:
        raise MagaError(f"truncated or corrupt TIFF ({exc})", path) from exc
    finally:
        log.setLevel(level)


def open_slide(path: str | Path, mpp: float | None = None) -> SlideReader:
    """Open a whole-slide file (OpenSlide formats), OME-TIFF / other TIFF (tifffile) or a plain image
    (needs `mpp`), and resolve its MPP. `mpp` overrides the metadata."""
    from maga_core.slides import backends

    path = Path(path)
    if not path.exists():
        raise MagaError("no such file", path)
    if path.is_dir():
        raise MagaError("is a folder, not a slide file", path)
    if path.stat().st_size == 0:
        raise MagaError("empty file, not a slide", path)
    name = path.name.lower()
    with open(path, "rb") as fh:
        is_tiff = fh.read(4) in TIFF_MAGIC
    if name.endswith(OME_SUFFIXES):
        if is_tiff:
            _check_tiff_complete(path)
        return backends.TiffFileReader(path, mpp)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return backends.PlainImageReader(path, mpp)
    if is_tiff:
        _check_tiff_complete(path)
    if backends.openslide_format(path):
        return backends.OpenSlideReader(path, mpp)
    if is_tiff:
        return backends.TiffFileReader(path, mpp)
    raise MagaError("not a slide: OpenSlide does not recognise it and it is neither a TIFF nor an "
                    f"image ({', '.join(sorted(IMAGE_SUFFIXES))})", path)
