"""Records: the figures a chapter or a run reproduced, written under <runs>/results/<chapter>.json
beside the paper's key paths (reference/paper_results.yaml), and the one lookup of the paper's figures.

`figures` uses the key paths of paper_results.yaml (only those a chapter really measured); `notes`
explain how our setting differs, keyed by a dotted prefix (the longest matching prefix wins). The book's
reproduction summary (`maga.book.summary`) only reads them."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import yaml

from maga.provenance import write_record
from maga_core.data.manifests import reference_path
from maga_core.errors import MagaError


def results_path(chapter: str, runs: Path) -> Path:
    return Path(runs) / "results" / f"{chapter}.json"


def save_results(chapter: str, figures: dict[str, Any], notes: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None, *, runs: Path) -> Path:
    """Write one chapter's reproduced figures (paper_results.yaml key paths) under the runs folder
    `runs` (named after its preset), atomically."""
    unknown = [p for p, _ in leaves(figures) if lookup(paper_results(), p) is None]
    if unknown:
        raise MagaError(f"figures not in paper_results.yaml: {', '.join(unknown[:5])} "
                        "(put results without a paper counterpart under extra=)", chapter)
    payload = {"chapter": chapter, "preset": Path(runs).name,
               "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "figures": figures, "notes": notes or {}, "extra": extra or {}}
    return write_record(payload, results_path(chapter, runs))


def load_results(runs: Path) -> dict[str, dict[str, Any]]:
    """Every chapter's results under <runs>/results, by chapter stem (sorted)."""
    folder = Path(runs) / "results"
    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            out[path.stem] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise MagaError(f"not valid JSON ({exc.msg})", path) from None
    return out


def paper_results() -> dict[str, Any]:
    return yaml.safe_load(reference_path("paper_results.yaml").read_text())


def leaves(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted paths to figures: scalars, lists, and {mean, ci} dicts count as one figure."""
    if isinstance(tree, dict) and not is_interval(tree):
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, tree


def lookup(tree: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def is_interval(d: dict) -> bool:
    return "mean" in d and set(d) <= {"mean", "ci", "std", "n"}
