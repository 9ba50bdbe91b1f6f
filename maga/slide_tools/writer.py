"""Writing a slide at a chosen magnification as its own pyramidal tiled JPEG TIFF (OpenSlide reads its
MPP back) and reporting bytes and pixels: the storage/transfer side of the paper (a 5x copy holds 1/16
of the 20x pixels)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from maga_core.config import atomic_path
from maga_core.errors import MagaError
from maga_core.slides.magnification import format_mag, mpp_for_mag
from maga_core.slides.patches import read_scaled
from maga_core.slides.reader import SlideReader

_BIGTIFF_BYTES = 3_500_000_000  # classic TIFF offsets stop at 4 GiB; leave headroom


def _as_vips(image: Any):
    import pyvips

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"need uint8 HxWx3, got {image.dtype} {image.shape}")
        a = np.ascontiguousarray(image)
        image = pyvips.Image.new_from_memory(a.data, a.shape[1], a.shape[0], 3, "uchar")
    if image.hasalpha():
        image = image.flatten(background=[255, 255, 255])
    if image.bands == 1:
        image = image.colourspace("srgb")
    return image.cast("uchar").copy(interpretation="srgb")


def write_pyramidal_tiff(image: Any, path: str | Path, mpp: float, tile: int = 256,
                         quality: int = 90, progress: bool = False) -> Path:
    """Write a numpy uint8 HxWx3 array or pyvips.Image as a tiled, pyramidal, JPEG-compressed TIFF
    with its resolution tags set so OpenSlide reports `openslide.mpp-x == mpp`. Atomic; libvips
    streams the pixels, so a lazy pyvips pipeline is never held in memory whole."""
    import openslide

    path = Path(path)
    img = _as_vips(image)
    px_per_mm = 1000.0 / mpp  # libvips takes pixels/mm and converts to the unit it writes
    bar = tqdm(total=100, unit="%", desc=f"writing {path.name}", disable=not progress)
    if progress:
        img.set_progress(True)
        img.signal_connect("eval", lambda _img, p: bar.update(max(0, p.percent - bar.n)))
    with atomic_path(path) as tmp, bar:
        img.tiffsave(str(tmp), tile=True, tile_width=tile, tile_height=tile, pyramid=True,
                     compression="jpeg", Q=quality, resunit="cm", xres=px_per_mm, yres=px_per_mm,
                     bigtiff=img.width * img.height * 3 > _BIGTIFF_BYTES)
        with openslide.OpenSlide(str(tmp)) as check:
            got = float(check.properties.get("openslide.mpp-x", "nan"))
        if not math.isclose(got, mpp, rel_tol=1e-4):
            raise MagaError(f"written TIFF reads back MPP {got}, expected {mpp}", path)
    return path


def write_at_magnification(reader: SlideReader, mag: float, out_path: str | Path, tile: int = 256,
                           quality: int = 90, chunk: int = 2048, progress: bool = False) -> dict[str, Any]:
    """Resample the whole slide to `mag` (MPP from MAG_TO_MPP) and write it as a pyramidal TIFF.

    Pixels go through a disk-backed scratch array (memory stays bounded on gigapixel slides);
    returns {path, bytes, pixels, width, height, mpp, magnification}."""
    import pyvips

    out_path = Path(out_path)
    mpp = mpp_for_mag(mag)
    factor = mpp / reader.mpp  # level-0 pixels per output pixel
    w0, h0 = reader.dimensions
    width, height = int(w0 // factor), int(h0 // factor)
    if width < 1 or height < 1:
        raise MagaError(f"slide is {w0}x{h0} px, smaller than one pixel at {format_mag(mag)}x",
                        reader.path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".maga-raw-", dir=out_path.parent) as scratch:
        raw = np.memmap(Path(scratch) / "pixels.raw", dtype=np.uint8, mode="w+", shape=(height, width, 3))
        cells = [(x, y) for y in range(0, height, chunk) for x in range(0, width, chunk)]
        for x, y in tqdm(cells, desc=f"{reader.path.name} @{format_mag(mag)}x", unit="chunk",
                         disable=not progress):
            w, h = min(chunk, width - x), min(chunk, height - y)
            raw[y:y + h, x:x + w] = read_scaled(reader, x * factor, y * factor, w * factor, h * factor, w, h)
        raw.flush()
        image = pyvips.Image.new_from_memory(raw, width, height, 3, "uchar")
        write_pyramidal_tiff(image, out_path, mpp, tile=tile, quality=quality)
        del image, raw
    return {"path": str(out_path), "bytes": out_path.stat().st_size, "pixels": width * height,
            "width": width, "height": height, "mpp": mpp, "magnification": mag}


def write_magnifications(reader: SlideReader, mags: list[float], out_dir: str | Path,
                         **kw: Any) -> list[dict[str, Any]]:
    """One file per magnification, `<stem>_<mag>x.tif`, with bytes/pixels and ratios to the first."""
    rows = []
    for mag in mags:
        out = Path(out_dir) / f"{reader.path.stem}_{format_mag(mag)}x.tif"
        rows.append(write_at_magnification(reader, mag, out, **kw))
    for row in rows:
        row["bytes_ratio"] = row["bytes"] / rows[0]["bytes"]
        row["pixels_ratio"] = row["pixels"] / rows[0]["pixels"]
    return rows
