"""Typed run configurations saved beside every result (JSON), and atomic file writing."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, TypeVar

from maga_core.errors import MagaError, output_error

T = TypeVar("T")


def to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    return obj


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto `path` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; the result should look like any new file
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_json(obj: Any, path: str | Path) -> Path:
    """Write `obj` (dataclasses allowed) as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")
    return Path(path)


def torch_save(obj: Any, path: str | Path) -> Path:
    """torch.save, atomically, through a Python file object: a full or read-only folder then surfaces as a
    one-line OutputError (torch's own file writer reports only 'unexpected pos')."""
    import torch  # lazy: most callers never save a checkpoint, and torch is slow to import

    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(obj, fh)
    except Exception as exc:
        if (stop := output_error(exc, Path(path).parent)) is not None:
            raise stop from None
        raise
    return Path(path)


def save_config(cfg: Any, out_dir: str | Path, name: str = "config.json") -> Path:
    """Save a run's dataclass config beside its outputs, tagged with its class name."""
    payload = {"kind": type(cfg).__name__, **to_jsonable(cfg)}
    return write_json(payload, Path(out_dir) / name)


def load_config(cls: type[T], path: str | Path) -> T:
    """A saved config back as `cls`; a file that is not one (unreadable, not JSON, wrong fields) is a
    one-line MagaError."""
    try:
        data = json.loads(Path(path).read_bytes())
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
        data.pop("kind", None)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
    except (OSError, ValueError, TypeError) as exc:
        raise MagaError(f"not a saved {cls.__name__} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                        path) from None


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (data manifests, weight and student checkpoints)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
