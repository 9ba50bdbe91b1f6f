"""Data manifests: every real file the project uses, with its sha256, size, license and public address.

Files are reached only through `fetch`. The local mirror (`locations.data_dir()`: `MAGA_DATA_DIR`, the
user config file, or the `shared/data` folder beside the checkout) is used in place after its sha256 is
checked.
A file that is neither there nor in the cache is an error naming the variable to set, unless
`MAGA_DOWNLOAD=1`: then pooch downloads the public file into the cache, checks the hash, and only then
moves it into place, so a mismatch leaves nothing behind. The manifests ship inside the package
(`data_manifests/`), so an installed wheel reads them too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from maga_core import locations
from maga_core.config import file_sha256 as sha256_of
from maga_core.errors import MagaError


CHECKOUT_MANIFESTS = Path(__file__).resolve().parents[2] / "data_manifests"


def manifest_dir() -> Traversable:
    """The manifests: `data_manifests/` at the top of a checkout (the one source), else the copy the
    wheel ships as `maga_core/data_manifests`; `MAGA_MANIFEST_DIR` replaces them (tests use it)."""
    override = os.environ.get("MAGA_MANIFEST_DIR")
    if override:
        return Path(override)
    return CHECKOUT_MANIFESTS if CHECKOUT_MANIFESTS.is_dir() else files("maga_core") / "data_manifests"


def data_dir() -> Path | None:
    """The local mirror of the public data files, if one is found (see `maga_core.locations`)."""
    return locations.data_dir().path


def downloads_allowed() -> bool:
    """Downloads are opt-in (`MAGA_DOWNLOAD=1`): offline, a missing mirror is one clear error."""
    return os.environ.get("MAGA_DOWNLOAD", "") == "1"


def cache_dir() -> Path:
    import pooch

    return Path(os.environ.get("MAGA_CACHE_DIR") or pooch.os_cache("maga"))


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int
    url: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    name: str
    title: str
    license: str
    origin: str
    kind: str
    mirror: str  # "data" (MAGA_DATA_DIR/<name>/) or "reference" (MAGA_REFERENCE_DIR/<subdir>/)
    files: tuple[FileEntry, ...]
    info: dict[str, Any] = field(default_factory=dict)  # mpp, classes, notes, archive, ...

    def entry(self, relpath: str) -> FileEntry:
        for f in self.files:
            if f.path == relpath:
                return f
        raise MagaError(f"not listed in manifest {self.name!r}", relpath)

    @property
    def mirror_root(self) -> Path | None:
        if self.mirror == "reference":
            ref = locations.reference_dir().path
            return ref / self.info.get("subdir", "") if ref else None
        root = data_dir()
        return root / self.name if root else None


def names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in manifest_dir().iterdir() if p.name.endswith(".yaml"))


@lru_cache(maxsize=None)
def load(name: str) -> Manifest:
    path = manifest_dir() / f"{name}.yaml"
    if not path.is_file():
        raise MagaError(f"no such data manifest (known: {', '.join(names())})", path)
    return parse_manifest(path.read_text(), path)


def parse_manifest(text: str, where: str | Path) -> Manifest:
    """A manifest from its YAML text; anything else (bad YAML, missing keys, wrong types) is one line."""
    try:
        raw = yaml.safe_load(text)
        files = tuple(
            FileEntry(
                path=str(f["path"]), sha256=str(f["sha256"]), size=int(f["size"]), url=f.get("url"),
                meta={k: v for k, v in f.items() if k not in {"path", "sha256", "size", "url"}},
            )
            for f in raw.pop("files")
        )
        core = {k: raw.pop(k) for k in ("name", "title", "license", "origin", "kind")}
        return Manifest(**core, mirror=raw.pop("mirror", "data"), files=files, info=raw)
    except (yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError) as exc:
        cause = str(exc).splitlines()[0] if str(exc) else ""
        raise MagaError(f"not a data manifest ({type(exc).__name__}: {cause})", where) from None


_verified: dict[tuple[str, int, int], str] = {}


def _verify(path: Path, entry: FileEntry) -> Path:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _verified.get(key) or sha256_of(path)
    if digest != entry.sha256:
        raise MagaError(f"sha256 mismatch: expected {entry.sha256[:12]}..., got {digest[:12]}... "
                        "(the file is corrupt or not the published version)", path)
    _verified[key] = digest
    return path


def fetch(dataset: str, relpath: str) -> Path:
    """A verified local path to one file of a dataset: the mirror, else the cache, else (MAGA_DOWNLOAD=1)
    a pooch download."""
    manifest = load(dataset)
    entry = manifest.entry(relpath)
    root = manifest.mirror_root
    if root is not None and (root / relpath).exists():
        return _verify(root / relpath, entry)
    cached = cache_dir() / dataset / relpath
    if cached.exists():
        return _verify(cached, entry)
    kind = locations.REFERENCE if manifest.mirror == "reference" else locations.DATA
    if entry.url is None and not manifest.info.get("archive"):
        where = root or kind.env
        raise MagaError(f"not found and it has no public address; place it under {where}",
                        f"{dataset}/{relpath}")
    if not downloads_allowed():
        found = f"not in the data mirror {root}" if root else "no data mirror found"
        raise MagaError(f"{found}: {locations.how_to_set(kind)} (or set MAGA_DOWNLOAD=1 to download "
                        "the public file)", f"{dataset}/{relpath}")
    return _download(manifest, entry, cached)


def _download(manifest: Manifest, entry: FileEntry, target: Path) -> Path:
    import pooch

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if entry.url:
            pooch.retrieve(entry.url, known_hash=f"sha256:{entry.sha256}", fname=target.name,
                           path=target.parent, progressbar=True)
            return target
        # A member of a published archive (zip): unpack it, then verify the member itself.
        archive = manifest.info["archive"]
        members = pooch.retrieve(archive["url"], known_hash=archive.get("sha256"),
                                 path=cache_dir() / "_archives", processor=pooch.Unzip())
        member = next((Path(m) for m in members if m.replace(os.sep, "/").endswith(entry.path)), None)
        if member is None:
            raise MagaError(f"archive {archive['url']} holds no member {entry.path}", manifest.name)
        _verify(member, entry)
        os.replace(member, target)
        return target
    except MagaError:
        raise
    except Exception as exc:  # network or hash errors from pooch, reported in one line
        raise MagaError(f"download failed ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}); "
                        f"{locations.how_to_set()}", f"{manifest.name}/{entry.path}") from None


def reference_path(relpath: str) -> Path:
    """A file of the upstream reference material (`locations.reference_dir()`)."""
    found = locations.reference_dir()
    if found.path is None:
        raise MagaError(f"no reference folder found: {locations.how_to_set(locations.REFERENCE)}", relpath)
    path = found.path / relpath
    if not path.exists():
        raise MagaError(f"not found under the reference folder ({found.source})", path)
    return path


def verify_all() -> dict[str, list[str]]:
    """Check every manifest against what is reachable; returns {dataset: [problems]} (doctor uses it)."""
    problems: dict[str, list[str]] = {}
    for name in names():
        manifest = load(name)
        for f in manifest.files:
            root = manifest.mirror_root
            local = root / f.path if root is not None else cache_dir() / name / f.path
            try:
                if not local.exists():
                    raise MagaError("missing", local)
                _verify(local, f)
            except MagaError as exc:
                problems.setdefault(name, []).append(str(exc))
    return problems
