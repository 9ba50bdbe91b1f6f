"""Robustness index of de Jong et al. (2025), "Current pathology foundation models are unrobust to
medical center differences".

For every embedding, look at its k nearest neighbours (itself excluded) and count two kinds:
SO, same biological class from another source (medical centre), and OS, another class from the same
source. The index is total SO over total OS. Above 1 the neighbourhoods are organised by biology;
below 1 by the source (stain, scanner, lab). Same-class-same-source and other-class-other-source
neighbours say nothing about the confound and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.neighbors import NearestNeighbors

from maga_core.errors import MagaError


@dataclass(frozen=True)
class RobustnessIndex:
    index: float        # SO / OS (inf when OS is 0 and SO is not; nan when both are 0)
    so: int             # same class, other source
    os: int             # other class, same source
    k: int
    n: int


def _neighbours(emb: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Indices [N, k] of each row's k nearest other rows."""
    nn = NearestNeighbors(n_neighbors=k + 1, metric=metric, algorithm="brute").fit(emb)
    dist, idx = nn.kneighbors(emb)
    # Drop the point itself wherever it appears (ties can move it off column 0).
    rows = np.arange(len(emb))[:, None]
    keep = idx != rows
    out = np.empty((len(emb), k), dtype=np.int64)
    for i in range(len(emb)):
        out[i] = idx[i][keep[i]][:k]
    return out


def _check(emb: np.ndarray, bio: np.ndarray, source: np.ndarray, k: int) -> None:
    if emb.ndim != 2 or len(emb) != len(bio) or len(emb) != len(source):
        raise MagaError(f"embeddings {emb.shape}, {len(bio)} classes and {len(source)} sources do not match")
    if not 1 <= k < len(emb):
        raise MagaError(f"k={k} must be between 1 and the number of embeddings - 1 ({len(emb) - 1})")
    if len(np.unique(source)) < 2 or len(np.unique(bio)) < 2:
        raise MagaError("the robustness index needs at least two classes and two sources")


def robustness_curve(emb, bio, source, ks, metric: str = "cosine") -> list[RobustnessIndex]:
    """The index at each k in `ks` (one neighbour search at the largest k)."""
    emb = np.asarray(emb, dtype=np.float64)
    bio, source = np.asarray(bio), np.asarray(source)
    ks = [int(k) for k in ks]
    _check(emb, bio, source, max(ks))
    nbr = _neighbours(emb, max(ks), metric)
    same_bio = bio[nbr] == bio[:, None]
    same_src = source[nbr] == source[:, None]
    so_cum = np.cumsum((same_bio & ~same_src).sum(axis=0))
    os_cum = np.cumsum((~same_bio & same_src).sum(axis=0))
    out = []
    for k in ks:
        so, os_ = int(so_cum[k - 1]), int(os_cum[k - 1])
        index = so / os_ if os_ else (float("inf") if so else float("nan"))
        out.append(RobustnessIndex(index=index, so=so, os=os_, k=k, n=len(emb)))
    return out


def robustness_index(emb, bio, source, k: int = 10, metric: str = "cosine") -> RobustnessIndex:
    """SO / OS over each embedding's k nearest neighbours (see the module docstring)."""
    return robustness_curve(emb, bio, source, [k], metric=metric)[0]
