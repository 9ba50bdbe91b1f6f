"""OpenSlide backend: SVS, NDPI, MRXS, SCN, generic tiled TIFF and the other formats OpenSlide reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maga_core.errors import MagaError
from maga_core.slides.magnification import mpp_from_properties, objective_from_properties, resolve
from maga_core.slides.reader import SlideReader, rgba_to_rgb


def openslide_format(path: Path) -> str | None:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:
        return None


class OpenSlideReader(SlideReader):
    def __init__(self, path: Path, mpp: float | None = None):
        import openslide

        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as exc:
            raise MagaError(f"OpenSlide cannot open it ({exc}); not a slide, truncated or corrupt",
                            path) from exc
        try:
            props = dict(self._slide.properties)
            self.properties = props
            self.format = f"openslide/{props.get('openslide.vendor', 'unknown')}"
            self.dimensions = tuple(self._slide.dimensions)
            self.level_dimensions = tuple(tuple(d) for d in self._slide.level_dimensions)
            self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
            self.resolution = resolve(
                path, mpp, [(mpp_from_properties(props), "openslide.mpp-x/y")],
                objective_from_properties(props), "openslide.objective-power")
        except Exception:
            self._slide.close()
            raise

    def _read(self, location, level, size):
        return rgba_to_rgb(np.asarray(self._slide.read_region(location, level, size)))

    def close(self) -> None:
        self._slide.close()
