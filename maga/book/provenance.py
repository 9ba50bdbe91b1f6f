"""What the book runs on, read from the data manifests: every dataset, its license and origin, and
whether its files are present and match their published sha256 (chapter 00)."""

from __future__ import annotations

import pandas as pd
from tqdm.auto import tqdm

from maga_core.data import manifests
from maga_core.data.tiles import SOURCES, tile_table
from maga_core.errors import MagaError

# How each kind of manifest enters the book: real data used as is, or inputs to something we build.
KIND_ROLE = {
    "slides": "real whole-slide images (Aperio SVS), read through OpenSlide",
    "tiles": "real H&E tiles; the slide-level MIL cohort is BUILT from them (mosaic slides)",
    "cohort": "upstream case lists, labels and folds only: the slides themselves are not here",
}


def datasets_table() -> pd.DataFrame:
    """One row per data manifest: name, title, kind, role, license, origin, files, MB."""
    rows = []
    for name in manifests.names():
        m = manifests.load(name)
        rows.append({"dataset": m.name, "title": m.title, "kind": m.kind, "role": KIND_ROLE.get(m.kind, m.kind),
                     "license": m.license, "origin": m.origin, "files": len(m.files),
                     "MB": round(sum(f.size for f in m.files) / 1e6, 2)})
    return pd.DataFrame(rows)


def verify_files(max_files_per_dataset: int | str = "all") -> pd.DataFrame:
    """Fetch and sha256-check files of every manifest (the first `max_files_per_dataset` of each, or "all").

    One row per dataset: checked, ok, and the first problem (a missing or corrupt file) if any."""
    rows = []
    all_names = manifests.names()
    for name in tqdm(all_names, desc="verifying datasets", unit="dataset"):
        m = manifests.load(name)
        files = m.files if max_files_per_dataset == "all" else m.files[: int(max_files_per_dataset)]
        ok, problem = 0, ""
        for f in files:
            try:
                manifests.fetch(name, f.path)
                ok += 1
            except MagaError as exc:
                problem = problem or str(exc)
        rows.append({"dataset": name, "listed": len(m.files), "checked": len(files), "sha256 ok": ok,
                     "problem": problem})
    return pd.DataFrame(rows)


def tile_counts() -> pd.DataFrame:
    """Real tiles per collection, class and split (the inputs of MAGA training, probes and mosaics)."""
    frames = [tile_table(name) for name in SOURCES]
    counts = pd.concat(frames).groupby(["source", "class", "split"]).size().unstack("split", fill_value=0)
    return counts.assign(total=counts.sum(axis=1))
