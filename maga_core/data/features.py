"""HDF5 feature store: one file per slide (or per tile folder), the layout CLAM and TRIDENT write.

Datasets: `features` float32 [N, D]; `coords` int64 [N, 2] level-0 (x, y) for slides; `paths` utf-8
strings for tile folders. Attributes say how the features were made (magnification, patch_px, encoder,
student_sha256, slide, mpp) so a file is self-describing. Files are written atomically: a reader never
sees a half-written store, which is what lets a batch resume by checking for existence.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import h5py
import numpy as np

from maga_core.config import atomic_path
from maga_core.errors import MagaError

# What an extraction input holds; each kind has its own file layout below (slides: features + coords;
# a tile folder: features + paths). Kept here, not in extract.py, so the CLI can offer it without torch.
INPUT_KINDS = ("auto", "slides", "tiles")

STANDARD_ATTRS = ("magnification", "patch_px", "encoder", "student_sha256", "slide", "mpp")


@dataclass
class FeatureFile:
    """What `read_features` returns: arrays in memory plus the file's attributes."""

    features: np.ndarray
    coords: np.ndarray | None = None
    paths: list[str] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.features.shape[0])


def _attr_value(value: Any) -> Any:
    """h5py stores numbers and strings natively; None becomes "" (e.g. no student checkpoint)."""
    if value is None:
        return ""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (bool, int, float, str, np.generic)):
        return value
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return str(value)


def _check_index(path: Path, n: int, coords: np.ndarray | None, paths: Sequence[str] | None) -> np.ndarray | None:
    if coords is not None:
        coords = np.asarray(coords, dtype=np.int64)
        if n == 0:
            coords = coords.reshape(0, 2)
        if coords.shape != (n, 2):
            raise MagaError(f"coords must be [{n}, 2], got shape {coords.shape}", path)
    if paths is not None and len(paths) != n:
        raise MagaError(f"{len(paths)} paths for {n} feature rows", path)
    return coords


@contextlib.contextmanager
def feature_writer(path: str | Path, n: int, dim: int, coords: np.ndarray | None = None,
                   paths: Sequence[str] | None = None, **attrs: Any) -> Iterator[Callable[[np.ndarray, np.ndarray], None]]:
    """Stream rows into a new feature file: yields `put(rows_index, rows)`; the file appears (atomically)
    only when the block ends without error. Memory stays at one batch however large the slide."""
    path = Path(path)
    coords = _check_index(path, n, coords, paths)
    attrs.setdefault("student_sha256", "")
    # HDF5 writes go through a Python file object: a full disk then raises OSError here, where h5py's own
    # file driver crashes the interpreter (segfault) when a write fails (measured: maga bench reliability).
    with atomic_path(path) as tmp:
        with open(tmp, "w+b") as fh, h5py.File(fh, "w") as h5:  # HDF5 reads back what it wrote (vlen strings)
            ds = h5.create_dataset("features", shape=(n, dim), dtype=np.float32,
                                   chunks=(max(1, min(n, 256)), dim) if n and dim else None)
            if coords is not None:
                h5.create_dataset("coords", data=coords)
            if paths is not None:
                h5.create_dataset("paths", data=[str(p) for p in paths], dtype=h5py.string_dtype("utf-8"))
            for key, value in attrs.items():
                h5.attrs[key] = _attr_value(value)
            filled = np.zeros(n, dtype=bool)

            def put(index: np.ndarray, rows: np.ndarray) -> None:
                index = np.asarray(index, dtype=np.int64)
                if not len(index):
                    return
                if (index == np.arange(index[0], index[0] + len(index))).all():
                    ds[index[0]: index[0] + len(index)] = rows  # contiguous: a plain slice write
                else:
                    ds[index] = rows  # increasing indices (h5py requires them)
                filled[index] = True

            yield put
            if not filled.all():
                raise MagaError(f"{int((~filled).sum())} of {n} feature rows were never written", path)


def write_features(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray | None = None,
    paths: Sequence[str] | None = None,
    **attrs: Any,
) -> Path:
    """Write a feature file atomically. Give `coords` (slides) or `paths` (tile folders), or both."""
    path = Path(path)
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2:
        raise MagaError(f"features must be [N, D], got shape {feats.shape}", path)
    with feature_writer(path, feats.shape[0], feats.shape[1], coords, paths, **attrs) as put:
        put(np.arange(feats.shape[0]), feats)
    return path


def read_features(path: str | Path) -> FeatureFile:
    """Read a feature file fully into memory (bags are small: N x D floats)."""
    path = Path(path)
    if not path.is_file():
        raise MagaError("feature file not found", path)
    try:
        with h5py.File(path, "r") as h5:
            if "features" not in h5:
                raise MagaError("no 'features' dataset (not a maga feature file)", path)
            features = h5["features"][()].astype(np.float32, copy=False)
            coords = h5["coords"][()].astype(np.int64, copy=False) if "coords" in h5 else None
            paths = [p.decode("utf-8") if isinstance(p, bytes) else str(p) for p in h5["paths"][()]] if "paths" in h5 else None
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in h5.attrs.items()}
    except OSError as exc:
        raise MagaError(f"cannot read HDF5 ({exc})", path) from exc
    return FeatureFile(features=features, coords=coords, paths=paths, attrs=attrs)
