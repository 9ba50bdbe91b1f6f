"""Damaged inputs made from good ones: JPEG tiles of a pyramidal TIFF with flipped bytes, and files cut
short. Flips in a tile's header (its first bytes: SOI and table references) break the codec; flips
inside the entropy-coded data decode to wrong pixels without any error from OpenSlide/libtiff,
imagecodecs or PIL (JPEG carries no checksum), so `maga bench reliability` counts those separately."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def level0_tiles(path: Path) -> list[tuple[int, int, int, int]]:
    """(x, y, offset, byte count) of every compressed tile of level 0."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        per_row = -(-page.imagewidth // page.tilewidth)
        return [((k % per_row) * page.tilewidth, (k // per_row) * page.tilelength, int(o), int(n))
                for k, (o, n) in enumerate(zip(page.dataoffsets, page.databytecounts))]


def damage_tiles(src: Path, dst: Path, n_tiles: int, seed: int, where: str = "header",
                 n_bytes: int = 12) -> list[tuple[int, int]]:
    """Copy `src` to `dst` with `n_bytes` bytes flipped (XOR 0xFF) in each of `n_tiles` level-0 tiles
    among the n_tiles + 1 nearest the slide's centre (where tissue patches sit); `where` "header" (the tile's first bytes) or "data" (inside its
    entropy-coded data). Returns the damaged tiles' level-0 (x, y)."""
    tiles = level0_tiles(src)
    rng = np.random.default_rng(seed)
    middle = sorted(tiles, key=lambda t: (t[0] - tiles[-1][0] / 2) ** 2 + (t[1] - tiles[-1][1] / 2) ** 2)
    picks = [middle[int(i)] for i in sorted(rng.choice(min(len(middle), n_tiles + 1), n_tiles, replace=False))]
    data = bytearray(Path(src).read_bytes())
    for _, _, off, size in picks:
        at = range(off, off + n_bytes) if where == "header" else rng.integers(off + size // 4, off + size - 2, n_bytes)
        for j in at:
            data[int(j)] ^= 0xFF
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(bytes(data))
    return [(x, y) for x, y, _, _ in picks]


def truncated_copy(src: Path, dst: Path, fraction: float) -> Path:
    """The first `fraction` of `src`'s bytes (a copy interrupted, a disk that filled up)."""
    data = Path(src).read_bytes()
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return Path(dst)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst
