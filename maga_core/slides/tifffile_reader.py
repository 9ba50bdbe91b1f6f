"""tifffile backend: OME-TIFF and other TIFFs OpenSlide refuses, read tile by tile."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from maga_core.errors import MagaError
from maga_core.slides.magnification import mpp_from_resolution, resolution_from_ome, resolve
from maga_core.slides.reader import SlideReader, paste


def _squeeze_axes(shape: tuple[int, ...], axes: str) -> tuple[tuple[int, ...], str]:
    keep = [(n, a) for n, a in zip(shape, axes) if n != 1 or a in "YX"]
    return tuple(n for n, _ in keep), "".join(a for _, a in keep)


class TiffFileReader(SlideReader):
    """Pyramid levels of the first series; only the tiles/strips a region touches are decoded."""

    def __init__(self, path: Path, mpp: float | None = None):
        import tifffile

        self.path = Path(path)
        try:
            self._tf = tifffile.TiffFile(path)
            series = self._tf.series[0]
        except Exception as exc:
            raise MagaError(f"tifffile cannot read it ({exc}); not a slide, truncated or corrupt",
                            path) from exc
        self._lock = threading.Lock()
        try:
            shape, axes = _squeeze_axes(tuple(series.shape), series.axes)
            if axes not in ("YX", "YXS") or (axes == "YXS" and shape[-1] not in (3, 4)):
                raise MagaError(f"unsupported TIFF layout (axes {series.axes}, shape {series.shape}); "
                                "need an RGB or grey image", path)
            self._pages = [lvl.pages[0] for lvl in series.levels]
            for page in self._pages:
                if page.dtype != np.uint8:
                    raise MagaError(f"unsupported pixel type {page.dtype}; need 8-bit RGB", path)
            self.format = "tifffile/ome" if self._tf.is_ome else "tifffile/tiff"
            self.level_dimensions = tuple((p.imagewidth, p.imagelength) for p in self._pages)
            if any(w < 1 or h < 1 for w, h in self.level_dimensions):  # found by fuzzing (maga bench reliability)
                raise MagaError(f"a pyramid level of zero size {self.level_dimensions}; corrupt TIFF", path)
            self.dimensions = self.level_dimensions[0]
            self.level_downsamples = tuple(self.dimensions[0] / w for w, _ in self.level_dimensions)
            ome_mpp, ome_obj = resolution_from_ome(self._tf.ome_metadata if self._tf.is_ome else None)
            tags = self._pages[0].tags

            def tag(name: str):
                return tags[name].value if name in tags else None

            tiff_mpp = mpp_from_resolution(tag("XResolution"), tag("YResolution"), tag("ResolutionUnit"))
            self.resolution = resolve(path, mpp, [(ome_mpp, "ome PhysicalSizeX/Y"),
                                                  (tiff_mpp, "tiff resolution")], ome_obj, "ome objective")
        except Exception:
            self._tf.close()
            raise

    def _segment_grid(self, page) -> tuple[int, int, int]:
        """(segment width, segment height, segments per row) for tiles or strips."""
        if page.is_tiled:
            return page.tilewidth, page.tilelength, -(-page.imagewidth // page.tilewidth)
        return page.imagewidth, page.rowsperstrip or page.imagelength, 1

    def _read(self, location, level, size):
        page = self._pages[level]
        ds = self.level_downsamples[level]
        x0, y0 = int(round(location[0] / ds)), int(round(location[1] / ds))
        w, h = size
        out = np.full((h, w, 3), 255, np.uint8)
        W, H = page.imagewidth, page.imagelength
        ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, W), min(y0 + h, H)
        if ix0 >= ix1 or iy0 >= iy1:
            return out
        if page.planarconfig != 1 and page.samplesperpixel > 1:  # separate planes: small files only
            with self._lock:
                full = page.asarray()
            return paste(out, full, 0, 0, x0, y0)
        sw, sh, per_row = self._segment_grid(page)
        indices = [r * per_row + c for r in range(iy0 // sh, (iy1 - 1) // sh + 1)
                   for c in range(ix0 // sw, (ix1 - 1) // sw + 1)]
        decode = page.decode
        args = {"_fullsize": page.is_tiled}
        if page.compression in {6, 7, 34892, 33007}:  # JPEG variants, as tifffile's own reader
            args.update(jpegtables=page.jpegtables, jpegheader=page.jpegheader)
        with self._lock:
            fh = self._tf.filehandle
            chunks = list(fh.read_segments([page.dataoffsets[i] for i in indices],
                                           [page.databytecounts[i] for i in indices],
                                           indices=indices, sort=False))
        for data, index in chunks:
            seg, (_, _, sy, sx, _), _ = decode(data, index, **args)
            if seg is None:
                continue
            paste(out, seg[0, :H - sy, :W - sx], sx, sy, x0, y0)  # edge tiles are padded
        return out

    def close(self) -> None:
        self._tf.close()
