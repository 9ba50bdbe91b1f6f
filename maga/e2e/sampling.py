"""Which K tiles of a slide one training step sees, and which encoder rank embeds which of them.

The draw depends only on (seed, epoch, slide), never on the process that makes it, so every rank of
the distributed scheme computes the same K indices without exchanging them and a single-process run
with the same seed sees exactly the same tiles. A slide with fewer than K tiles is sampled with
replacement (as the public code of the "Beyond MIL" authors does), so every step carries K tiles.
"""

from __future__ import annotations

import numpy as np

from maga_core.errors import MagaError


def sample_tiles(n_tiles: int, k: int, seed: int, *, epoch: int = 0, slide: int = 0,
                 replace: bool | None = None) -> np.ndarray:
    """K tile indices in [0, n_tiles): without replacement when the slide has at least K tiles,
    with replacement otherwise (or as `replace` forces). Deterministic in (seed, epoch, slide)."""
    if n_tiles < 1:
        raise MagaError(f"slide {slide} has no tiles to sample")
    if k < 1:
        raise MagaError(f"K must be at least 1, got {k}")
    if replace is None:
        replace = n_tiles < k
    if not replace and n_tiles < k:
        raise MagaError(f"slide {slide} has {n_tiles} tiles, fewer than K={k}, and replacement is off")
    rng = np.random.default_rng([int(seed), int(epoch), int(slide)])
    return rng.choice(n_tiles, size=k, replace=replace).astype(np.int64)


def split_counts(k: int, n_parts: int) -> list[int]:
    """Tiles per encoder rank: contiguous chunks as even as possible (the first ranks take one more)."""
    if n_parts < 1:
        raise MagaError(f"need at least one encoder rank, got {n_parts}")
    base, extra = divmod(k, n_parts)
    return [base + (1 if r < extra else 0) for r in range(n_parts)]


def part_slice(k: int, n_parts: int, part: int) -> slice:
    """The slice of the K sampled indices that encoder rank `part` (0-based) embeds. Concatenating the
    parts in rank order gives back the single-process order, which is what makes gradients match."""
    counts = split_counts(k, n_parts)
    if not 0 <= part < n_parts:
        raise MagaError(f"encoder part {part} out of range for {n_parts} parts")
    start = sum(counts[:part])
    return slice(start, start + counts[part])


def epoch_order(n_slides: int, seed: int, epoch: int) -> np.ndarray:
    """The order slides are visited in one epoch (a seeded shuffle, the same on every rank)."""
    return np.random.default_rng([int(seed), int(epoch), -1 & 0xFFFF]).permutation(n_slides)
