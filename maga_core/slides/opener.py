"""`open_slide`: picks the backend for a file (after checking a TIFF is whole) and resolves its MPP."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

from maga_core.errors import MagaError
from maga_core.slides.image_reader import PlainImageReader
from maga_core.slides.openslide_reader import OpenSlideReader, openslide_format
from maga_core.slides.reader import IMAGE_SUFFIXES, OME_SUFFIXES, TIFF_MAGIC, SlideReader
from maga_core.slides.tifffile_reader import TiffFileReader


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
        return TiffFileReader(path, mpp)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return PlainImageReader(path, mpp)
    if is_tiff:
        _check_tiff_complete(path)
    if openslide_format(path):
        return OpenSlideReader(path, mpp)
    if is_tiff:
        return TiffFileReader(path, mpp)
    raise MagaError("not a slide: OpenSlide does not recognise it and it is neither a TIFF nor an "
                    f"image ({', '.join(sorted(IMAGE_SUFFIXES))})", path)
