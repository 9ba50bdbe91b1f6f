"""Plain-image backend: a PNG/JPEG tile with a stated MPP, as a one-level slide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from maga_core.errors import MagaError
from maga_core.slides.magnification import mpp_from_resolution, resolve
from maga_core.slides.reader import SlideReader, paste


class PlainImageReader(SlideReader):
    """A PNG/JPEG tile held in memory as a one-level slide; its MPP must be stated."""

    def __init__(self, path: Path, mpp: float | None = None):
        self.path = Path(path)
        try:
            with Image.open(path) as im:
                dpi = im.info.get("dpi")
                self._rgb = np.asarray(im.convert("RGB"))
        except Image.DecompressionBombError as exc:
            raise MagaError("too large for a plain image; convert it to a tiled pyramidal TIFF", path) from exc
        except Exception as exc:
            raise MagaError(f"not a readable image ({exc})", path) from exc
        self.format = f"image/{path.suffix.lower().lstrip('.')}"
        h, w = self._rgb.shape[:2]
        self.dimensions = (w, h)
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        dpi_mpp = mpp_from_resolution(dpi[0], dpi[1], 2) if dpi else None
        self.resolution = resolve(path, mpp, [(dpi_mpp, "image dpi")], None)

    def _read(self, location, level, size):
        out = np.full((size[1], size[0], 3), 255, np.uint8)
        return paste(out, self._rgb, 0, 0, location[0], location[1])
