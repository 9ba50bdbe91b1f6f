"""Settings chosen after seeing test results (results/disclosures.yaml), rendered for the end of
chapters 03 and 04 and for the README (`maga.book.readme_blocks`), so that the three say the same thing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from maga_core.errors import MagaError

REPO_ROOT = Path(__file__).resolve().parents[2]
DISCLOSURES = REPO_ROOT / "results" / "disclosures.yaml"
FIELDS = {"chapter", "setting", "set_in", "seen", "status"}


def load(path: Path = DISCLOSURES) -> list[dict[str, Any]]:
    entries = yaml.safe_load(Path(path).read_text()) or []
    for i, e in enumerate(entries):
        missing = FIELDS - set(e)
        if missing:
            raise MagaError(f"entry {i + 1} lacks {', '.join(sorted(missing))}", path)
    return entries


def markdown(chapter: str | None = None, path: Path = DISCLOSURES) -> str:
    """One bullet per setting (of `chapter`, or all): what, the commit, what test result was seen, now."""
    lines = []
    for e in load(path):
        if chapter is not None and e["chapter"] != chapter:
            continue
        where = f"set in `{e['set_in']}`" + (f", test result recorded in `{e['seen_in']}`" if e.get("seen_in") else "")
        ch = "" if chapter is not None else f"(chapter {int(e['chapter'])}) "
        lines.append(f"- {ch}**{e['setting']}**: {where}; seen: {e['seen']}. Now: {e['status']}.")
    if not lines:
        raise MagaError(f"no disclosures for chapter {chapter}", path)
    return "\n".join(lines)
